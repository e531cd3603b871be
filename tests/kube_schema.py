"""Validate Kubernetes manifests against the Kubernetes API's own types, as the generated models of
the Kubernetes client (kubernetes_asyncio, generated from the API server's OpenAPI document) hold
them: every field must exist in its type (an unknown field is an error, as ``kubectl apply
--validate=strict`` makes it), every value must have its type (str, int, bool, lists, maps,
nested types), and the models' own checks run (required fields, enums the models know).

Custom resources are checked against the structural schema of their CRD (``check_custom``):
properties, types, enums, required, min/max, array bounds, patterns.
"""

from __future__ import annotations

import re
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client import models

PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}
# apiVersion/kind → model name, for the kinds deploy/kubernetes/ uses
KINDS = {
    ("v1", "Namespace"): "V1Namespace", ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap", ("v1", "Secret"): "V1Secret", ("v1", "Service"): "V1Service",
    ("apps/v1", "DaemonSet"): "V1DaemonSet", ("apps/v1", "Deployment"): "V1Deployment",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "V1CustomResourceDefinition",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
}


class Invalid(ValueError):
    pass


def check(doc: dict[str, Any]) -> None:
    """Raise Invalid with the field path for anything the API's types refuse."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in KINDS:
        raise Invalid(f"{key}: not a kind this validator knows")
    _walk(doc, KINDS[key], doc.get("kind", ""))
    # the models' own checks (required fields, enums) by building the object
    api = client.ApiClient.__new__(client.ApiClient)  # its deserializer only: no HTTP session, no loop
    try:
        api._ApiClient__deserialize(doc, KINDS[key])  # type: ignore[attr-defined]
    except ValueError as exc:
        raise Invalid(f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}: {exc}") from None


def _walk(value: Any, typ: str, path: str) -> None:
    if value is None:
        return
    if typ in PRIMITIVES:
        if not isinstance(value, PRIMITIVES[typ]) or (typ == "int" and isinstance(value, bool)):
            raise Invalid(f"{path}: expected {typ}, got {type(value).__name__} {value!r}")
        return
    if typ == "object":
        return
    if typ.startswith("list["):
        if not isinstance(value, list):
            raise Invalid(f"{path}: expected a list")
        for i, v in enumerate(value):
            _walk(v, typ[5:-1], f"{path}[{i}]")
        return
    if typ.startswith("dict("):
        if not isinstance(value, dict):
            raise Invalid(f"{path}: expected a map")
        inner = typ[5:-1].split(", ", 1)[1]
        for k, v in value.items():
            _walk(v, inner, f"{path}.{k}")
        return
    model = getattr(models, typ)
    if not isinstance(value, dict):
        raise Invalid(f"{path}: expected an object ({typ})")
    by_json = {j: a for a, j in model.attribute_map.items()}
    for k, v in value.items():
        if k not in by_json:
            raise Invalid(f"{path}.{k}: unknown field (not in {typ})")
        _walk(v, model.openapi_types[by_json[k]], f"{path}.{k}")


# ---- custom resources against a CRD's structural schema -----------------------------------------

def check_custom(obj: Any, schema: dict[str, Any], path: str = "") -> None:
    if schema.get("x-kubernetes-preserve-unknown-fields") and "type" not in schema:
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(obj, int | str) or isinstance(obj, bool):
            raise Invalid(f"{path}: expected an integer or a string")
        return
    t = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if t and (not isinstance(obj, types[t]) or (t in ("integer", "number") and isinstance(obj, bool))):
        raise Invalid(f"{path}: expected {t}, got {type(obj).__name__}")
    if "enum" in schema and obj not in schema["enum"]:
        raise Invalid(f"{path}: unsupported value {obj!r}: supported values: {', '.join(map(str, schema['enum']))}")
    if t == "string":
        if "minLength" in schema and len(obj) < schema["minLength"]:
            raise Invalid(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], obj):
            raise Invalid(f"{path}: does not match {schema['pattern']!r}")
    if t == "integer":
        if "minimum" in schema and obj < schema["minimum"]:
            raise Invalid(f"{path}: should be greater than or equal to {schema['minimum']}")
        if "maximum" in schema and obj > schema["maximum"]:
            raise Invalid(f"{path}: should be less than or equal to {schema['maximum']}")
    if t == "array":
        if "maxItems" in schema and len(obj) > schema["maxItems"]:
            raise Invalid(f"{path}: must have at most {schema['maxItems']} items")
        if "minItems" in schema and len(obj) < schema["minItems"]:
            raise Invalid(f"{path}: must have at least {schema['minItems']} items")
        for i, v in enumerate(obj):
            check_custom(v, schema["items"], f"{path}[{i}]")
    if t == "object":
        for r in schema.get("required", []):
            if r not in obj:
                raise Invalid(f"{path}.{r}: Required value".lstrip("."))
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in obj.items():
            sub = f"{path}.{k}" if path else k
            if props is not None and k in props:
                check_custom(v, props[k], sub)
            elif isinstance(extra, dict):
                check_custom(v, extra, sub)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                raise Invalid(f"{sub}: unknown field")
