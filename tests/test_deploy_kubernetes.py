"""deploy/kubernetes/: every manifest validated against the Kubernetes API's own types (the
Kubernetes client's generated models, unknown fields refused: tests/kube_schema.py); the CRDs are
the generated ones, structural, and accept what the parser accepts (the policy library, the seed)
and refuse what it refuses where a schema can say it; RBAC is the least the services need; the
collector DaemonSet has what the kernel side needs. The ServiceMonitor (a Prometheus Operator
kind, not in the client's models) is checked against a stand-in schema of the fields it uses.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_schema import Invalid, check, check_custom

from collector.policy import crd, parser
from collector.policy.model import PolicyError
from tetrapipe import config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"


@functools.cache
def _docs(name: str) -> str:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return json.dumps([d for d in yaml.load_all((DEPLOY / name).read_text(), Loader=loader) if d])


def docs(name: str) -> list[dict[str, Any]]:
    return json.loads(_docs(name))  # a fresh copy for every caller


def all_docs() -> list[dict[str, Any]]:
    out = []
    for f in yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]:
        out += docs(f)
    return out


def by_kind(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in all_docs() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_every_file_is_in_the_kustomization() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}


def test_every_manifest_validates_against_the_api_types() -> None:
    kinds = []
    for d in all_docs():
        if d["kind"] == "ServiceMonitor":
            continue
        check(d)
        kinds.append(d["kind"])
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Secret",
            "DaemonSet", "Deployment", "Service", "CustomResourceDefinition"} <= set(kinds)


def test_the_validator_refuses_what_the_api_refuses() -> None:
    ds = by_kind("DaemonSet", "tetrapipe-collector")
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["containers"][0]["privilegd"] = True
    with pytest.raises(Invalid, match=r"containers\[0\]\.privilegd: unknown field"):
        check(bad)
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(Invalid, match="hostPID: expected bool"):
        check(bad)
    bad = copy.deepcopy(ds)
    del bad["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(Invalid, match="name"):
        check(bad)
    bad = copy.deepcopy(ds)
    del bad["spec"]["selector"]
    with pytest.raises(Invalid, match="selector"):
        check(bad)


def test_servicemonitor_against_a_stand_in_schema() -> None:
    """Stand-in: the Prometheus Operator's CRD is not here; these are the fields we use, typed as
    monitoring.coreos.com/v1 types them."""
    s, a = {"type": "string"}, {"type": "array", "items": {"type": "string"}}
    schema = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"type": "string", "enum": ["monitoring.coreos.com/v1"]}, "kind": {"type": "string",
                                                                                        "enum": ["ServiceMonitor"]},
        "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "spec": {"type": "object", "required": ["selector", "endpoints"], "properties": {
            "selector": {"type": "object", "properties": {"matchLabels": {"type": "object",
                                                                          "additionalProperties": s}}},
            "namespaceSelector": {"type": "object", "properties": {"matchNames": a, "any": {"type": "boolean"}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {"type": "object", "properties": {
                "port": s, "path": s, "interval": {"type": "string", "pattern": r"^\d+[smh]$"}}}}}}}}
    sm = by_kind("ServiceMonitor", "tetrapipe")
    check_custom(sm, schema)
    ports = {p["name"] for d in all_docs() if d["kind"] == "Service" for p in d["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["port"] in ports
    services = [d for d in all_docs() if d["kind"] == "Service"]
    assert len(services) == 5 and all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tetrapipe"
                                      for d in services)


def test_crds_are_generated_and_structural() -> None:
    assert (DEPLOY / "crds.yaml").read_text() == crd.render(), \
        "deploy/kubernetes/crds.yaml is stale: python -m collector.policy.crd > deploy/kubernetes/crds.yaml"
    for c in docs("crds.yaml"):
        v = c["spec"]["versions"][0]
        assert v["subresources"] == {"status": {}}
        assert [col["name"] for col in v["additionalPrinterColumns"]] == ["State", "Loaded", "Refused", "Error", "Age"]
        _structural(v["schema"]["openAPIV3Schema"], "")
    names = {(c["spec"]["names"]["kind"], c["spec"]["names"]["plural"], c["spec"]["scope"]) for c in docs("crds.yaml")}
    assert names == {("TracingPolicy", "tracingpolicies", "Cluster"),
                     ("TracingPolicyNamespaced", "tracingpoliciesnamespaced", "Namespaced")}


def _structural(s: dict[str, Any], path: str) -> None:
    if not (s.get("x-kubernetes-preserve-unknown-fields") or s.get("x-kubernetes-int-or-string")):
        assert s.get("type"), f"{path}: no type (not a structural schema)"
    for k, sub in (s.get("properties") or {}).items():
        _structural(sub, f"{path}.{k}")
    if isinstance(s.get("additionalProperties"), dict):
        _structural(s["additionalProperties"], f"{path}.*")
    if "items" in s:
        _structural(s["items"], f"{path}[]")


def schema_of(kind: str) -> dict[str, Any]:
    c = next(c for c in docs("crds.yaml") if c["spec"]["names"]["kind"] == kind)
    return c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


SEED = ROOT / "tests/data/seed/deny-tmp-forbidden-write.yaml"
POLICIES = sorted((ROOT / "examples" / "policies").glob("*.yaml")) + [SEED]


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_the_crd_accepts_the_policy_library(path: Path) -> None:
    for d in yaml.safe_load_all(path.read_text()):
        check_custom(d, schema_of(d["kind"]))
    parser.parse_text(path.read_text(), str(path))


def _seed() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "tests/data/seed/deny-tmp-forbidden-write.yaml").read_text())


@pytest.mark.parametrize("change, schema_says, parser_says", [
    (lambda d: d["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0].update(operator="Prefx"),
     "unsupported value 'Prefx'", 'unknown operator "Prefx"'),
    (lambda d: d["spec"]["kprobes"][0].update(selectors=d["spec"]["kprobes"][0]["selectors"] * 6),
     "at most 5 items", "at most 5 per hook"),
    (lambda d: d["spec"]["kprobes"][0].update(cal="x"), "cal: unknown field", "unknown field 'cal'"),
    (lambda d: d["spec"]["kprobes"][0]["args"][0].update(type="int128"), "unsupported value 'int128'",
     'unknown argument type "int128"'),
    (lambda d: d["spec"]["kprobes"][0]["args"][0].update(index=6), "less than or equal to 5", "out of range"),
    (lambda d: d["spec"]["kprobes"][0]["selectors"][0]["matchActions"][0].update(action="Sigkil"),
     "unsupported value 'Sigkil'", 'unknown action "Sigkil"'),
    (lambda d: d["spec"]["kprobes"][0].pop("call"), "call: Required value", "call: required"),
    (lambda d: d["spec"].update(podSelector={"matchExpressions": [{"key": "a", "operator": "Is"}]}),
     "unsupported value 'Is'", 'unknown operator "Is"'),
])
def test_the_crd_refuses_what_the_parser_refuses(change: Any, schema_says: str, parser_says: str) -> None:
    d = _seed()
    change(d)
    with pytest.raises(Invalid, match=schema_says):
        check_custom(d, schema_of("TracingPolicy"))
    with pytest.raises(PolicyError, match=parser_says):
        parser.parse_text(yaml.safe_dump(d), "p.yaml")


def test_unserved_tetragon_fields_are_kept_for_the_parser_to_refuse() -> None:
    """Pruned, a matchData filter would leave a broader selector: stored whole, refused with a reason
    (here: the hook declares no data entry)."""
    d = _seed()
    d["spec"]["kprobes"][0]["selectors"][0]["matchData"] = [{"index": 0, "operator": "Equal", "values": ["x"]}]
    check_custom(d, schema_of("TracingPolicy"))
    with pytest.raises(PolicyError, match=r"matchData\[0\]\.index: no data entry with index 0"):
        parser.parse_text(yaml.safe_dump(d), "p.yaml")


def test_rbac_is_least_privilege() -> None:
    rules = by_kind("ClusterRole", "tetrapipe-collector")["rules"]
    got = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    read = ("get", "list", "watch")
    plurals = ("tracingpolicies", "tracingpoliciesnamespaced")
    assert got == {("", r, v) for r in ("pods", "nodes") for v in read} \
        | {("cilium.io", p, v) for p in plurals for v in read} \
        | {("cilium.io", f"{p}/status", "update") for p in plurals} | {("", "events", "create")}
    rules = by_kind("ClusterRole", "tetrapipe-enricher")["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]
    assert [d for d in all_docs() if d["kind"] in ("Role", "RoleBinding")] == []
    assert by_kind("ServiceAccount", "tetrapipe-exporter")["automountServiceAccountToken"] is False
    for d in all_docs():
        if d["kind"] == "ClusterRoleBinding":
            sa = d["subjects"][0]["name"]
            assert d["roleRef"]["name"] == sa and sa in ("tetrapipe-collector", "tetrapipe-enricher")


def test_collector_daemonset_has_what_the_kernel_side_needs() -> None:
    pod = by_kind("DaemonSet", "tetrapipe-collector")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["hostPID"] is True and c["securityContext"]["privileged"] is True
    assert pod["serviceAccountName"] == "tetrapipe-collector"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for p in ("/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/bpf", "/sys/fs/cgroup"):
        assert p in mounts and p in host.values()
    assert host["host-proc"] == "/proc"
    env = {e["name"]: e for e in c["env"]}
    assert env["TETRAPIPE_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
    assert "--enable-tracing-policy-crd" in c["args"]
    for name in ("tetrapipe-enricher", "tetrapipe-export-json", "tetrapipe-export-prometheus"):
        dep = by_kind("Deployment", name)["spec"]["template"]["spec"]
        sc = dep["containers"][0]["securityContext"]
        assert dep["securityContext"]["runAsNonRoot"] is True and sc["capabilities"] == {"drop": ["ALL"]}
        assert not sc.get("privileged") and sc["allowPrivilegeEscalation"] is False
    secret_env = [e for d in all_docs() if d["kind"] in ("DaemonSet", "Deployment")
                  for ctr in d["spec"]["template"]["spec"]["containers"] for e in ctr.get("envFrom", [])]
    assert all(e == {"secretRef": {"name": "tetrapipe-kafka", "optional": True}} for e in secret_env)
    assert "TETRAPIPE_KAFKA_SASL_PASSWORD" in by_kind("Secret", "tetrapipe-kafka")["stringData"]


def test_the_configmap_is_a_valid_tetrapipe_config(tmp_path: Path) -> None:
    cm = by_kind("ConfigMap", "tetrapipe-config")
    f = tmp_path / "tetrapipe.yaml"
    f.write_text(cm["data"]["tetrapipe.yaml"])
    cfg = config.load(environ={"TETRAPIPE_CONFIG": str(f)})
    assert cfg.enable_k8s_api and cfg.topic_partitions >= 2
    assert by_kind("Deployment", "tetrapipe-enricher")["spec"]["replicas"] <= cfg.topic_partitions
