"""Policy parsing and validation: the seeds load, broken policies give their path, line and reason.

No BPF here: the compiler's checks read this kernel's tracefs formats but nothing is loaded.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from conftest import skip_or_fail

from collector.policy import compiler, manager, parser
from collector.policy.model import PolicyError

DATA = Path(__file__).parent / "data"
SEED = DATA / "seed"
HOST_NS = [0xEFFFFFFE, 0xEFFFFFFF, 1, 0xEFFFFFFC, 0xEFFFFFFC, 2, 0xEFFFFFFA, 0xEFFFFFFA, 0xEFFFFFFB, 0xEFFFFFFD]
HAVE_TRACEFS = (compiler.TRACEFS / "events" / "syscalls").is_dir()


def policy(spec: str, name: str = "p") -> str:
    return (f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")


def compile_text(text: str) -> compiler.Compiled:
    (p,) = parser.parse_text(text, "t.yaml")
    return compiler.compile_policy(p, 7, HOST_NS)


def test_seed_policies_parse_verbatim() -> None:
    (deny,) = parser.parse_file(str(SEED / "deny-tmp-forbidden-write.yaml"))
    assert deny.name == "deny-tmp-forbidden-write" and deny.mode == "enforce"
    assert [h.call for h in deny.hooks] == ["fd_install", "__x64_sys_close", "__x64_sys_read", "__x64_sys_write"]
    write = deny.hooks[3]
    assert write.arg(1).size_arg_index == 3 and write.selectors[0].action_names() == ["Sigkill"]
    assert deny.hooks[0].selectors[0].match_args[0].values == ["/tmp/forbidden/"]
    (ex,) = parser.parse_file(str(SEED / "exec-policy-example.yaml"))
    assert ex.kind == "TracingPolicy" and any("legacy ExecPolicy translated" in n for n in ex.notices)
    assert any("matchBinarys" in n for n in ex.notices)
    (hook,) = ex.hooks
    assert (hook.subsystem, hook.event) == ("sched", "sched_process_exec")
    (sel,) = hook.selectors  # the list items are AND-ed into one selector
    assert sel.match_namespaces[0].values == ["host_ns"] and sel.match_namespaces[0].operator == "NotIn"
    assert sel.match_capabilities[0].values == ["CAP_SYS_ADMIN"] and sel.match_capabilities[0].is_namespace_capability
    assert sel.action_names() == ["Sigkill"] and not sel.match_binaries and not sel.match_pids


def test_seed_policies_compile_with_notices() -> None:
    if not HAVE_TRACEFS:
        skip_or_fail("needs tracefs syscall formats")
    (deny,) = parser.parse_file(str(SEED / "deny-tmp-forbidden-write.yaml"))
    c = compiler.compile_policy(deny, 7, HOST_NS)
    attach = {h.function_name: h.attach for h in c.hooks}
    assert attach["__x64_sys_write"] == ["syscalls:sys_enter_write"]
    assert "syscalls:sys_exit_openat" in attach["fd_install"]
    assert attach["__x64_sys_read"] == ["syscalls:sys_enter_read", "syscalls:sys_exit_read"]
    assert any("FollowFD is served by resolving file descriptors" in n for n in c.notices)
    assert c.strings == [b"/tmp/forbidden/"]
    assert "bpf_send_signal(9)" in c.text
    (mon,) = parser.parse_file(str(SEED / "deny-tmp-forbidden-write.yaml"), mode="monitor")
    mtext = compiler.compile_policy(mon, 7, HOST_NS).text
    assert "bpf_send_signal" not in mtext and "TP_HOOK_MONITOR" in mtext


def test_syscall_spellings_mean_the_same_syscall() -> None:
    assert {compiler.syscall_name(n) for n in ("__x64_sys_write", "sys_write", "write")} == {"write"}


def test_policy_mode_option() -> None:
    (p,) = parser.parse_text(policy("""
        options:
        - name: policy-mode
          value: monitor
        tracepoints:
        - subsystem: sched
          event: sched_process_exec
    """))
    assert p.mode == "monitor"
    (p,) = parser.parse_text(policy("tracepoints:\n- subsystem: sched\n  event: sched_process_exec"), mode="monitor")
    assert p.mode == "monitor"


def test_several_documents_per_file() -> None:
    tp = "tracepoints:\n- subsystem: sched\n  event: sched_process_exec"
    ps = parser.parse_text(policy(tp, "a") + "---\n" + policy(tp, "b"))
    assert [p.name for p in ps] == ["a", "b"]


def test_matchbinarys_spelling_accepted_with_notice() -> None:
    (p,) = parser.parse_text(policy("""
        kprobes:
        - call: sys_write
          syscall: true
          selectors:
          - matchBinarys:
            - operator: In
              values: ["/usr/bin/vi"]
    """))
    assert p.hooks[0].selectors[0].match_binaries[0].values == ["/usr/bin/vi"]
    assert any("matchBinarys" in n for n in p.notices)


def test_spec_lists_expand_to_one_hook_per_value() -> None:
    if not HAVE_TRACEFS:
        skip_or_fail("needs tracefs syscall formats")
    c = compile_text(policy("""
        lists:
        - name: dups
          type: syscalls
          values: ["sys_dup", "sys_dup3"]
        kprobes:
        - call: "list:dups"
          args:
          - index: 0
            type: int
          selectors:
          - matchArgs:
            - index: 0
              operator: InMap
              values: ["3:5", "9"]
    """))
    assert [h.function_name for h in c.hooks] == ["sys_dup", "sys_dup3"]
    assert [h.attach for h in c.hooks] == [["syscalls:sys_enter_dup"], ["syscalls:sys_enter_dup3"]]
    # InMap: the values and the expanded range in the intset map, one set per hook
    assert sorted(c.int_sets) == [(0, 3), (0, 4), (0, 5), (0, 9), (1, 3), (1, 4), (1, 5), (1, 9)]
    assert "tp_int_in(0, (u64)" in c.text and "BPF_HASH(intset, struct tp_intkey, u8, 8)" in c.text


def test_string_sets_are_map_keys_with_one_lookup_per_length() -> None:
    if not HAVE_TRACEFS:
        skip_or_fail("needs tracefs syscall formats")
    c = compile_text(policy("""
        kprobes:
        - call: sys_openat
          syscall: true
          args:
          - index: 1
            type: string
          selectors:
          - matchArgs:
            - index: 1
              operator: Postfix
              values: [".log", ".conf", ".x", ".txt"]
          - matchArgs:
            - index: 1
              operator: Equal
              values: ["/etc/passwd", "/etc/shadow"]
    """))
    assert c.string_sets == [(0, b".log"), (0, b".conf"), (0, b".x"), (0, b".txt"),
                             (1, b"/etc/passwd"), (1, b"/etc/shadow")]
    # Postfix: lengths 2, 4, 5 each one lookup, in rising order; Equal: one lookup
    assert [ln for ln in c.text.splitlines() if "tp_set_at(key" in ln] == [
        f"    if (n >= {n} && tp_set_at(key, s->slot[0], n - {n}, {n}))" for n in (2, 4, 5)]
    assert "return tp_set_eq(key, s->slot[0], n);" in c.text


SIX_SELECTORS = "\n".join(["kprobes:", "- call: sys_write", "  syscall: true", "  selectors:"]
                          + ["  - matchActions:\n    - action: Post"] * 6)

# (policy text, expected error text, expected line, needs the compiler)
BROKEN = [
    pytest.param(policy("""
        kprobes:
        - call: sys_openat
          syscall: true
          args:
          - index: 1
            type: string
          selectors:
          - matchArgs:
            - index: 1
              operator: Prefx
              values: ["/etc/"]
    """), 'spec.kprobes[0].selectors[0].matchArgs[0].operator: unknown operator "Prefx"', 15, False,
        id="bad-operator"),
    pytest.param(policy("""
        kprobes:
        - call: sys_write
          syscall: true
          args:
          - index: 0
            type: fd
          selectors:
          - matchArgs:
            - index: 2
              operator: Equal
              values: ["1"]
    """), "spec.kprobes[0].selectors[0].matchArgs[0].index: no argument with index 2 in args (declared: 0)",
        14, False, id="matchargs-index-not-declared"),
    pytest.param(policy("""
        kprobes:
        - call: sys_write
          syscall: true
          args:
          - index: 4
            type: int
    """), "spec.kprobes[0].args[0].index: syscall write has 3 arguments (fd, buf, count): index 4 is out of range",
        10, True, id="arg-index-out-of-range"),
    pytest.param(policy(SIX_SELECTORS), "spec.kprobes[0].selectors: 6 selectors: at most 5 per hook", 9, False,
                 id="six-selectors"),
    pytest.param(policy("""
        kprobes:
        - call: sys_no_such_call
          syscall: true
    """), "spec.kprobes[0].call: 'sys_no_such_call' is not a syscall of this kernel", 7, True,
        id="unknown-syscall"),
    pytest.param(policy("""
        kprobes:
        - call: security_file_open
    """), "spec.kprobes[0].call: kernel function 'security_file_open' cannot be served", 7, True,
        id="unknown-hook-kernel-function"),
    pytest.param(policy("""
        tracepoints:
        - subsystem: sched
          event: sched_no_such_event
    """), "spec.tracepoints[0].event: no tracepoint sched:sched_no_such_event", 8, True, id="unknown-tracepoint"),
    pytest.param(policy("""
        lsmhooks:
        - hook: file_open
    """), "spec.lsmhooks[0].hook: lsmhook 'file_open' cannot be served", 7, True, id="lsmhook-refused"),
    pytest.param(policy("""
        kprobes:
        - call: sys_write
          syscall: true
          selectors:
          - matchActions:
            - action: Override
              argError: -1
    """), "spec.kprobes[0].selectors[0].matchActions[0].action: Override cannot be served", 11, True,
        id="override-refused"),
    pytest.param(policy("""
        kprobes:
        - call: sys_write
          syscall: true
          selectors:
          - matchActions:
            - action: Sigkil
    """), 'spec.kprobes[0].selectors[0].matchActions[0].action: unknown action "Sigkil"', 11, False,
        id="unknown-action"),
    pytest.param(policy("""
        kprobes:
        - call: sys_write
          syscall: true
          selectors:
          - matchCapabilities:
            - operator: In
              values: ["CAP_SYS_ADMINN"]
    """), 'spec.kprobes[0].selectors[0].matchCapabilities[0].values[0]: unknown capability "CAP_SYS_ADMINN"', 12,
        False, id="unknown-capability"),
    pytest.param(policy("""
        kprobes:
        - call: sys_write
          syscal: true
    """), "spec.kprobes[0].syscal: unknown field 'syscal'", 8, False, id="unknown-field"),
    pytest.param(policy("""
        kprobes:
        - call: sys_write
          syscall: true
          args:
          - index: 0
            type: integer
    """), 'spec.kprobes[0].args[0].type: unknown argument type "integer"', 11, False, id="unknown-arg-type"),
    pytest.param(policy("""
        kprobes:
        - call: sys_write
          syscall: true
          args:
          - index: 0
            type: fd
          selectors:
          - matchArgs:
            - index: 0
              operator: GT
              values: ["/tmp"]
    """), "spec.kprobes[0].selectors[0].matchArgs[0].values[0]: '/tmp' is not an integer", 16, True,
        id="gt-on-path-value"),
    pytest.param("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: x\nspec:\n  kprobes: [\n",
                 "not valid YAML", 7, False, id="bad-yaml"),
    pytest.param(policy("kprobes: []"), "spec: the policy has no hooks", 5, False, id="no-hooks"),
    pytest.param(policy("""
        podSelector:
          matchExpressions:
          - key: app
            operator: Inn
            values: [web]
        tracepoints:
        - subsystem: sched
          event: sched_process_exec
    """), 'spec.podSelector.matchExpressions[0].operator: unknown operator "Inn"', 9, False,
        id="pod-selector-bad-operator"),
    pytest.param(policy("""
        podSelector:
          matchExpressions:
          - key: app
            operator: Exists
            values: [web]
        tracepoints:
        - subsystem: sched
          event: sched_process_exec
    """), "spec.podSelector.matchExpressions[0].values: operator Exists takes no values", 10, False,
        id="pod-selector-exists-with-values"),
    pytest.param(policy("""
        podSelector:
          matchExpressions:
          - key: app
            operator: NotIn
        tracepoints:
        - subsystem: sched
          event: sched_process_exec
    """), "spec.podSelector.matchExpressions[0].values: operator NotIn needs at least one value", 8, False,
        id="pod-selector-notin-without-values"),
    pytest.param(policy("""
        podSelector:
          matchLabels:
            app: [web]
        tracepoints:
        - subsystem: sched
          event: sched_process_exec
    """), "spec.podSelector.matchLabels.app: expected a string label value, got a list", 8, False,
        id="pod-selector-label-not-a-string"),
    pytest.param(policy("""
        containerSelector:
          matchExpressions:
          - key: image
            operator: In
            values: [nginx]
        tracepoints:
        - subsystem: sched
          event: sched_process_exec
    """), "spec.containerSelector.matchExpressions[0].key: unknown key 'image': a containerSelector "
          "selects on name and repo", 8, False, id="container-selector-unknown-key"),
    pytest.param(policy("""
        podSelector:
          matchLabel:
            app: web
        tracepoints:
        - subsystem: sched
          event: sched_process_exec
    """), "spec.podSelector.matchLabel: unknown field 'matchLabel'", 7, False, id="pod-selector-typo"),
    pytest.param(policy("""
        hostSelector: {}
        podSelector:
          matchLabels:
            app: web
        tracepoints:
        - subsystem: sched
          event: sched_process_exec
    """), "spec.hostSelector: a hostSelector together with a pod or container selector", 6, False,
        id="host-and-pod-selector"),
]


LIST_HOOK = """
    kprobes:
    - call: "list:{name}"
      syscall: true
