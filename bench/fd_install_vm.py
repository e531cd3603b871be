"""The seed policy's cost on Debian's stock 6.12 kernel: the real ``fd_install`` next to the tracepoint path.

    sudo .venv/bin/python -m bench.fd_install_vm [--kernel 6.12] [--ops 20000] [--rounds 9]

Boots the kernel under qemu (scripts/vm/runner.py, kernels from scripts/setup-vmkernels.sh) and,
inside it, loads the seed policy (tests/data/seed/deny-tmp-forbidden-write.yaml, verbatim but its name) three
times through the collector's PolicyManager, its ``fd_install`` + FollowFD hook served by each
mechanism the compiler can choose (collector/policy/mechanism.py): fentry (what 6.12 gets),
kprobe (BPF trampolines masked from the probed features) and the exits of open/openat/openat2/
creat (trampolines and kprobes masked: what a kernel without kprobes gets, as on the build
machine). Two loops of bench/workload.c run against a file outside /tmp/forbidden/ (nothing is
followed, nothing killed: the hooks run and filter):

- ``write``: one byte per write(2) to a file opened once (the seed's write/read hooks run);
- ``open``: open(2)+close(2) in a loop (fd_install or the open exits run, then close's hook).

Figures are the loop's CPU time (user + system: the BPF programs run in the syscall) per
operation. The three copies of the policy are loaded at once and enabled one at a time (the others
stay attached, disabled: their programs return after one map lookup); each round measures "all
disabled" and each copy enabled, in alternating order, and a copy's figure is its median over the
rounds of (enabled ÷ all disabled of the same round), with quartiles. Runs with no program before
loading and after unloading show the drift and the cost of attachment itself. Under TCG
(software emulation, no KVM) absolute times mean nothing: the output is ratios. With
kernel.bpf_stats_enabled (the guest's), the time spent inside the BPF programs per operation
(bpftool's run_time_ns) is reported too: less disturbed by a loaded host than CPU time, but it
leaves out the kprobe/trampoline entry itself.
Needs root (qemu, BPF in the guest).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "tests" / "data" / "seed" / "deny-tmp-forbidden-write.yaml"
GUEST_FLAG = "--in-guest"
# label → KernelFeatures fields switched off, so the compiler picks that mechanism for fd_install
VARIANTS = {
    "fentry": {},
    "kprobe": {"trampolines": False},
    "open exits (tracepoints)": {"trampolines": False, "kprobes": False},
}


def _cpu_per_op(binary: Path, mode: str, path: str, ops: int) -> float:
    from bench.common import run_load

    r = run_load(binary, mode, path, seconds=600, max_ops=ops)
    return r.cpu_seconds / max(r.ops, 1)


def _prog_run_ns() -> int:
    """Sum of run_time_ns over the loaded BPF programs (kernel.bpf_stats_enabled on)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True)
    return sum(p.get("run_time_ns", 0) for p in json.loads(out.stdout))


def _baseline(binary: Path, target: str, ops: int, rounds: int) -> dict[str, float]:
    return {m: statistics.median(_cpu_per_op(binary, m, target, ops) for _ in range(rounds)) for m in ("write", "open")}


