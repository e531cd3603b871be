"""TracingPolicy YAML → typed model, with errors that name the YAML path, the line and the reason:

    policy.yaml:14: spec.kprobes[2].selectors[0].matchArgs[0].operator: unknown operator "Prefx"

Several documents per file are allowed. The older ``ExecPolicy`` form and the ``matchBinarys``
spelling are translated (collector/policy/legacy.py) with a notice. What the YAML says is checked
here; what this kernel can serve is checked by the compiler.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from collector.policy import (
    arg_parser,
    enforcers,
    jsondoc,
    legacy,
    selector_parser,
    tetragon_compat,
    uprobe_paths,
    usdt,
)
from collector.policy.arg_parser import ARG_KEYS  # noqa: F401  (crd.py reads it here)
from collector.policy.model import (
    ARG_TYPES,  # noqa: F401  (read here by tests)
    CONTAINER_SELECTOR_KEYS,
    LABEL_OPERATORS,
    MAX_SELECTORS,
    Hook,
    LabelRequirement,
    LabelSelector,
    Policy,
    PolicyError,
)
from collector.policy.selector_parser import SELECTOR_KEYS  # noqa: F401  (crd.py reads it here)
from collector.policy.yamldoc import Ctx as _Ctx
from collector.policy.yamldoc import Doc as _Doc
from collector.policy.yamldoc import kind as _kind

API_VERSION = "cilium.io/v1alpha1"
KINDS = ("TracingPolicy", "TracingPolicyNamespaced")
SPEC_KEYS = {"kprobes", "tracepoints", "uprobes", "lsmhooks", "usdts", "fentries", "loader",
             "podSelector", "containerSelector", "hostSelector", "nodeSelector", "lists",
             "enforcers", "options", "selectorsMacros", "killers", "rawtracepoints"}
KPROBE_KEYS = {"call", "syscall", "return", "message", "args", "data", "returnArg", "returnArgAction",
               "selectors", "tags", "ignore"}
TRACEPOINT_KEYS = {"subsystem", "event", "raw", "message", "args", "selectors", "tags"}
LSM_KEYS = {"hook", "message", "args", "selectors", "tags"}
UPROBE_KEYS = {"path", "btfPath", "symbol", "symbols", "offsets", "addrs", "refCtrOffsets", "binaryDigests",
               "resolvePathInContainer", "message", "args", "selectors", "tags", "data"}
MODES = ("enforce", "monitor")


# ---- entry points ------------------------------------------------------------------------------

def parse_text(text: str, source: str = "", mode: str | None = None) -> list[Policy]:
    """Every policy document in ``text`` (YAML, or JSON: collector/policy/jsondoc.py); raises
    PolicyError for the first problem found."""
    if jsondoc.looks_like_json(text):
        docs = jsondoc.documents(text, source)
        return _named_once([parse_document(d, mode) for d in docs], source)  # type: ignore[arg-type]
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise PolicyError("", f"not valid YAML: {reason}", mark.line + 1 if mark else 0, source) from None
    policies = []
    for node in nodes:
        if node is None:
            continue
        try:
            doc = _Doc(node, source)
        except yaml.YAMLError as exc:  # composed but not constructible, e.g. a bare "=" (value tag)
            mark = getattr(exc, "problem_mark", None)
            reason = getattr(exc, "problem", None) or str(exc)
            raise PolicyError("", f"not valid YAML: {reason}", mark.line + 1 if mark else 0, source) from None
        policies.append(parse_document(doc, mode))
    return _named_once(policies, source)


def _named_once(policies: list[Policy], source: str) -> list[Policy]:
    if not policies:
        raise PolicyError("", "no policy document found", 0, source)
    names = [p.name for p in policies]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise PolicyError("metadata.name", f"policy name {dup!r} appears twice in one file", 0, source)
    return policies


def parse_file(path: str, mode: str | None = None) -> list[Policy]:
    with open(path, encoding="utf-8") as f:
        return parse_text(f.read(), path, mode)


def parse_document(doc: _Doc, mode: str | None = None) -> Policy:
    c = _Ctx(doc)
    top = c.mapping(doc.value, "", {"apiVersion", "kind", "metadata", "spec"})
    api = c.string(top.get("apiVersion"), "apiVersion", required=True)
    if api != API_VERSION:
        raise c.fail("apiVersion", f"unsupported apiVersion {api!r} (expected {API_VERSION})")
    kind = c.string(top.get("kind"), "kind", required=True)
    meta = c.mapping(top.get("metadata"), "metadata")
    name = c.string(meta.get("name"), "metadata.name", required=True)
    if not name or len(name) > 253:
        raise c.fail("metadata.name", "must be 1 to 253 characters")
    if kind == "ExecPolicy":
        policy = _spec(c, legacy.exec_policy_spec(c, top.get("spec")), name, "TracingPolicy")
    elif kind in KINDS:
        policy = _spec(c, top.get("spec"), name, kind)
    else:
        raise c.fail("kind", f"unknown kind {kind!r} (TracingPolicy, TracingPolicyNamespaced or the "
                             "legacy ExecPolicy)")
    if kind == "TracingPolicyNamespaced":
        policy.namespace = c.string(meta.get("namespace"), "metadata.namespace") or "default"
    elif meta.get("namespace") and kind == "TracingPolicy":
        c.notices.append("metadata.namespace is ignored for a cluster-wide TracingPolicy")
    if mode is not None:
        if mode not in MODES:
            raise PolicyError("", f"unknown policy mode {mode!r} (enforce or monitor)", 0, doc.source)
        policy.mode = mode
    policy.notices = c.notices + policy.notices
    policy.source = doc.source
    policy.lines = doc.lines
    return policy


def _spec(c: _Ctx, raw: Any, name: str, kind: str) -> Policy:
    spec = c.mapping(raw, "spec", SPEC_KEYS)
    usdts = spec.pop("usdts", None)   # served (collector/policy/usdt.py)
    policy = Policy(name=name, kind=kind)
    for key in ("selectorsMacros",):
        if spec.get(key):
            raise c.fail(f"spec.{key}", f"spec.{key} is not supported by tetrapipe")
    policy.loader = c.boolean(spec.get("loader"), "spec.loader")
    if policy.loader and (spec.get("podSelector") is not None or spec.get("containerSelector") is not None):
        key = "podSelector" if spec.get("podSelector") is not None else "containerSelector"
        raise c.fail(f"spec.{key}", "spec.loader: the loader sensor reports every process of the node; "
                                    "it cannot be scoped to pods or containers (as in Tetragon)")
    if spec.get("hostSelector") not in (None, {}) and kind == "TracingPolicyNamespaced":
        raise c.fail("spec.hostSelector", "should have a null spec.hostSelector")
    if spec.get("nodeSelector"):
        c.notices.append("spec.nodeSelector: applied by the operator that distributes policies; "
                         "this collector loads the policy it was given")
    for i, opt in enumerate(c.seq(spec.get("options"), "spec.options")):
        p = f"spec.options[{i}]"
        o = c.mapping(opt, p, {"name", "value"})
        oname = c.string(o.get("name"), f"{p}.name", required=True)
        if oname == "policy-mode":
            policy.mode = c.choice(o.get("value"), f"{p}.value", MODES, "policy mode")
        else:
            c.notices.append(f"{p}: option {oname!r} has no effect in tetrapipe")
    if spec.get("hostSelector") is not None and kind == "TracingPolicy" and (
            spec.get("podSelector") is not None or spec.get("containerSelector") is not None):
        raise c.fail("spec.hostSelector", "a hostSelector together with a pod or container selector (host "
                                          "processes and selected pods) is not supported by tetrapipe")
    if spec.get("podSelector") is not None:
        policy.pod_selector = _label_selector(c, spec.get("podSelector"), "spec.podSelector")
    if spec.get("containerSelector") is not None:
        policy.container_selector = _label_selector(c, spec.get("containerSelector"), "spec.containerSelector",
                                                    CONTAINER_SELECTOR_KEYS)
    lists = _lists(c, spec.get("lists"))
    for i, h in enumerate(c.seq(spec.get("kprobes"), "spec.kprobes")):
        policy.hooks += _expand_list(c, _kprobe(c, h, f"spec.kprobes[{i}]", i), lists)
    # fentries: kernel functions as kprobes are; the mechanism is chosen per kernel all the same
    # (fentry/fexit where BPF trampolines load; collector/policy/mechanism.py)
    for i, h in enumerate(c.seq(spec.get("fentries"), "spec.fentries")):
        policy.hooks.append(_kprobe(c, h, f"spec.fentries[{i}]", i))
    for i, h in enumerate(c.seq(spec.get("tracepoints"), "spec.tracepoints")):
        policy.hooks.append(_tracepoint(c, h, f"spec.tracepoints[{i}]", i))
    for i, h in enumerate(c.seq(spec.get("rawtracepoints"), "spec.rawtracepoints")):
        policy.hooks.append(_tracepoint(c, h, f"spec.rawtracepoints[{i}]", i, raw=True))
    for i, h in enumerate(c.seq(spec.get("lsmhooks"), "spec.lsmhooks")):
        policy.hooks.append(_lsmhook(c, h, f"spec.lsmhooks[{i}]", i))
    for i, h in enumerate(c.seq(spec.get("uprobes"), "spec.uprobes")):
        policy.hooks += _uprobes(c, h, f"spec.uprobes[{i}]", i)
    for i, h in enumerate(c.seq(usdts, "spec.usdts")):
        policy.hooks.append(usdt.parse(c, h, f"spec.usdts[{i}]", i, _common))
    uprobe_paths.check_scoped(c, policy)
    tetragon_compat.list_values(c, policy.hooks, lists)
    policy.enforcers = enforcers.parse(c, spec, lists, policy.hooks)
    policy.hooks = tetragon_compat.split_override_return(policy.hooks, c.notices)
    if not policy.hooks and not policy.loader:
        raise c.fail("spec", "the policy has no hooks (kprobes, tracepoints, uprobes or lsmhooks) "
                             "and does not ask for loader events (loader: true)")
    return policy


LIST_TYPES = ("", "syscalls", "generated_syscalls", "generated_ftrace")


def _lists(c: _Ctx, raw: Any) -> dict[str, tuple[str, list[str]]]:
    """Tetragon's ``spec.lists``: name → (type, values), for kprobes with ``call: "list:NAME"``.
    Lists of kernel functions (no type) and of syscalls (``type: syscalls``) are served; the
    generated ones (every syscall, an ftrace pattern) are refused."""
    out: dict[str, tuple[str, list[str]]] = {}
    for i, item in enumerate(c.seq(raw, "spec.lists")):
        p = f"spec.lists[{i}]"
        m = c.mapping(item, p, {"name", "values", "type", "pattern", "validated"})
        name = c.string(m.get("name"), f"{p}.name", required=True)
        if not name or name in out:
            raise c.fail(f"{p}.name", f"list name {name!r} is empty or given twice")
        kind = c.string(m.get("type"), f"{p}.type")
        if kind not in LIST_TYPES:
            raise c.fail(f"{p}.type", f'unknown list type "{kind}" (one of syscalls, generated_syscalls, '
                                      "generated_ftrace, or none for kernel functions)")
        if kind.startswith("generated_") or m.get("pattern"):
            raise c.fail(f"{p}.type", f"generated lists ({kind or 'pattern'}) are not supported by tetrapipe: "
                                      "list the functions or syscalls in values")
        values = [c.string(v, f"{p}.values[{j}]", required=True)
                  for j, v in enumerate(c.seq(m.get("values"), f"{p}.values"))]
        if not values:
            raise c.fail(f"{p}.values", "a list needs at least one value")
        out[name] = (kind, values)
    return out


def _expand_list(c: _Ctx, hook: Hook, lists: dict[str, tuple[str, list[str]]]) -> list[Hook]:
    """A kprobe on ``call: "list:NAME"`` → the same hook on each function (syscall) of the list."""
    if not hook.call.startswith("list:"):
        return [hook]
    name = hook.call[len("list:"):]
    if name not in lists:
        raise c.fail(f"{hook.path}.call", f"no list named {name!r} in spec.lists")
    kind, values = lists[name]
    return [dataclasses.replace(hook, call=v, syscall=hook.syscall or kind == "syscalls") for v in values]


def _label_selector(c: _Ctx, raw: Any, path: str, keys: tuple[str, ...] = ()) -> LabelSelector:
    """A Kubernetes label selector; ``keys``: the only keys allowed (containerSelector)."""
    m = c.mapping(raw, path, {"matchLabels", "matchExpressions"})
    sel = LabelSelector()

    def key_ok(k: Any, p: str) -> str:
        k = c.string(k, p, required=True)
        if not k:
            raise c.fail(p, "a label key cannot be empty")
        if keys and k not in keys:
            raise c.fail(p, f"unknown key {k!r}: a containerSelector selects on {' and '.join(keys)}")
        return k

    for k, v in c.mapping(m.get("matchLabels"), f"{path}.matchLabels").items():
        p = f"{path}.matchLabels.{k}"
        key_ok(k, p)
        if v is None or isinstance(v, dict | list | bool):
            raise c.fail(p, f"expected a string label value, got {_kind(v)}")
        sel.match_labels[str(k)] = str(v)
    for i, e in enumerate(c.seq(m.get("matchExpressions"), f"{path}.matchExpressions")):
        p = f"{path}.matchExpressions[{i}]"
        em = c.mapping(e, p, {"key", "operator", "values"})
        k = key_ok(em.get("key"), f"{p}.key")
        op = c.choice(em.get("operator"), f"{p}.operator", LABEL_OPERATORS, "operator")
        vals = selector_parser.values(c, em, p)
        if op in ("In", "NotIn") and not vals:
            raise c.fail(f"{p}.values", f"operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and vals:
            raise c.fail(f"{p}.values", f"operator {op} takes no values")
        sel.match_expressions.append(LabelRequirement(k, op, vals))
    return sel


def _common(c: _Ctx, m: dict[str, Any], hook: Hook, path: str) -> Hook:
    hook.path = path
    hook.message = c.string(m.get("message"), f"{path}.message")
    hook.tags = [c.string(t, f"{path}.tags[{i}]") for i, t in enumerate(c.seq(m.get("tags"), f"{path}.tags"))]
    if len(hook.tags) > 16:
        raise c.fail(f"{path}.tags", "at most 16 tags")
    seen: set[int] = set()
    for i, a in enumerate(c.seq(m.get("args"), f"{path}.args")):
        arg = arg_parser.arg(c, a, f"{path}.args[{i}]")
        if arg.index in seen:
            raise c.fail(f"{path}.args[{i}].index", f"argument index {arg.index} is listed twice")
        seen.add(arg.index)
        hook.args.append(arg)
    for i, a in enumerate(hook.args):
        if a.size_arg_index:
            if a.type not in ("char_buf", "char_iovec"):
                raise c.fail(f"{path}.args[{i}].sizeArgIndex", f"sizeArgIndex applies to char_buf, not {a.type}")
            if hook.arg(a.size_arg_index - 1) is None and hook.kind != "kprobe":
                raise c.fail(f"{path}.args[{i}].sizeArgIndex",
                             f"sizeArgIndex {a.size_arg_index} (counted from 1) names no argument")
    sels = c.seq(m.get("selectors"), f"{path}.selectors")
    if len(sels) > MAX_SELECTORS:
        raise c.fail(f"{path}.selectors", f"{len(sels)} selectors: at most {MAX_SELECTORS} per hook")
    for i, s in enumerate(sels):
        hook.selectors.append(selector_parser.selector(c, s, f"{path}.selectors[{i}]", hook))
    return hook


def _kprobe(c: _Ctx, raw: Any, path: str, i: int) -> Hook:
    m = c.mapping(raw, path, KPROBE_KEYS)
    hook = Hook(kind="kprobe", index=i)
    hook.call = c.string(m.get("call"), f"{path}.call", required=True)
    if not hook.call:
        raise c.fail(f"{path}.call", "required")
    hook.syscall = c.boolean(m.get("syscall"), f"{path}.syscall")
    hook.return_ = c.boolean(m.get("return"), f"{path}.return")
    if m.get("returnArg") is not None:
        if not hook.return_:   # Tetragon reads it only with return: true
            c.notices.append(f"{path}.returnArg: ignored without return: true")
        hook.return_arg = arg_parser.arg(c, m.get("returnArg"), f"{path}.returnArg", need_index=False)
    hook.data = arg_parser.data(c, m.get("data"), f"{path}.data")
    action = m.get("returnArgAction")
    if action not in (None, "", "Post"):   # Post: the default, an event at the return
        hook.return_arg_action = c.choice(action, f"{path}.returnArgAction", ("TrackSock", "UntrackSock"),
                                          "returnArgAction")
        if not hook.return_:
            raise c.fail(f"{path}.returnArgAction", f"returnArgAction {action} needs return: true")
    ign = c.mapping(m.get("ignore"), f"{path}.ignore", {"callNotFound"})
    hook.ignore_call_not_found = c.boolean(ign.get("callNotFound"), f"{path}.ignore.callNotFound")
    return _common(c, m, hook, path)


def _tracepoint(c: _Ctx, doc: Any, path: str, i: int, raw: bool = False) -> Hook:
    m = c.mapping(doc, path, TRACEPOINT_KEYS)
    hook = Hook(kind="tracepoint", index=i)
    hook.subsystem = c.string(m.get("subsystem"), f"{path}.subsystem", required=True)
    hook.event = c.string(m.get("event"), f"{path}.event", required=True)
    hook.raw = raw or c.boolean(m.get("raw"), f"{path}.raw")   # collector/policy/rawtp.py
    return _common(c, m, hook, path)


def _lsmhook(c: _Ctx, raw: Any, path: str, i: int) -> Hook:
    m = c.mapping(raw, path, LSM_KEYS)
    hook = Hook(kind="lsmhook", index=i)
    hook.call = c.string(m.get("hook"), f"{path}.hook", required=True)
    return _common(c, m, hook, path)


def _uprobes(c: _Ctx, raw: Any, path: str, i: int) -> list[Hook]:
    """One ``spec.uprobes`` entry → one hook per symbol and per offset (collector/uprobes.py)."""
    m = c.mapping(raw, path, UPROBE_KEYS)
    binary = c.string(m.get("path"), f"{path}.path", required=True)
    if not binary.startswith("/"):
        raise c.fail(f"{path}.path", "an absolute path to an ELF file is required")
    for key in ("addrs", "binaryDigests", "data", "btfPath"):
        if m.get(key):
            raise c.fail(f"{path}.{key}", f"{key} is not supported by tetrapipe for uprobes")
    symbols = [c.string(x, f"{path}.symbols[{j}]", required=True)
               for j, x in enumerate(c.seq(m.get("symbols"), f"{path}.symbols"))]
    if m.get("symbol") is not None:   # Tetragon's single-symbol spelling
        symbols.insert(0, c.string(m.get("symbol"), f"{path}.symbol", required=True))
    offsets = []
    for j, x in enumerate(c.seq(m.get("offsets"), f"{path}.offsets")):
        try:
            offsets.append(int(x, 0) if isinstance(x, str) else int(x))
        except (TypeError, ValueError):
            raise c.fail(f"{path}.offsets[{j}]", f"{x!r} is not a file offset") from None
    if not symbols and not offsets:
        raise c.fail(path, "symbols or offsets are required")
    ref_ctrs = []   # one per offset (Tetragon: the same dimension), each a semaphore's file offset
    for j, x in enumerate(c.seq(m.get("refCtrOffsets"), f"{path}.refCtrOffsets")):
        try:
            ref_ctrs.append(int(x, 0) if isinstance(x, str) else int(x))
        except (TypeError, ValueError):
            raise c.fail(f"{path}.refCtrOffsets[{j}]", f"{x!r} is not a file offset") from None
        if not 0 <= ref_ctrs[-1] < 1 << 32 or ref_ctrs[-1] % 2:
            raise c.fail(f"{path}.refCtrOffsets[{j}]", f"{x!r}: a reference counter is an even file "
                                                       "offset below 4 GiB (the kernel's 32 bits)")
    if ref_ctrs and len(ref_ctrs) != len(offsets):
        raise c.fail(f"{path}.refCtrOffsets", f"refCtrOffsets({len(ref_ctrs)}) has different dimension "
                                              f"than offsets({len(offsets)})")
    template = _common(c, m, Hook(kind="uprobe", index=i), path)
    template.in_container = c.boolean(m.get("resolvePathInContainer"), f"{path}.resolvePathInContainer")
    out = []
    for sym in symbols:
        out.append(dataclasses.replace(template, call=sym, binary=binary))
    for j, off in enumerate(offsets):
        out.append(dataclasses.replace(template, call="", binary=binary, offset=off,
                                       ref_ctr=ref_ctrs[j] if ref_ctrs else 0))
    return out
