"""Kernel include tree for bcc, built from the running kernel's BTF.

bcc compiles programs against kernel headers found in ``BCC_KERNEL_SOURCE``
(else ``/lib/modules/$(uname -r)/build``).  Hosts without headers still have
BTF, so we synthesise a tree bcc accepts:

* ``include/vmlinux.h``: ``bpftool btf dump file /sys/kernel/btf/vmlinux format c``
  with the definitions that clash with bcc's built-in uapi ``bpf.h`` renamed to
  ``NAME___vmlinux`` (struct/union/enum tags found in both, plus every
  enumerator of a clashing enum and any other enumerator defined in both).
  The clash set is computed by parsing the ``bpf.h`` text embedded in libbcc,
  so it follows whatever bcc version is installed.  Two layout fixes keep the
  offsets bcc's code generator uses equal to BTF's (checked for all ~57k
  non-bitfield members of named structs): a ``T: 0;`` after each ``long: 64;``
  padding bitfield (see split_bitfield_runs) and ``mode(..)`` on 1-byte enums.
* ``include/linux/types.h`` pulls in vmlinux.h (bcc's ``bpf.h`` includes it
  first) plus ``tetrapipe/kernel_macros.h``: the ``#define`` constants that BTF
  cannot carry (PAGE_SIZE, PF_KTHREAD, AF_*, errno, S_IF*).
* ``include/generated/autoconf.h`` from /proc/config.gz or /boot/config-<release> (empty
  when neither exists: our programs test no CONFIG_ option), ``linux/kconfig.h``
  (force-included by bcc), ``linux/version.h`` from ``uname -r``, the other
  headers bcc's ``helpers.h`` includes (``linux/log2.h``, ``asm/page.h``,
  ``uapi/linux/if_packet.h``, ``linux/bpf_common.h``) and stubs for headers bcc
  programs commonly include (``linux/sched.h``, ``net/sock.h``...).

Member access chains such as ``task->real_parent->tgid`` work because bcc
rewrites them into ``bpf_probe_read_kernel`` calls; offsets are exact since the
types come from this kernel's BTF, so CO-RE (preserve_access_index) is off.

Trees are cached per kernel in ``<cache>/<release>-<sha256(btf)[:16]>-<sha256(stamp)[:8]>`` (3 MB),
written to a temp dir and renamed into place; a stamp file also records the
tree format and bcc's bpf.h, so a bcc upgrade rebuilds it.  Measured on Linux
6.18 / bcc 0.26 / 2 vCPU: cold generation 1.3-1.7 s (bpftool dumps ~0.7 s),
warm reuse ~8 ms, bcc compile+load of a small tracepoint program ~1.4 s
(1.15 s of it parsing vmlinux.h, paid by every BPF() call).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

DEFAULT_CACHE_DIR = Path("/var/cache/tetrapipe/kernel-headers")
BTF_PATH = Path("/sys/kernel/btf/vmlinux")
CONFIG_GZ = Path("/proc/config.gz")
BOOT_DIR = Path("/boot")
TRACEFS = Path("/sys/kernel/tracing")
TREE_FORMAT = "3"  # bump when the generated files change
_STAMP = ".tetrapipe-tree"
_LIBBCC_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
)


class KernelHeadersError(RuntimeError):
    """The kernel include tree cannot be provided."""


@dataclass(frozen=True)
class KernelTree:
    path: Path
    release: str
    btf_sha: str
    generated: bool  # False when reused from the cache


# --------------------------------------------------------------------------
# inputs


def _btf_sha() -> str:
    try:
        return hashlib.sha256(BTF_PATH.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        raise KernelHeadersError(
            f"kernel BTF not readable at {BTF_PATH} ({exc}); the kernel needs "
            "CONFIG_DEBUG_INFO_BTF=y, or install headers in /lib/modules/$(uname -r)/build"
        ) from exc


def _bpftool() -> str:
    found = shutil.which("bpftool") or next(
        (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool", "/usr/local/sbin/bpftool") if os.access(p, os.X_OK)),
        None,
    )
    if not found:
        raise KernelHeadersError("bpftool not found (Debian: apt-get install bpftool)")
    return found


def _dump_btf() -> tuple[str, str]:
    """(``format c`` dump, raw dump); the raw one carries enum sizes the C dump drops."""
    base = [_bpftool(), "btf", "dump", "file", str(BTF_PATH)]
    with ThreadPoolExecutor(2) as pool:
        procs = list(
            pool.map(
                partial(subprocess.run, capture_output=True, text=True, check=False), ([*base, "format", "c"], base)
            )
        )
    for proc in procs:
        if proc.returncode != 0 or not proc.stdout:
            raise KernelHeadersError(f"{' '.join(proc.args)} failed: {proc.stderr.strip()[:500]}")
    if "struct task_struct {" not in procs[0].stdout:
        raise KernelHeadersError("bpftool's vmlinux.h dump has no struct task_struct")
    return procs[0].stdout, procs[1].stdout


def _libbcc_path() -> Path:
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for d in (*dirs, *_LIBBCC_DIRS):
        for name in ("libbcc.so.0", "libbcc.so"):
            if (Path(d) / name).is_file():
                return Path(d) / name
    raise KernelHeadersError(
        "libbcc.so not found (Debian: apt-get install python3-bpfcc); it is needed "
        "to learn which types clash with bcc's built-in bpf.h"
    )


def _bcc_builtin_bpf_h() -> str:
    """The uapi bpf.h that bcc embeds and force-includes (/virtual/include/bcc/bpf.h)."""
    lib = _libbcc_path()
    data = lib.read_bytes()
    end_marker = b"#endif /* _UAPI__LINUX_BPF_H__ */"
    start = data.find(b"#ifndef _UAPI__LINUX_BPF_H__")
    end = data.find(end_marker, start)
    if start < 0 or end < 0:
        raise KernelHeadersError(f"bcc's built-in bpf.h not found inside {lib}")
    return data[start : end + len(end_marker)].decode("utf-8", "replace")


def boot_config_path(release: str) -> Path:
    return BOOT_DIR / f"config-{release}"


def _kernel_config(release: str) -> tuple[str, str]:
    """(kernel config text, where it came from): /proc/config.gz (CONFIG_IKCONFIG_PROC), else
    /boot/config-<release> (Debian, Ubuntu, RHEL), else none: the tree then has an empty
    autoconf.h, which our programs do without (they test no CONFIG_ option)."""
    try:
        return gzip.decompress(CONFIG_GZ.read_bytes()).decode(), str(CONFIG_GZ)
    except OSError:
        pass
    boot = boot_config_path(release)
    try:
        return boot.read_text(), str(boot)
    except OSError:
        return "", "none"


# --------------------------------------------------------------------------
# generators

_TAG_DEF = re.compile(r"\b(?:struct|union|enum)\s+(\w+)\s*\{")
_ENUM_BODY = re.compile(r"\benum\s*(\w*)\s*\{([^}]*)\}")
_ENUMERATOR = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:=|$)")


def _enumerators(body: str) -> list[str]:
    return [m.group(1) for item in body.split(",") if (m := _ENUMERATOR.match(item))]


def clashing_names(vmlinux_h: str, bcc_bpf_h: str) -> tuple[set[str], set[str]]:
    """(tags, enumerators) defined by both vmlinux.h and bcc's bpf.h.

    Enumerators of a clashing enum are all included: bcc builds some enums with
    macros (``enum bpf_func_id`` via ``___BPF_FUNC_MAPPER``), so their names are
    not literally in its text.
    """
    bcc_text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", bcc_bpf_h, flags=re.S)
    tags = set(_TAG_DEF.findall(vmlinux_h)) & set(_TAG_DEF.findall(bcc_text))
    bcc_enumerators = {n for _, body in _ENUM_BODY.findall(bcc_text) for n in _enumerators(body)}
    enumerators: set[str] = set()
    for tag, body in _ENUM_BODY.findall(vmlinux_h):
        names = _enumerators(body)
        enumerators.update(names if tag in tags else bcc_enumerators.intersection(names))
    return tags, enumerators


_TAG_USE = re.compile(r"\b((?:struct|union|enum)\s+)(\w+)\b")
_ENUMERATOR_DEF = re.compile(r"^(\t+)(\w+)(?= = |,$|$)", re.M)


def rename_clashes(vmlinux_h: str, tags: set[str], enumerators: set[str]) -> str:
    """Rename clashing tags (every use) and enumerators (definitions) to NAME___vmlinux."""
    vmlinux_h = _TAG_USE.sub(lambda m: f"{m[1]}{m[2]}___vmlinux" if m[2] in tags else m[0], vmlinux_h)
    return _ENUMERATOR_DEF.sub(lambda m: f"{m[1]}{m[2]}___vmlinux" if m[2] in enumerators else m[0], vmlinux_h)


_RAW_ENUM = re.compile(r"^\[\d+\] ENUM(?:64)? '(\w+)' encoding=\w+ size=(\d+) ", re.M)
_MODES = {1: "QI", 2: "HI", 4: "SI", 8: "DI"}


def fix_enum_sizes(vmlinux_h: str, raw_btf: str) -> str:
    """Give named enums whose BTF size is not 4 (e.g. 1-byte ``enum rw_hint`` in
    ``struct inode``) an explicit ``__attribute__((mode(..)))``: bpftool 7.1 omits
    it and clang would lay them out as 4-byte ints, shifting later fields."""
    sizes = {name: int(size) for name, size in _RAW_ENUM.findall(raw_btf) if size != "4"}
    if not sizes:
        return vmlinux_h
    enum_re = re.compile(r"^(enum (" + "|".join(sorted(sizes)) + r") \{\n[^}]*\})(;)$", re.M)
    return enum_re.sub(lambda m: f"{m[1]} __attribute__((mode({_MODES[sizes[m[2]]]}))){m[3]}", vmlinux_h)


_FULL_WIDTH_PAD = re.compile(r"^(\s+)(long: 64|int: 32|short: 16|char: 8);$", re.M)


def split_bitfield_runs(vmlinux_h: str) -> str:
    """Put ``T: 0;`` after each full-width padding bitfield ``T: bits(T);``.

    bpftool pads gaps with runs like ``long: 64; long: 64; ...``.  clang merges a
    run of bitfields into one iN storage unit (i448 for 7 longs); bcc parses for
    x86_64 but generates code with the BPF data layout, where iN > 64 bits is
    16-byte aligned, so every later field is misplaced (bcc issue #4890:
    ``mm->arg_start`` read 16 bytes too far).  A zero-width bitfield ends the
    run; after a full-width one the offset is already aligned, so the layout
    is unchanged.
    """
    return _FULL_WIDTH_PAD.sub(lambda m: f"{m[0]}\n{m[1]}{m[2].split(':')[0]}: 0;", vmlinux_h)


def autoconf_h(config: str, source: str = "/proc/config.gz") -> str:
    lines = [f"/* generated from {source} */", "#ifndef __TETRAPIPE_AUTOCONF_H", "#define __TETRAPIPE_AUTOCONF_H"]
    for line in config.splitlines():
        name, sep, value = line.partition("=")
        if not sep or not name.startswith("CONFIG_"):
            continue
        if value == "y":
            lines.append(f"#define {name} 1")
        elif value == "m":
            lines.append(f"#define {name}_MODULE 1")
        elif value != "n":
            lines.append(f"#define {name} {value}")
    lines.append("#endif")
    return "\n".join(lines) + "\n"


def version_h(release: str) -> str:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        raise KernelHeadersError(f"cannot parse kernel release {release!r}")
    a, b, c = (int(x or 0) for x in m.groups())
    code = (a << 16) + (b << 8) + min(c, 255)
    return (
        f"/* generated from uname -r = {release} */\n"
        f"#define LINUX_VERSION_CODE {code}\n"
        "#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n"
        f"#define LINUX_VERSION_MAJOR {a}\n#define LINUX_VERSION_PATCHLEVEL {b}\n"
        f"#define LINUX_VERSION_SUBLEVEL {c}\n"
    )


_KCONFIG_H = """\
#ifndef __TETRAPIPE_KCONFIG_H
#define __TETRAPIPE_KCONFIG_H
#include <generated/autoconf.h>
#define __ARG_PLACEHOLDER_1 0,
#define __take_second_arg(__ignored, val, ...) val
#define __is_defined(x) ___is_defined(x)
#define ___is_defined(val) ____is_defined(__ARG_PLACEHOLDER_##val)
#define ____is_defined(arg1_or_junk) __take_second_arg(arg1_or_junk 1, 0)
#define IS_BUILTIN(option) __is_defined(option)
#define IS_MODULE(option) __is_defined(option##_MODULE)
#define IS_ENABLED(option) (IS_BUILTIN(option) || IS_MODULE(option))
#define IS_REACHABLE(option) IS_ENABLED(option)
#endif
"""

_TYPES_H = """\
#ifndef __TETRAPIPE_LINUX_TYPES_H
#define __TETRAPIPE_LINUX_TYPES_H
/* Types come from this kernel's BTF, so offsets are exact: no CO-RE needed. */
#ifndef BPF_NO_PRESERVE_ACCESS_INDEX
#define BPF_NO_PRESERVE_ACCESS_INDEX
#endif
#include <vmlinux.h>
#define __aligned_u64 __u64 __attribute__((aligned(8)))
#define __aligned_be64 __be64 __attribute__((aligned(8)))
#define __aligned_le64 __le64 __attribute__((aligned(8)))
#define __bitwise
#define __force
#define __user
#define __rcu
#include <tetrapipe/kernel_macros.h>
#endif
"""

_PAGE_H = """\
#ifndef __TETRAPIPE_ASM_PAGE_H
#define __TETRAPIPE_ASM_PAGE_H
#include <tetrapipe/kernel_macros.h>
#endif
"""

_LOG2_H = """\
#ifndef __TETRAPIPE_LOG2_H
#define __TETRAPIPE_LOG2_H
#define is_power_of_2(n) ((n) != 0 && (((n) & ((n) - 1)) == 0))
/* constant-foldable: bcc's BPF_STACK_TRACE sizes its map with roundup_pow_of_two() */
#define ilog2(n) ((int)(63 - __builtin_clzll((unsigned long long)(n))))
#define roundup_pow_of_two(n) ((n) <= 1 ? 1UL : 1UL << (ilog2((n) - 1) + 1))
#define rounddown_pow_of_two(n) (1UL << ilog2(n))
#define order_base_2(n) ((n) > 1 ? ilog2((n) - 1) + 1 : 0)
#endif
"""

_BPF_COMMON_H = """\
#ifndef _UAPI__LINUX_BPF_COMMON_H__
#define _UAPI__LINUX_BPF_COMMON_H__
#define BPF_CLASS(code) ((code) & 0x07)
#define BPF_LD 0x00
#define BPF_LDX 0x01
#define BPF_ST 0x02
#define BPF_STX 0x03
#define BPF_ALU 0x04
#define BPF_JMP 0x05
#define BPF_RET 0x06
#define BPF_MISC 0x07
#define BPF_SIZE(code) ((code) & 0x18)
#define BPF_W 0x00
#define BPF_H 0x08
#define BPF_B 0x10
#define BPF_MODE(code) ((code) & 0xe0)
#define BPF_IMM 0x00
#define BPF_ABS 0x20
#define BPF_IND 0x40
#define BPF_MEM 0x60
#define BPF_LEN 0x80
#define BPF_MSH 0xa0
#define BPF_OP(code) ((code) & 0xf0)
#define BPF_ADD 0x00
#define BPF_SUB 0x10
#define BPF_MUL 0x20
#define BPF_DIV 0x30
#define BPF_OR 0x40
#define BPF_AND 0x50
#define BPF_LSH 0x60
#define BPF_RSH 0x70
#define BPF_NEG 0x80
#define BPF_MOD 0x90
#define BPF_XOR 0xa0
#define BPF_JA 0x00
#define BPF_JEQ 0x10
#define BPF_JGT 0x20
#define BPF_JGE 0x30
#define BPF_JSET 0x40
#define BPF_SRC(code) ((code) & 0x08)
#define BPF_K 0x00
#define BPF_X 0x08
#ifndef BPF_MAXINSNS
#define BPF_MAXINSNS 4096
#endif
#endif
"""


def kernel_macros_h(page_size: int) -> str:
    """#define constants that BTF cannot carry (x86-64/generic values)."""
    shift = page_size.bit_length() - 1
    defs = {
        "PAGE_SHIFT": str(shift),
        "PAGE_SIZE": f"(1UL << {shift})",
        "PAGE_MASK": "(~(PAGE_SIZE - 1))",
        "PF_EXITING": "0x00000004",
        "PF_KTHREAD": "0x00200000",
        "AF_UNIX": "1",
        "AF_INET": "2",
        "AF_INET6": "10",
        "AF_NETLINK": "16",
        "AF_PACKET": "17",
        "S_IFMT": "00170000",
        "S_IFSOCK": "0140000",
        "S_IFLNK": "0120000",
        "S_IFREG": "0100000",
        "S_IFBLK": "0060000",
        "S_IFDIR": "0040000",
        "S_IFCHR": "0020000",
        "S_IFIFO": "0010000",
        "S_ISUID": "0004000",
        "S_ISGID": "0002000",
        "MINORBITS": "20",
        "MINORMASK": "((1U << MINORBITS) - 1)",
        "MAJOR(dev)": "((unsigned int)((dev) >> MINORBITS))",
        "MINOR(dev)": "((unsigned int)((dev) & MINORMASK))",
        "NULL": "((void *)0)",
        "offsetof(type, member)": "__builtin_offsetof(type, member)",
        "container_of(ptr, type, member)": "((type *)((char *)(ptr) - offsetof(type, member)))",
        "ARRAY_SIZE(arr)": "(sizeof(arr) / sizeof((arr)[0]))",
        "likely(x)": "__builtin_expect(!!(x), 1)",
        "unlikely(x)": "__builtin_expect(!!(x), 0)",
        "__always_inline": "inline __attribute__((always_inline))",
    }
    errnos = (
        "EPERM ENOENT ESRCH EINTR EIO ENXIO E2BIG ENOEXEC EBADF ECHILD EAGAIN "
        "ENOMEM EACCES EFAULT ENOTBLK EBUSY EEXIST EXDEV ENODEV ENOTDIR EISDIR "
        "EINVAL ENFILE EMFILE ENOTTY ETXTBSY EFBIG ENOSPC ESPIPE EROFS EMLINK EPIPE"
    )
    defs.update({name: str(i) for i, name in enumerate(errnos.split(), start=1)})
    body = "\n".join(f"#ifndef {k.split('(')[0]}\n#define {k} {v}\n#endif" for k, v in defs.items())
    return f"#ifndef __TETRAPIPE_KERNEL_MACROS_H\n#define __TETRAPIPE_KERNEL_MACROS_H\n{body}\n#endif\n"


