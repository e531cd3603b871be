"""The CustomResourceDefinitions of TracingPolicy and TracingPolicyNamespaced (``cilium.io/v1alpha1``,
Tetragon's group, kinds and spec), generated from the parser's own tables so the API server
refuses what the parser refuses where a structural schema can say it: field names (with kubectl's
strict field validation an unknown field is an error, not silently pruned), value types, enums
(argument types, operators, actions, namespaces, capability types), required fields, at most 5
selectors per hook and 16 tags, argument indexes 0..5, signals 1..64. Fields Tetragon has and
tetrapipe does not serve (usdts, matchData, ...) are kept in the schema, so a manifest that uses
them is stored whole and refused by the collector with the reason in its status, never pruned to a
broader policy. The status (written by each node's collector) and the ``kubectl get`` columns are
tetrapipe's.

    python -m collector.policy.crd > deploy/kubernetes/crds.yaml
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from collector.policy import action_parser, parser
from collector.policy.model import (
    ACTIONS,
    ARG_OPERATORS,
    ARG_TYPES,
    BINARY_OPERATORS,
    CAP_TYPES,
    LABEL_OPERATORS,
    MAX_SELECTORS,
    NAMESPACES,
    PID_OPERATORS,
    SET_OPERATORS,
)

S: dict[str, Any] = {"type": "string"}
B: dict[str, Any] = {"type": "boolean"}
I: dict[str, Any] = {"type": "integer"}  # noqa: E741 - one letter like S and B
LOOSE: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}  # kept whole, refused by the parser


def obj(props: dict[str, Any], required: list[str] | None = None, keys: set[str] | None = None) -> dict[str, Any]:
    """An object schema; ``keys``: the parser's allowed keys, every one must be described."""
    if keys is not None:
        missing = keys - props.keys()
        extra = props.keys() - keys
        assert not missing and not extra, f"schema and parser disagree: missing {missing}, extra {extra}"
    out: dict[str, Any] = {"type": "object", "properties": dict(sorted(props.items()))}
    if required:
        out["required"] = required
    return out


def arr(items: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **kw}


def enum(values: Any) -> dict[str, Any]:
    return {"type": "string", "enum": sorted(values)}


def label_selector(key: dict[str, Any] | None = None) -> dict[str, Any]:
    return obj({
        "matchLabels": {"type": "object", "additionalProperties": S},
        "matchExpressions": arr(obj({"key": key or S, "operator": enum(LABEL_OPERATORS), "values": arr(S)},
                                    ["key", "operator"])),
    })


def arg(index_required: bool = True) -> dict[str, Any]:
    props = {"index": {"type": "integer", "minimum": 0, "maximum": 5}, "type": enum(ARG_TYPES),
             "sizeArgIndex": {"type": "integer", "minimum": 0, "maximum": 6}, "returnCopy": B, "maxData": B,
             "label": S, "resolve": S, "source": S, "btfType": S, "extractParam": S, "overwriteType": S, "size": I}
    return obj(props, ["index", "type"] if index_required else ["type"], parser.ARG_KEYS)


def selector() -> dict[str, Any]:
    values = arr(S, minItems=1)
    arg_filter = obj({"index": {"type": "integer", "minimum": 0}, "operator": enum(ARG_OPERATORS),
                      "values": values, "args": arr(I)}, ["operator", "values"])
    binaries = arr(obj({"operator": enum(BINARY_OPERATORS), "values": values, "followChildren": B},
                       ["operator", "values"]))
    caps = arr(obj({"type": enum(CAP_TYPES), "operator": enum(SET_OPERATORS), "values": values,
                    "isNamespaceCapability": B}, ["operator", "values"]))
    action = obj({
        "action": enum(ACTIONS | {"NotifyKiller"}), "argError": I,
        "argSig": {"type": "integer", "minimum": 1, "maximum": 64},
        "argUrl": S, "argFqdn": S, "argSock": I, "argIndex": I, "argValue": I, "argRegs": arr(S),
        "argNewSymbol": S, "argNewAddr": I, "argNewOffset": I, "rateLimit": S,
        "rateLimitScope": enum(("thread", "process", "global")), "kernelStackTrace": B, "userStackTrace": B,
        "imaHash": B, "argFd": I, "argName": I,
    }, ["action"], action_parser.ACTION_KEYS)
    return obj({
        "matchArgs": arr(arg_filter), "matchReturnArgs": arr(arg_filter), "matchData": arr(arg_filter),
        "matchPIDs": arr(obj({"operator": enum(PID_OPERATORS), "values": arr(I, minItems=1), "followForks": B,
                              "isNamespacePID": B}, ["operator", "values"])),
        "matchBinaries": binaries, "matchBinarys": binaries, "matchParentBinaries": binaries,
        "matchNamespaces": arr(obj({"namespace": enum(NAMESPACES), "operator": enum(SET_OPERATORS),
                                    "values": values}, ["namespace", "operator", "values"])),
        "matchCapabilities": caps, "matchCapabilityChanges": caps,
        "matchNamespaceChanges": arr(obj({"operator": enum(SET_OPERATORS), "values": arr(enum(NAMESPACES),
                                                                                         minItems=1)},
                                         ["operator", "values"])),
        "matchActions": arr(action), "matchReturnActions": arr(action), "matchWorkloads": arr(LOOSE),
    }, None, parser.SELECTOR_KEYS)


