"""Starting on every common kernel: version-dependent fields chosen from BTF and tracepoint
formats, the kernel config from /proc/config.gz or /boot/config-<release> (or none), and a
collector that cannot start says why in one line and exits 78 (EX_CONFIG: do not retry)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO

from collector import kernel_headers, kernel_variants, sensors
from collector.sensors import udp
from tetrapipe.config import Config

KERNFS_OLD = """struct kernfs_node {
\tatomic_t count;
\tatomic_t active;
\tstruct kernfs_node *parent;
\tconst char *name;
\tunion {
\t\tstruct kernfs_elem_dir dir;
\t};
};
"""
KERNFS_NEW = KERNFS_OLD.replace("*parent;", "*__parent;")
EXIT_FORMAT_OLD = """name: sched_process_exit
ID: 301
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
"""
EXIT_FORMAT_NEW = EXIT_FORMAT_OLD + "\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n"


def _tree(tmp: Path, vmlinux_h: str, exit_format: str) -> tuple[Path, Path]:
    (tmp / "tree" / "include").mkdir(parents=True)
    (tmp / "tree" / "include" / "vmlinux.h").write_text("struct other {\n\tint parent;\n};\n" + vmlinux_h)
    fmt = tmp / "tracing" / "events" / "sched" / "sched_process_exit"
    fmt.mkdir(parents=True)
    (fmt / "format").write_text(exit_format)
    return tmp / "tree", tmp / "tracing"


def test_variants_of_older_kernels(tmp_path: Path) -> None:
    tree, tracefs = _tree(tmp_path, KERNFS_OLD, EXIT_FORMAT_OLD)
    assert kernel_variants.defines(tree, tracefs) == {"TP_KERNFS_PARENT": "parent", "TP_HAVE_EXIT_GROUP_DEAD": "0"}


def test_variants_of_newer_kernels(tmp_path: Path) -> None:
    tree, tracefs = _tree(tmp_path, KERNFS_NEW, EXIT_FORMAT_NEW)
    assert kernel_variants.defines(tree, tracefs) == {"TP_KERNFS_PARENT": "__parent", "TP_HAVE_EXIT_GROUP_DEAD": "1"}


def test_struct_members_top_level_only() -> None:
    assert kernel_variants.struct_members(KERNFS_OLD, "kernfs_node") == {"count", "active", "parent", "name"}
    assert kernel_variants.struct_members(KERNFS_OLD, "absent") == set()


def test_this_kernel_variants_match_its_btf() -> None:
    if not Path("/sys/kernel/btf/vmlinux").is_file():
        pytest.skip("no BTF on this host: nothing to compare with")  # not a kernel test: no BPF loads
    fields = kernel_variants.tracepoint_fields("sched", "sched_process_exit")
    if not fields:
        pytest.skip("tracefs not readable here")
    assert {"pid", "comm"} <= fields


def test_config_from_proc_then_boot_then_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc_gz, boot = tmp_path / "config.gz", tmp_path / "boot"
    boot.mkdir()
    monkeypatch.setattr(kernel_headers, "CONFIG_GZ", proc_gz)
    monkeypatch.setattr(kernel_headers, "BOOT_DIR", boot)
    assert kernel_headers._kernel_config("6.1.0-57-amd64") == ("", "none")
    (boot / "config-6.1.0-57-amd64").write_text("CONFIG_BPF=y\n")
    assert kernel_headers._kernel_config("6.1.0-57-amd64") == ("CONFIG_BPF=y\n", str(boot / "config-6.1.0-57-amd64"))
    assert "#define CONFIG_BPF 1" in kernel_headers.autoconf_h(*kernel_headers._kernel_config("6.1.0-57-amd64"))
    proc_gz.write_bytes(gzip.compress(b"CONFIG_BPF_LSM=y\n"))
    assert kernel_headers._kernel_config("6.1.0-57-amd64") == ("CONFIG_BPF_LSM=y\n", str(proc_gz))


def test_sensor_without_its_tracepoint_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = Config(enable_udp_events=True)
    (tmp_path / "events" / "sock" / "sock_send_length").mkdir(parents=True)
    assert [s.name for s in sensors.enabled(cfg, tmp_path) if s.source == udp.SOURCE] == ["udp"]
    (tmp_path / "events" / "sock" / "sock_send_length").rmdir()
    assert [s.name for s in sensors.enabled(cfg, tmp_path) if s.source == udp.SOURCE] == []
    assert "sensor udp not loaded: this kernel has no tracepoint sock:sock_send_length" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="tetrapipe collector refuses to start without root first")
def test_collector_without_btf_exits_78_with_one_line(tmp_path: Path) -> None:
    """A kernel without BTF: the collector says why in one line and exits 78 (no retry)."""
    code = (
        "import sys; from pathlib import Path; from collector import kernel_headers as k; "
        f"k.BTF_PATH = Path({str(tmp_path / 'no-btf')!r}); "
        "from tetrapipe.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "collector", "--metrics-address", "", "--kafka", "127.0.0.1:1",
         "--cache-dir", str(tmp_path / "cache"), "--state-dir", str(tmp_path / "state")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("TETRAPIPE_")} | {"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 78, proc
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tetrapipe collector: cannot start: no kernel include tree for bcc: no BTF at "), proc.stderr
    assert "CONFIG_DEBUG_INFO_BTF=y" in last
    assert "Traceback" not in proc.stderr