# Headers bcc programs commonly include; every type is already in vmlinux.h.
_STUB_HEADERS = [
    "linux/sched.h",
    "linux/fs.h",
    "linux/fs_struct.h",
    "linux/dcache.h",
    "linux/path.h",
    "linux/mount.h",
    "linux/cred.h",
    "linux/mm_types.h",
    "linux/nsproxy.h",
    "linux/pid_namespace.h",
    "linux/pid.h",
    "linux/utsname.h",
    "linux/cgroup.h",
    "linux/kernel.h",
    "linux/errno.h",
    "linux/string.h",
    "linux/ptrace.h",
    "linux/binfmts.h",
    "linux/file.h",
    "linux/stat.h",
    "linux/bpf.h",
    "linux/socket.h",
    "linux/in.h",
    "linux/in6.h",
    "linux/ip.h",
    "linux/ipv6.h",
    "linux/tcp.h",
    "linux/udp.h",
    "linux/skbuff.h",
    "linux/netdevice.h",
    "linux/if_ether.h",
    "linux/blkdev.h",
    "linux/security.h",
    "net/sock.h",
    "net/inet_sock.h",
    "net/net_namespace.h",
    "uapi/linux/ptrace.h",
    "uapi/linux/if_ether.h",
    "uapi/linux/if_packet.h",
    "uapi/linux/in.h",
    "uapi/linux/in6.h",
    "uapi/linux/bpf.h",
    "uapi/linux/ip.h",
    "uapi/linux/tcp.h",
    "uapi/linux/udp.h",
    "uapi/linux/limits.h",
]