def hook_common() -> dict[str, Any]:
    return {"message": S, "args": arr(arg()), "selectors": arr(selector(), maxItems=MAX_SELECTORS),
            "tags": arr(S, maxItems=16)}


def spec_schema() -> dict[str, Any]:
    kprobe = obj({**hook_common(), "call": {"type": "string", "minLength": 1}, "syscall": B, "return": B,
                  "data": arr(arg(False)), "returnArg": arg(False), "returnArgAction": S,
                  "ignore": obj({"callNotFound": B})}, ["call"], parser.KPROBE_KEYS)
    tracepoint = obj({**hook_common(), "subsystem": S, "event": S, "raw": B}, ["subsystem", "event"],
                     parser.TRACEPOINT_KEYS)
    lsm = obj({**hook_common(), "hook": S}, ["hook"], parser.LSM_KEYS)
    uprobe = obj({**hook_common(), "path": {"type": "string", "pattern": "^/"}, "btfPath": S,
                  "symbol": S, "symbols": arr(S),
                  "offsets": arr({"x-kubernetes-int-or-string": True}), "addrs": arr(LOOSE),
                  "refCtrOffsets": arr(LOOSE), "binaryDigests": arr(S), "data": arr(LOOSE),
                  "resolvePathInContainer": B}, ["path"],
                 parser.UPROBE_KEYS)
    return obj({
        "kprobes": arr(kprobe), "tracepoints": arr(tracepoint), "lsmhooks": arr(lsm), "uprobes": arr(uprobe),
        "usdts": arr(LOOSE), "fentries": arr(LOOSE), "loader": B,
        "podSelector": label_selector(), "containerSelector": label_selector(enum(("name", "repo"))),
        "hostSelector": label_selector(), "nodeSelector": label_selector(), "lists": arr(LOOSE),
        "enforcers": arr(obj({"calls": arr(S, minItems=1)}, ["calls"])),
        "options": arr(obj({"name": S, "value": S}, ["name"])),
        "selectorsMacros": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "killers": arr(obj({"syscalls": arr(S, minItems=1)}, ["syscalls"])), "rawtracepoints": arr(LOOSE),
    }, None, parser.SPEC_KEYS)


def status_schema() -> dict[str, Any]:
    node = obj({"state": enum(("loaded", "error", "error_previous_acting")), "mode": S, "mechanism": S,
                "error": S, "reason": S, "path": S, "line": I, "observedGeneration": I, "notices": arr(S),
                "lastTransitionTime": {"type": "string", "format": "date-time"}})
    return obj({"nodes": {"type": "object", "additionalProperties": node},
                "state": enum(("Loaded", "Partial", "Refused")), "loadedNodes": I, "refusedNodes": I, "error": S})


COLUMNS = [
    {"name": "State", "type": "string", "jsonPath": ".status.state", "description": "Loaded on every node "
     "that reported, Refused on every one, or Partial"},
    {"name": "Loaded", "type": "integer", "jsonPath": ".status.loadedNodes", "description": "nodes where it acts"},
    {"name": "Refused", "type": "integer", "jsonPath": ".status.refusedNodes",
     "description": "nodes that refused it (see status.nodes)"},
    {"name": "Error", "type": "string", "jsonPath": ".status.error", "description": "first refusal: node, line, "
     "path and reason"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.cilium.io", "labels": {"app.kubernetes.io/part-of": "tetrapipe"}},
        "spec": {
            "group": "cilium.io",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "categories": ["tetrapipe"]},
            "scope": scope,
            "versions": [{
                "name": "v1alpha1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": COLUMNS,
                "schema": {"openAPIV3Schema": obj({
                    "apiVersion": S, "kind": S, "metadata": {"type": "object"},
                    "spec": spec_schema(), "status": status_schema(),
                }, ["metadata", "spec"])},
            }],
        },
    }


def crds() -> list[dict[str, Any]]:
    return [crd("TracingPolicy", "tracingpolicies", "Cluster"),
            crd("TracingPolicyNamespaced", "tracingpoliciesnamespaced", "Namespaced")]


def render() -> str:
    head = ("# Generated by `python -m collector.policy.crd` from the policy parser's tables: do not edit.\n"
            "# TracingPolicy (cluster-wide) and TracingPolicyNamespaced, cilium.io/v1alpha1 as in Tetragon.\n")
    return head + yaml.safe_dump_all(crds(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