"""
BROKEN += [
    pytest.param(policy("lists:\n- name: a\n  values: [sys_dup]\n" + textwrap.dedent(LIST_HOOK.format(name="b"))),
                 "spec.kprobes[0].call: no list named 'b' in spec.lists", 11, False, id="list-unknown"),
    pytest.param(policy("lists:\n- name: a\n  type: generated_ftrace\n  pattern: '^vfs_*'\n"
                        + textwrap.dedent(LIST_HOOK.format(name="a"))),
                 "spec.lists[0].type: generated lists (generated_ftrace) are not supported", 8, False,
                 id="list-generated"),
    pytest.param(policy("""
        kprobes:
        - call: sys_openat
          syscall: true
          args:
          - index: 1
            type: string
          selectors:
          - matchArgs:
            - index: 1
              operator: InMap
              values: ["/etc/passwd"]
    """), "matchArgs[0].operator: operator InMap does not apply to a string argument", 15, True, id="inmap-string"),
    pytest.param(policy("""
        kprobes:
        - call: sys_dup
          syscall: true
          args:
          - index: 0
            type: int
          selectors:
          - matchArgs:
            - index: 0
              operator: InMap
              values: ["0:100000"]
    """), "expand to more than 65536 entries", 16, True, id="inmap-too-many"),
    pytest.param(policy("""
        kprobes:
        - call: sys_openat
          syscall: true
          args:
          - index: 1
            type: string
          selectors:
          - matchArgs:
            - index: 1
              operator: SubString
              values: ["passwd"]
    """), "operator SubString is not supported by tetrapipe", 15, True, id="substring-refused"),
    pytest.param(policy("""
        kprobes:
        - call: sys_read
          syscall: true
          args:
          - index: 0
            type: fd
          selectors:
          - matchArgs:
            - index: 0
              operator: FileType
              values: ["dir", "door"]
    """), 'matchArgs[0].values[1]: unknown file type "door"', 16, True, id="filetype-unknown"),
    pytest.param(policy("""
        kprobes:
        - call: sys_read
          syscall: true
          args:
          - index: 2
            type: size_t
          selectors:
          - matchArgs:
            - index: 2
              operator: FileType
              values: ["reg"]
    """), "operator FileType applies to file, path, dentry, linux_binprm and fd arguments, not to a size_t",
        15, True, id="filetype-int"),
]


@pytest.mark.parametrize(("text", "error", "line", "compile_"), BROKEN)
def test_broken_policies_name_path_line_and_reason(text: str, error: str, line: int, compile_: bool) -> None:
    if compile_ and not HAVE_TRACEFS:
        skip_or_fail("needs tracefs formats")
    with pytest.raises(PolicyError) as ei:
        compile_text(text)
    msg = str(ei.value)
    assert error in msg, msg
    assert msg.startswith(f"t.yaml:{line}: "), msg
    assert ei.value.line == line


def test_policy_file_ownership(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(policy("tracepoints:\n- subsystem: sched\n  event: sched_process_exec"))
    if os.geteuid() != 0:
        skip_or_fail("needs root to give the file away")
    os.chown(f, 0, 0)
    os.chmod(f, 0o644)
    manager.check_file_owner(str(f))
    os.chmod(f, 0o664)
    with pytest.raises(PolicyError, match=r"writable by group or others \(mode 0664\)"):
        manager.check_file_owner(str(f))
    os.chmod(f, 0o644)
    os.chown(f, 65534, 0)
    with pytest.raises(PolicyError, match="owned by uid 65534, not root"):
        manager.check_file_owner(str(f))


def test_legacy_error_points_at_original_line() -> None:
    text = textwrap.dedent("""\
        apiVersion: cilium.io/v1alpha1
        kind: ExecPolicy
        metadata:
          name: legacy
        spec:
          rules:
            selectors:
            - matchCapabilities:
              - operator: Inn
                values: ["CAP_SYS_ADMIN"]
    """)
    with pytest.raises(PolicyError) as ei:
        parser.parse_text(text, "l.yaml")
    assert ei.value.line == 9 and 'unknown operator "Inn"' in str(ei.value)


def test_ignore_call_not_found_skips_the_hook_with_a_notice() -> None:
    if not HAVE_TRACEFS:
        skip_or_fail("needs tracefs syscall formats")
    c = compile_text(policy("""
        kprobes:
        - call: security_file_open
          ignore:
            callNotFound: true
        - call: sys_write
          syscall: true
    """))
    assert [h.function_name for h in c.hooks] == ["sys_write"]
    assert any("skipped (ignore.callNotFound)" in n for n in c.notices)


@pytest.mark.parametrize(("value", "ns"), [("30s", 30_000_000_000), ("5M", 300_000_000_000), ("1H", 3600_000_000_000),
                                           ("7", 7_000_000_000), ("5/minute", None), ("30/60s", None), ("m", None)])
def test_rate_limit_forms_as_tetragon_parses_them(value: str, ns: int | None) -> None:
    """Tetragon's parseRateLimit: digits then s/m/h in either case (none: seconds); anything else
    refused with the reason. Stack trace flags apply to Post on kprobes only."""
    from collector.policy.hookfn import _duration_ns
    text = policy(f"""
        kprobes:
        - call: sys_openat
          syscall: true
          args: [{{index: 1, type: string}}]
          selectors:
          - matchActions: [{{action: Post, rateLimit: "{value}", kernelStackTrace: true}}]
        """)
    if ns is None:
        with pytest.raises(PolicyError, match="not a duration.*Tetragon's parser refuses it too"):
            parser.parse_text(text, "t.yaml")
        return
    (p,) = parser.parse_text(text, "t.yaml")
    a = p.hooks[0].selectors[0].match_actions[0]
    assert _duration_ns(a.rate_limit) == ns and a.kernel_stack_trace and not a.user_stack_trace
    with pytest.raises(PolicyError, match="userStackTrace applies to Post only"):
        parser.parse_text(text.replace("Post", "Sigkill").replace(f', rateLimit: "{value}"', "")
                          .replace("kernelStackTrace", "userStackTrace"), "t.yaml")


def test_stack_traces_refused_where_the_event_has_no_place_for_them() -> None:
    text = policy("""
        tracepoints:
        - subsystem: syscalls
          event: sys_enter_openat
          selectors:
          - matchActions: [{action: Post, kernelStackTrace: true}]
        """)
    with pytest.raises(PolicyError, match="served on kprobes only.*process_tracepoint"):
        parser.parse_text(text, "t.yaml")


def test_template_placeholder_named_with_its_line() -> None:
    # Tetragon's match_capability_changes/match_namespace_changes are templates its e2e tests fill
    # in: YAML reads `{{.Pid}}` as a mapping inside a mapping, not as a value
    text = textwrap.dedent("""\
        apiVersion: cilium.io/v1alpha1
        kind: TracingPolicy
        metadata:
          name: tpl
        spec:
          kprobes:
          - call: "commit_creds"
            syscall: false
            selectors:
            - matchPIDs:
              - operator: In
                values:
                - {{ .Pid }}
    """)
    with pytest.raises(PolicyError) as ei:
        parser.parse_text(text, "t.yaml")
    assert str(ei.value) == ("t.yaml:13: spec.kprobes[0].selectors[0].matchPIDs[0].values[0]: a template "
                             "placeholder {{.Pid}} where a value is expected: fill it in before loading")
    # a real flow mapping is not taken for a placeholder
    args = "syscall: false\n    args: [{index: 0, type: \"nop\"}]"   # a flow mapping in a list
    filled = text.replace("{{ .Pid }}", "1").replace("syscall: false", args)
    (p,) = parser.parse_text(filled, "t.yaml")
    assert p.hooks[0].call == "commit_creds"