def _tree_files(vmlinux_h: str, config: tuple[str, str], release: str) -> dict[str, str]:
    files = {
        "include/vmlinux.h": vmlinux_h,
        "include/generated/autoconf.h": autoconf_h(*config),
        "include/linux/kconfig.h": _KCONFIG_H,
        "include/linux/version.h": version_h(release),
        "include/generated/uapi/linux/version.h": version_h(release),
        "include/linux/types.h": _TYPES_H,
        "include/linux/log2.h": _LOG2_H,
        "include/linux/bpf_common.h": _BPF_COMMON_H,
        "include/tetrapipe/kernel_macros.h": kernel_macros_h(os.sysconf("SC_PAGE_SIZE")),
        "include/asm/page.h": _PAGE_H,  # arch-neutral: bcc also passes -Iinclude
    }
    for name in _STUB_HEADERS:
        files.setdefault(f"include/{name}", "#pragma once\n#include <linux/types.h>\n")
    return files


# --------------------------------------------------------------------------
# cache


def _stamp(bcc_bpf_h: str) -> str:
    return f"format={TREE_FORMAT} bcc_bpf_h={hashlib.sha256(bcc_bpf_h.encode()).hexdigest()[:16]}\n"


def _read_stamp(path: Path) -> str | None:
    try:
        return (path / _STAMP).read_text()
    except OSError:
        return None