def in_guest(binary: Path, ops: int, rounds: int) -> int:
    """Runs inside the VM: prints one table of ratios."""
    from collector import kernel_features, loader, procfs
    from collector.drain import RecordQueue
    from collector.policy.manager import Loaded, PolicyManager

    work = Path(tempfile.mkdtemp(prefix="tp-fdbench-"))
    loader.prepare(work / "kernel-headers")
    features = kernel_features.probe()
    target = str(work / "out")
    base = _baseline(binary, target, ops, rounds)
    # the three loaded at once, each enabled alone in turn (the others attached, disabled): every
    # round measures all of them and "all disabled" back to back, so machine noise hits all alike
    mgrs: list[PolicyManager] = []
    loaded: dict[str, Loaded] = {}
    try:
        for i, (label, off) in enumerate(VARIANTS.items()):
            mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(),
                                dataclasses.replace(features, **off))
            mgrs.append(mgr)
            text = SEED.read_text().replace('name: "deny-tmp-forbidden-write"', f'name: "seed-bench-{i}"')
            (loaded[label],) = mgr.load_text(text, f"seed-{i}.yaml")
        res: dict[tuple[str, str], list[float]] = {}
        bpf_ns: dict[tuple[str, str], list[float]] = {}
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1")   # the guest's own kernel
        for r in range(rounds):
            order = ("all disabled", *VARIANTS)
            for on in order if r % 2 == 0 else order[::-1]:    # alternate the order: drift cancels
                for label, lp in loaded.items():
                    lp.bpf["enabled"][ctypes.c_int(0)] = ctypes.c_uint32(int(label == on))
                for mode in ("write", "open"):
                    before = _prog_run_ns()
                    res.setdefault((on, mode), []).append(_cpu_per_op(binary, mode, target, ops))
                    bpf_ns.setdefault((on, mode), []).append((_prog_run_ns() - before) / ops)
        med = {k: statistics.median(v) for k, v in res.items()}
        bpf_med = {k: statistics.median(v) for k, v in bpf_ns.items()}
        # per round, each variant against "all disabled" measured in the same round
        paired = {(label, m): sorted(a / b for a, b in zip(res[label, m], res["all disabled", m], strict=True))
                  for label in VARIANTS for m in ("write", "open")}
        mech = {label: next(h.mechanism for h in lp.compiled.hooks if h.function_name == "fd_install")
                for label, lp in loaded.items()}
    finally:
        for mgr in mgrs:
            mgr.stop()
    again = _baseline(binary, target, ops, rounds)
    print(f"kernel {os.uname().release}; {ops} operations per run; medians of {rounds} interleaved rounds")
    print(f"no program: write {base['write'] * 1e9:.0f} ns CPU/op, open+close {base['open'] * 1e9:.0f} ns CPU/op "
          f"(TCG: compare the ratios only); after unloading: write x{again['write'] / base['write']:.2f}, "
          f"open+close x{again['open'] / base['open']:.2f}")
    off = {m: med["all disabled", m] for m in ("write", "open")}
    print(f"three copies attached, all disabled, ÷ no program: write x{off['write'] / base['write']:.2f}, "
          f"open+close x{off['open'] / base['open']:.2f}")
    print(f"{'fd_install served by':<26} {'mechanism':<36} {'write':>18} {'open+close':>18}")
    print(f"{'':<26} {'':<36} {'(CPU/op enabled ÷ all disabled, same round: median [quartiles])':>38}")

    def q(v: list[float]) -> str:
        return f"{statistics.median(v):.2f} [{v[len(v) // 4]:.2f}-{v[(3 * len(v)) // 4]:.2f}]"

    for label in VARIANTS:
        print(f"{label:<26} {mech[label]:<36} {q(paired[label, 'write']):>18} {q(paired[label, 'open']):>18}")
    print("time inside the BPF programs per operation (bpf_stats run_time_ns; without the kprobe/trampoline "
          "entry itself), ÷ all disabled:")
    for label in VARIANTS:
        print(f"{label:<26} write x{bpf_med[label, 'write'] / bpf_med['all disabled', 'write']:.2f}, "
              f"open+close x{bpf_med[label, 'open'] / bpf_med['all disabled', 'open']:.2f}")
    first = next(iter(VARIANTS))
    for label in list(VARIANTS)[1:]:
        print(f"{label} ÷ {first}: write x{med[label, 'write'] / med[first, 'write']:.2f}, "
              f"open+close x{med[label, 'open'] / med[first, 'open']:.2f}")
    return 0


def _runner():
    spec = importlib.util.spec_from_file_location("tetrapipe_vm_runner", REPO / "scripts" / "vm" / "runner.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def on_host(kernel_name: str, ops: int, rounds: int, timeout: float) -> int:
    from bench.common import workload_binary

    vm = _runner()
    kernel = vm.kernels().get(kernel_name)
    if kernel is None:
        sys.exit(f"Debian {kernel_name} kernel not prepared under {vm.CACHE}: run scripts/setup-vmkernels.sh")
    results = Path(tempfile.mkdtemp(prefix="tp-fdbench-vm-"))
    binary = workload_binary(results)      # the results share is the guest's /tetrapipe-vm
    guest_binary = f"{vm.GUEST_RESULTS}/{binary.name}"
    cmd = shlex.join([str(REPO / ".venv" / "bin" / "python"), "-m", "bench.fd_install_vm", GUEST_FLAG,
                      guest_binary, "--ops", str(ops), "--rounds", str(rounds)])
    res = vm.boot(kernel, cmd, results=results, env={"TETRAPIPE_VM_GUEST": "1"}, cwd=str(REPO), timeout=timeout)
    print(res.describe())
    print(res.output[-8000:])
    return 0 if res.rc == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--ops", type=int, default=20_000, help="operations per workload run")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument(GUEST_FLAG, dest="guest_binary", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root (qemu here, BPF in the guest)")
    if a.guest_binary:
        return in_guest(Path(a.guest_binary), a.ops, a.rounds)
    return on_host(a.kernel, a.ops, a.rounds, a.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
