"""Every program the collector loads compiles and loads in this stock kernel (the version-
dependent fields resolved by collector/kernel_variants.py), with the include tree generated from
BTF and the config from /boot/config-<release>. One compile per program."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collector import loader, sensors
from tetrapipe.config import Config

ALL_SENSORS = Config(enable_network_events=True, enable_loader_events=True, enable_udp_events=True)


@pytest.fixture(scope="module")
def tree() -> Path:
    t = loader.prepare()  # the default cache (/var/cache/tetrapipe, on the guest's tmpfs)
    return t.path


def _load(name: str, text: str | None = None) -> None:
    bpf = loader.load_program(name, {"TP_RINGBUF_PAGES": 8}, text=text)
    try:
        assert bpf.num_open_tracepoints() > 0, f"{name}: nothing attached"
    finally:
        bpf.cleanup()


def test_include_tree_from_btf_and_boot_config(tree: Path) -> None:
    autoconf = (tree / "include" / "generated" / "autoconf.h").read_text()
    assert autoconf.startswith(f"/* generated from /boot/config-{os.uname().release} */")
    assert "#define CONFIG_BPF_SYSCALL 1" in autoconf
    assert "struct mount {" in (tree / "include" / "vmlinux.h").read_text()


def test_variants_match_this_kernel(tree: Path) -> None:
    assert loader._variants["TP_KERNFS_PARENT"] == "parent"  # Debian 6.1 and 6.12: not yet __parent
    assert loader._variants["TP_HAVE_EXIT_GROUP_DEAD"] == "0"


def test_process_program_with_network_and_udp_sensors(tree: Path) -> None:
    enabled = [s for s in sensors.enabled(ALL_SENSORS) if s.name != "loader"]
    names = [s.name for s in enabled]
    assert "network" in names
    has_send_length = Path("/sys/kernel/tracing/events/sock/sock_send_length").is_dir()
    assert ("udp" in names) == has_send_length  # 6.1 has no sock:sock_send_length
    base = (loader.BPF_DIR / "process.c").read_text()
    _load("process.c + sensors " + ",".join(names), sensors.program_text(base, enabled))


def test_connect_deny_program(tree: Path) -> None:
    from collector.connect_deny import ConnectDeny

    deny = ConnectDeny()  # compiles and loads both cgroup programs (the verifier ran)
    try:
        assert deny._fn4.fd > 0 and deny._fn6.fd > 0
    finally:
        deny.bpf.cleanup()


def test_process_program_with_every_sensor(tree: Path) -> None:
    enabled = sensors.enabled(ALL_SENSORS)
    assert "loader" in [s.name for s in enabled]
    base = (loader.BPF_DIR / "process.c").read_text()
    _load("process.c + every sensor", sensors.program_text(base, enabled))


def test_loader_sensor_alone(tree: Path) -> None:  # spec.loader policies load it on its own
    (sensor,) = [s for s in sensors.SENSORS if s.name == "loader"]
    _load("loader sensor (sensor_base.c)", sensors.standalone_text(sensor))
