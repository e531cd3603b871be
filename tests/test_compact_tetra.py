"""The compact view against the cases of Tetragon's own compact-encoder tests
(pkg/encoder/encoder_test.go), restated here: every line must be byte-identical to what tetra
prints for the same event. Pure function tests, no pipeline (well under a second)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from exporters import compact

POD = {"namespace": "kube-system", "name": "tetragon"}


def kprobe(fn: str, args: list[Any] | None = None, binary: str = "/usr/bin/curl") -> dict[str, Any]:
    body: dict[str, Any] = {"process": {"binary": binary, "pod": POD}, "function_name": fn}
    if args is not None:
        body["args"] = args
    return {"process_kprobe": body}


def test_exec_with_node_and_with_pod() -> None:
    ev = {"process_exec": {"process": {"binary": "/usr/bin/curl", "arguments": "cilium.io"}}, "node_name": "my-node"}
    assert compact.render(ev) == "🚀 process my-node /usr/bin/curl cilium.io"
    ev["process_exec"]["process"]["pod"] = POD
    assert compact.render(ev) == "🚀 process kube-system/tetragon /usr/bin/curl cilium.io"


def test_events_without_process_print_nothing() -> None:
    assert compact.render({}) == ""
    assert compact.render({"process_exec": {}}) == ""
    assert compact.render({"process_exit": {}}) == ""
    assert compact.render({"process_kprobe": {"function_name": "unhandled_function"}}) == ""


def test_exit_with_status_and_with_signal() -> None:
    ev = {"process_exit": {"process": {"binary": "/usr/bin/curl", "arguments": "cilium.io", "pod": POD},
                           "status": 1}}
    assert compact.render(ev) == "💥 exit    kube-system/tetragon /usr/bin/curl cilium.io 1"
    ev["process_exit"]["signal"] = "SIGKILL"
    assert compact.render(ev) == "💥 exit    kube-system/tetragon /usr/bin/curl cilium.io SIGKILL"


def test_unknown_function() -> None:
    assert compact.render(kprobe("unhandled_function")) == \
        "❓ syscall kube-system/tetragon /usr/bin/curl unhandled_function"


@pytest.mark.parametrize(("fn", "args", "line"), [
    ("fd_install", None, "📬 open    kube-system/tetragon /usr/bin/curl "),
    ("fd_install", [None, {"file_arg": {"path": "/etc/password"}}],
     "📬 open    kube-system/tetragon /usr/bin/curl /etc/password"),
    ("__x64_sys_write", None, "📝 write   kube-system/tetragon /usr/bin/curl  "),
    ("__x64_sys_write", [{"file_arg": {"path": "/etc/password"}}, None, {"size_arg": "1234"}],
     "📝 write   kube-system/tetragon /usr/bin/curl /etc/password 1234 bytes"),
    ("__x64_sys_close", None, "📪 close   kube-system/tetragon /usr/bin/curl "),
    ("__x64_sys_close", [{"file_arg": {"path": "/etc/password"}}],
     "📪 close   kube-system/tetragon /usr/bin/curl /etc/password"),
])
def test_open_write_close(fn: str, args: list[Any] | None, line: str) -> None:
    assert compact.render(kprobe(fn, args)) == line


@pytest.mark.parametrize(("fn", "args", "line"), [
    ("bpf_check", None, "🐝 bpf_load kube-system/tetragon /usr/bin/bpftool "),
    ("bpf_check", [{"bpf_attr_arg": {"ProgType": "BPF_PROG_TYPE_KPROBE", "InsnCnt": 2048,
                                     "ProgName": "amazing-program"}}],
     "🐝 bpf_load kube-system/tetragon /usr/bin/bpftool BPF_PROG_TYPE_KPROBE amazing-program instruction count 2048"),
    ("security_perf_event_alloc", None, "🐝 perf_event_alloc kube-system/tetragon /usr/bin/bpftool "),
    ("security_perf_event_alloc", [{"perf_event_arg": {"KprobeFunc": "commit_creds", "Type": "PERF_TYPE_TRACEPOINT"}}],
     "🐝 perf_event_alloc kube-system/tetragon /usr/bin/bpftool PERF_TYPE_TRACEPOINT commit_creds"),
])
def test_bpf_load_and_perf_event(fn: str, args: list[Any] | None, line: str) -> None:
    assert compact.render(kprobe(fn, args, binary="/usr/bin/bpftool")) == line


@pytest.mark.parametrize("fn", ["security_bpf_map_alloc", "security_bpf_map_create"])
def test_bpf_map_alloc_and_create(fn: str) -> None:
    assert compact.render(kprobe(fn, binary="/usr/bin/bpftool")) == \
        "🗺 bpf_map_create kube-system/tetragon /usr/bin/bpftool "
    m = {"bpf_map_arg": {"MapType": "BPF_MAP_TYPE_HASH", "KeySize": 8, "ValueSize": 8, "MaxEntries": 1024,
                         "MapName": "amazing-map"}}
    assert compact.render(kprobe(fn, [m], binary="/usr/bin/bpftool")) == \
        "🗺 bpf_map_create kube-system/tetragon /usr/bin/bpftool BPF_MAP_TYPE_HASH amazing-map key size 8 " \
        "value size 8 max entries 1024"


def test_timestamps_go_layout() -> None:
    ev = {"process_exec": {"process": {"binary": "/usr/bin/curl", "arguments": "cilium.io", "pod": POD}},
          "time": "1970-01-01T00:00:00Z"}
    with_ts = compact.Compact(timestamps=True)
    assert with_ts.render(ev) == \
        "1970-01-01T00:00:00.000000000Z 🚀 process kube-system/tetragon /usr/bin/curl cilium.io"
    ev["time"] = "2026-12-04T13:00:01.5Z"
    assert with_ts.render(ev).startswith("2026-12-04T13:00:01.500000000Z 🚀")
    del ev["time"]  # Go formats a missing Timestamp as the epoch
    assert with_ts.render(ev).startswith("1970-01-01T00:00:00.000000000Z ")


def test_throttle_loader_uprobe_usdt_lsm() -> None:
    assert compact.render({"process_throttle": {"type": "THROTTLE_START", "cgroup": "/sys/fs/cgroup/x"}}) == \
        "🧬 throttle START /sys/fs/cgroup/x"
    assert compact.render({"process_throttle": {"type": "THROTTLE_STOP", "cgroup": "cg"}}) == "🧬 throttle STOP  cg"
    p = {"binary": "/usr/bin/test", "pod": {"namespace": "default", "name": "test"}}
    ld = {"process_loader": {"process": p, "path": "/lib/libc.so.6", "buildid": base64.b64encode(b"\x01\xab").decode()}}
    assert compact.render(ld) == "🧬 loader  default/test /usr/bin/test 01ab /lib/libc.so.6"
    del ld["process_loader"]["buildid"]
    assert compact.render(ld) == "🧬 loader  default/test /usr/bin/test /lib/libc.so.6"
    assert compact.render({"process_uprobe": {"process": p, "path": "/lib/test.so", "symbol": "fn"}}) == \
        "🕵️ uprobe  default/test /usr/bin/test /lib/test.so fn"
    assert compact.render({"process_usdt": {"process": p, "path": "/lib/t.so", "provider": "pv", "name": "nm"}}) == \
        "🕵️ usdt    default/test /usr/bin/test /lib/t.so pv nm"
    assert compact.render({"process_lsm": {"process": p, "function_name": "file_open"}}) == \
        "🔒 LSM     default/test /usr/bin/test file_open"
    assert compact.render({"rate_limit_info": {"number_of_dropped_process_events": "3"}}) == ""  # tetra: no line


# Tetragon's escaping cases: a string with a character that is not printable is quoted, escaped
HOSTILE = [
    ({"process_exec": {"process": {"binary": "/usr/bin/\x1b[31mmalicious\x1b[0m", "arguments": "normal-args",
                                   "pod": POD}}},
     '"/usr/bin/\\x1b[31mmalicious\\x1b[0m"', "\x1b"),
    ({"process_exec": {"process": {"binary": "/bin/sh", "arguments": "echo \x00null\rbyte",
                                   "pod": {"namespace": "default", "name": "pod"}}}},
     '"echo \\x00null\\rbyte"', "\r"),
    ({"process_exec": {"process": {"binary": "/usr/bin/test", "arguments": "args"}},
      "node_name": "host\nwith\nnewlines"},
     '"host\\nwith\\nnewlines"', "\n"),
    (kprobe("fd_install", [None, {"file_arg": {"path": "/tmp/file\nwith\nnewlines"}}]),
     '"/tmp/file\\nwith\\nnewlines"', "\n"),
    ({"process_throttle": {"type": "THROTTLE_START", "cgroup": "/sys/fs/cgroup\nmalicious"}},
     '"/sys/fs/cgroup\\nmalicious"', "\n"),
    ({"process_loader": {"process": {"binary": "/usr/bin/loader", "pod": POD}, "path": "/lib/evil\x1b[31m.so"}},
     '"/lib/evil\\x1b[31m.so"', "\x1b"),
    (kprobe("sys_openat", [None, {"string_arg": "/etc/bad\nfile"}]), '"/etc/bad\\nfile"', "\n"),
    (kprobe("__x64_sys_write", [{"file_arg": {"path": "/var/log/bad\rfile"}}]), '"/var/log/bad\\rfile"', "\r"),
    (kprobe("security_path_truncate", [{"path_arg": {"path": "/data/bad\nfile"}}]), '"/data/bad\\nfile"', "\n"),
    ({"process_uprobe": {"process": {"binary": "/usr/bin/test", "pod": POD}, "path": "/lib/\x1b[31mevil\x1b[0m.so",
                         "symbol": "function_name"}}, '"/lib/\\x1b[31mevil\\x1b[0m.so"', "\x1b"),
    ({"process_uprobe": {"process": {"binary": "/usr/bin/test", "pod": POD}, "path": "/lib/test.so",
                         "symbol": "func\nname"}}, '"func\\nname"', "\n"),
    ({"process_usdt": {"process": {"binary": "/usr/bin/test", "pod": POD}, "path": "/usr/lib/bad\x00path",
                       "provider": "provider", "name": "probe"}}, '"/usr/lib/bad\\x00path"', "\x00"),
    ({"process_usdt": {"process": {"binary": "/usr/bin/test", "pod": POD}, "path": "/usr/lib/test.so",
                       "provider": "prov\nider", "name": "probe"}}, '"prov\\nider"', "\n"),
    ({"process_usdt": {"process": {"binary": "/usr/bin/test", "pod": POD}, "path": "/usr/lib/test.so",
                       "provider": "provider", "name": "probe\tname"}}, '"probe\\tname"', "\t"),
]


@pytest.mark.parametrize(("ev", "quoted", "raw"), HOSTILE)
def test_hostile_strings_quoted_as_tetra(ev: dict[str, Any], quoted: str, raw: str) -> None:
    line = compact.render(ev)
    assert quoted in line
    assert raw not in line


def test_quoting_follows_go_strconv_quote() -> None:
    assert compact.esc("plain text /x") == "plain text /x"  # printable: as is, spaces and all
    assert compact.esc('a"b\\c\x07\x7f\u0085é\u2028') == '"a\\"b\\\\c\\a\\x7f\\u0085é\\u2028"'
    assert compact.esc("bad\udcff") == '"bad\\xff"'  # a byte that was not UTF-8


def test_capability_trailer_follows_tetras_rule() -> None:
    caps = [f"CAP_{i}" for i in range(41)]
    ev = {"process_exec": {"process": {"binary": "/bin/bash", "pod": POD, "cap": {"effective": caps}}}}
    head = "🚀 process kube-system/tetragon /bin/bash "
    line = compact.render(ev)
    # Go's "%s %*s": pad = 120 - bytes of the head, filled up to the trailer's runes
    assert line == head + " " + "🛑 CAP_SYS_ADMIN".rjust(120 - len(head.encode()))
    # tetra reads positions of the effective set: 21 entries (even with CAP_SYS_ADMIN) show no trailer
    ev["process_exec"]["process"]["cap"]["effective"] = ["CAP_SYS_ADMIN"] * 21
    assert compact.render(ev) == head


def test_colors_as_fatih_color() -> None:
    ev = {"process_exit": {"process": {"binary": "/bin/ls", "arguments": "-l"}, "status": 2}, "node_name": "n1"}
    line = compact.Compact(color=True).render(ev)
    body = ("\x1b[34m💥 exit   \x1b[0m \x1b[32mn1\x1b[0m \x1b[35m/bin/ls\x1b[0m \x1b[36m-l\x1b[0m \x1b[31m2\x1b[0m")
    # the colored empty trailer is not empty for Go: the line is padded to column 120
    empty = "\x1b[35m\x1b[0m"
    assert line == body + " " + empty.rjust(120 - len(body.encode()))
    assert compact.color_enabled("always") and not compact.color_enabled("never")


def tracepoint(subsys: str, event: str, args: list[Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"process": {"binary": "/usr/bin/curl", "pod": POD}, "subsys": subsys, "event": event}
    if args is not None:
        body["args"] = args
    return {"process_tracepoint": body}


SYSCALL = "☎  syscall kube-system/tetragon /usr/bin/curl "


@pytest.mark.parametrize(("args", "shown"), [
    # the syscall's arguments from the table; values only where the next arguments are size_args
    ([{"long_arg": "1"}], "write(unsigned int fd=?, const char * buf=?, size_t count=?)"),
    ([{"long_arg": "1"}, {"size_arg": "2"}, {"size_arg": "140726189559808"}, {"size_arg": "12"}],
     "write(unsigned int fd=2, const char *buf=0x7ffd5e8a1000, size_t count=12)"),
    ([{"long_arg": "59"}, {"int_arg": 3}],  # not a size_arg: '?'
     "execve(const char * filename=?, const char *const * argv=?, const char *const * envp=?)"),
    ([{"long_arg": "175"}, {"size_arg": "18446744073709551615"}],
     "init_module(void *umod=0xffffffffffffffff, unsigned long len=?, const char * uargs=?)"),
    # another ABI: the name prefixed, no arguments (as tetra: it looks them up by the prefixed name)
    ([{"syscall_id": {"id": 4, "abi": "i386"}}], "i386/write"),
    ([{"syscall_id": {"id": 1, "abi": "x64"}}], "write(unsigned int fd=?, const char * buf=?, size_t count=?)"),
    ([{"syscall_id": {"id": 1}}], "unknown"),  # no ABI
    ([{"syscall_id": {"id": 451, "abi": "i386"}}], "i386/cachestat"),
    ([{"syscall_id": {"id": 452, "abi": "i386"}}], "unknown"),  # i386's entry count is 452
    # numbers tetra does not name: none, negative, past the table -- and, as tetra, 424 and up
    # (tetra compares the number with the table's entry count, 374)
    (None, "unknown"),
    ([{"long_arg": "-1"}], "unknown"),
    ([{"long_arg": "335"}], "unknown"),
    ([{"long_arg": "435"}], "unknown"),
    ([{"string_arg": "1"}], "unknown"),
])
def test_raw_syscalls_sys_enter(args: list[Any] | None, shown: str) -> None:
    assert compact.render(tracepoint("raw_syscalls", "sys_enter", args)) == SYSCALL + shown


def test_other_tracepoints_show_subsystem_and_event() -> None:
    assert compact.render(tracepoint("raw_syscalls", "sys_exit", [{"long_arg": "1"}])) == \
        "⁉️ tracepoint kube-system/tetragon /usr/bin/curl raw_syscalls sys_exit"
    assert compact.render(tracepoint("sched", "sched_process_fork")) == \
        "⁉️ tracepoint kube-system/tetragon /usr/bin/curl sched sched_process_fork"


def test_syscall_table_covers_tetras_names() -> None:
    """Every x86-64 number 0-334 and 424-462 is named (tetra's table has exactly these, 374), and
    the common syscalls have their arguments."""
    table = compact._syscalls()
    assert sorted(int(n) for n in table["x64"]) == [*range(335), *range(424, 463)]
    assert (table["x64"]["257"], table["x64"]["321"], table["x64"]["462"]) == ("openat", "bpf", "mseal")
    assert table["i386"]["11"] == "execve" and table["i386"]["102"] == "socketcall"
    for name in ("read", "write", "openat", "connect", "execve", "bpf", "ptrace", "init_module", "mmap"):
        assert table["args"][name], name


def test_stack_traces_under_the_line() -> None:
    """tetra's --stack-traces: the kernel stack (address: symbol+offset), then the user stack
    (address: symbol (module+offset), the symbol left out where unknown)."""
    ev = kprobe("unhandled_function")
    ev["process_kprobe"]["kernel_stack_trace"] = [{"address": "18446744071579845236", "offset": "132",
                                                   "symbol": "do_sys_openat2"}]
    ev["process_kprobe"]["user_stack_trace"] = [{"address": "140234", "offset": "4096", "module": "/lib/libc.so.6",
                                                 "symbol": "open64"}, {"address": "4198400", "offset": "16",
                                                                       "module": "/usr/bin/curl"}]
    view = compact.Compact(stack_traces=True)
    assert view.output(ev) == ("❓ syscall kube-system/tetragon /usr/bin/curl unhandled_function\n"
                               "Kernel:\n   0xffffffff810f4274: do_sys_openat2+0x84\n"
                               "User:\n   0x223ca: open64 (/lib/libc.so.6+0x1000)\n   0x401000: (/usr/bin/curl+0x10)\n")
    assert compact.Compact().output(ev) == "❓ syscall kube-system/tetragon /usr/bin/curl unhandled_function\n"
    colored = compact.Compact(color=True, stack_traces=True).output(ev).split("\n")
    # as fatih/color writes it: the reset after the text, newline included
    assert colored[2:4] == ["\x1b[32m   0xffffffff810f4274:\x1b[0m\x1b[34m do_sys_openat2\x1b[0m+\x1b[33m0x84",
                            "\x1b[0mUser:"]


@pytest.mark.parametrize(("fn", "arg", "shown"), [
    ("bprm_check_security", {"linux_binprm_arg": {"path": "/usr/bin/curl"}}, "   /usr/bin/curl sha256:ab12"),
    ("file_open", {"file_arg": {"path": "/etc/shadow"}}, "   /etc/shadow sha256:ab12"),
    ("file_open", {"linux_binprm_arg": {"path": "/etc/shadow"}}, None),  # the other argument kind: no path
    ("task_alloc", {"file_arg": {"path": "/etc/shadow"}}, None),  # not a hook tetra takes a path of
])
def test_ima_hash_under_lsm_lines(fn: str, arg: dict[str, Any], shown: str | None) -> None:
    ev = {"process_lsm": {"process": {"binary": "/usr/bin/curl", "pod": POD}, "function_name": fn,
                          "args": [arg], "ima_hash": "sha256:ab12"}}
    line = f"🔒 LSM     kube-system/tetragon /usr/bin/curl {fn}"
    assert compact.Compact(ima_hash=True).output(ev) == (f"{line}\n{shown}\n" if shown else f"{line}\n")
    assert compact.render(ev) == line