def kernel_include_tree(cache_dir: Path | None = None) -> KernelTree:
    """Build (or reuse from cache) the BTF-derived include tree for this kernel."""
    release = os.uname().release
    btf_sha = _btf_sha()
    bcc_bpf_h = _bcc_builtin_bpf_h()
    stamp = _stamp(bcc_bpf_h)
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    # the stamp (tree format + bcc's bpf.h) is part of the name: two tetrapipe versions on one
    # machine keep separate trees instead of replacing the other's while it compiles from it
    final = root / f"{release}-{btf_sha}-{hashlib.sha256(stamp.encode()).hexdigest()[:8]}"
    if _read_stamp(final) == stamp:
        return KernelTree(final, release, btf_sha, generated=False)

    vmlinux_h, raw_btf = _dump_btf()
    tags, enumerators = clashing_names(vmlinux_h, bcc_bpf_h)
    vmlinux_h = fix_enum_sizes(vmlinux_h, raw_btf)
    vmlinux_h = split_bitfield_runs(rename_clashes(vmlinux_h, tags, enumerators))
    files = _tree_files(vmlinux_h, _kernel_config(release), release)

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        for rel, text in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        (tmp / "clashing-names.txt").write_text(
            "".join(f"tag {n}\n" for n in sorted(tags)) + "".join(f"enumerator {n}\n" for n in sorted(enumerators))
        )
        (tmp / _STAMP).write_text(stamp)
        tmp.chmod(0o755)
        if _read_stamp(final) == stamp:  # a concurrent builder finished first
            return KernelTree(final, release, btf_sha, generated=False)
        if final.exists():  # stale tree (older format or another bcc): move it aside
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=root))
            final.rename(old / "tree")
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:  # lost the race between the check above and the rename
            if _read_stamp(final) != stamp:
                raise
            return KernelTree(final, release, btf_sha, generated=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return KernelTree(final, release, btf_sha, generated=True)


def prepare_bcc_environment(cache_dir: Path | None = None) -> KernelTree:
    """Point bcc at the BTF-generated include tree of the running kernel.

    Our programs use kernel-internal types (``struct mount``, whole ``task_struct``, ``cred``)
    that only BTF describes completely: installed headers (Debian's split ``-amd64``/``-common``
    packages, or a full tree) do not declare them, so they are never used in place of BTF, and
    never from /usr/src/linux-headers-* of another version (wrong struct offsets).
    """
    if not BTF_PATH.is_file():
        raise KernelHeadersError(
            f"no BTF at {BTF_PATH}: tetrapipe's kernel programs read kernel-internal types that "
            "only BTF describes; this kernel needs CONFIG_DEBUG_INFO_BTF=y (kernel headers are not enough)"
        )
    tree = kernel_include_tree(cache_dir)
    os.environ["BCC_KERNEL_SOURCE"] = str(tree.path)
    return tree


def ensure_tracefs() -> Path:
    """Mount tracefs at /sys/kernel/tracing if needed (bcc reads tracepoint formats there)."""
    if not (TRACEFS / "events").is_dir():
        proc = subprocess.run(
            ["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0 or not (TRACEFS / "events").is_dir():
            raise KernelHeadersError(f"cannot mount tracefs at {TRACEFS}: {proc.stderr.strip()}")
    return TRACEFS
