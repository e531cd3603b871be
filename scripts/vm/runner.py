"""Boot a stock Debian kernel under qemu and run one command in it (independent of tetrapipe).

The kernels, their unpacked header packages and the initramfs come from
``scripts/setup-vmkernels.sh`` (``/var/cache/tetrapipe-build/vmkernels/<release>/``).  The guest
(``scripts/vm/init``) sees this host's ``/`` read-only over 9p under a tmpfs overlay, the kernel
as if installed (``/lib/modules/<release>/{build,source}``, ``/boot/config-<release>``), and a
read-write results folder at ``/tetrapipe-vm``: it runs ``/tetrapipe-vm/cmd.sh`` there, writes
its exit status to ``/tetrapipe-vm/rc``, its output to ``/tetrapipe-vm/output.log`` and powers
off.  Software emulation only (``/dev/kvm`` here is not usable): ``-accel tcg,thread=single``
(see QEMU_MACHINE for why not ``multi``).

    python3 scripts/vm/runner.py 6.12 -- uname -r          # one command, output on stdout
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("TETRAPIPE_VMKERNELS_CACHE", "/var/cache/tetrapipe-build/vmkernels"))
GUEST_RESULTS = "/tetrapipe-vm"  # where the results share is mounted in the guest
# One host thread runs both guest CPUs in turn (``thread=single``).  With ``thread=multi`` (QEMU
# 7.2) live kernel text patching (kprobe int3s, static keys flipped by attaching tracepoints,
# BPF trampolines) races the other vCPU's translated code: the guest oopses (RIP 0, stale int3
# "Oops: int3") or soft-locks within seconds under scripts/vm/stress-text-poke.sh; it failed
# the project's CI twice.  TETRAPIPE_VM_TCG_THREAD=multi brings the faster mode back to measure.
TCG_THREAD = os.environ.get("TETRAPIPE_VM_TCG_THREAD", "single")
QEMU_MACHINE = ["-accel", f"tcg,thread={TCG_THREAD}", "-cpu", "qemu64", "-smp", "2", "-m", "2G"]
_BOOTED = re.compile(r"tetrapipe-vm: booted \S+ in ([\d.]+)s")


class VMError(RuntimeError):
    """The VM could not be prepared or booted."""


@dataclass(frozen=True)
class Kernel:
    name: str  # "6.1", "6.12"
    release: str  # uname -r in the guest
    dir: Path

    @property
    def vmlinuz(self) -> Path:
        return self.dir / "root" / "boot" / f"vmlinuz-{self.release}"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"


@dataclass
class BootResult:
    kernel: Kernel
    rc: int | None  # the command's exit status; None if it never finished
    timed_out: bool
    boot_s: float | None  # kernel start to the command, as the guest measured it
    wall_s: float  # qemu start to exit, on this host
    output: str  # the command's stdout+stderr
    serial: str  # the guest console
    results: Path  # the results share (junit xml etc.)

    def describe(self) -> str:
        state = "timed out" if self.timed_out else f"exit {self.rc}"
        return f"{self.kernel.release}: {state}, boot {self.boot_s}s, wall {self.wall_s:.1f}s"


def kernels(cache: Path = CACHE) -> dict[str, Kernel]:
    """The kernels setup-vmkernels.sh prepared, by short name ("6.1", "6.12")."""
    found: dict[str, Kernel] = {}
    if not cache.is_dir():
        return found
    for d in sorted(cache.iterdir()):
        if not (d / ".complete").is_file() or not (d / "release").is_file():
            continue
        release = (d / "release").read_text().strip()
        m = re.match(r"(\d+\.\d+)", release)
        if m:
            found[m.group(1)] = Kernel(m.group(1), release, d)
    return found


def _qemu_args(kernel: Kernel, results: Path, serial: Path) -> list[str]:
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise VMError("qemu-system-x86_64 not found: run scripts/setup-vmkernels.sh")
    return [
        qemu, *QEMU_MACHINE, "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
        "-serial", f"file:{serial}",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(kernel.initrd),
        "-append", "console=ttyS0 panic=-1 quiet loglevel=4 random.trust_cpu=on no_timer_check",
        "-device", "virtio-rng-pci",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={results},mount_tag=results,security_model=none",
    ]  # fmt: skip


def _show_host_dir(cwd: str) -> str:
    """Shell lines that make a host directory under /tmp or /run visible in the guest, which has
    fresh tmpfs there: a plain bind of the guest's root (the host's files under the guest's
    writable overlay) shows what that tmpfs covers. A checkout in /tmp (a fresh clone) runs its
    guest tests like any other."""
    if not cwd.startswith(("/tmp/", "/run/")):
        return ""
    q = shlex.quote(cwd)
    return (f"if [ ! -d {q} ]; then mkdir -p /run/tp-root {q} && mount --bind / /run/tp-root && "
            f"mount --bind /run/tp-root{q} {q} && umount /run/tp-root; fi\n")


def boot(
    kernel: Kernel,
    command: str,
    *,
    results: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: str = "/",
    timeout: float = 600.0,
) -> BootResult:
    """Boot ``kernel``, run the shell ``command`` as root in ``cwd`` with ``env`` added, power off.

    ``results`` (created if missing, a temp dir by default) is the guest's ``/tetrapipe-vm``; the
    serial console is kept there as ``serial.log``.  A guest whose kernel dies before it starts
    the command (an emulated machine starved by a loaded host can fail the kernel's early timer
    check: "IO-APIC + timer doesn't work", seen once for 6.12 at load 8) is booted once more; the
    first console is kept as ``serial.first-boot.log``.  Nothing the command does is retried."""
    start = time.monotonic()
    res = _boot_once(kernel, command, results, env, cwd, timeout)
    if res.boot_s is None and not res.timed_out and res.rc is None:
        (res.results / "serial.first-boot.log").write_text(res.serial)
        print(f"tetrapipe-vm: {kernel.release} died before the command started; booting it again",
              file=sys.stderr)
        left = max(60.0, timeout - (time.monotonic() - start))
        res = _boot_once(kernel, command, res.results, env, cwd, left)
    return res


def _boot_once(kernel: Kernel, command: str, results: Path | None, env: dict[str, str] | None, cwd: str,
               timeout: float) -> BootResult:
    """One boot of ``kernel`` as ``boot`` describes it."""
    if not kernel.vmlinuz.is_file() or not kernel.initrd.is_file():
        raise VMError(f"{kernel.dir} is incomplete: run scripts/setup-vmkernels.sh")
    results = Path(results) if results else Path(tempfile.mkdtemp(prefix=f"tetrapipe-vm-{kernel.name}-"))
    results.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "output.log", "serial.log"):
        (results / stale).unlink(missing_ok=True)
    (results / "env").write_text(f"KROOT={shlex.quote(str(kernel.dir / 'root'))}\nRELEASE={kernel.release}\n")
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
    (results / "cmd.sh").write_text(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8\n"
        f"{exports}{_show_host_dir(cwd)}cd {shlex.quote(cwd)} || exit 125\n{command}\n"
    )
    serial = results / "serial.log"
    start = time.monotonic()
    proc = subprocess.Popen(_qemu_args(kernel, results, serial), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    timed_out = False
    try:
        qemu_out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        qemu_out, _ = proc.communicate()
    wall = time.monotonic() - start
    console = serial.read_text(errors="replace") if serial.exists() else ""
    if proc.returncode not in (0, -9) and not console:
        raise VMError(f"qemu failed ({proc.returncode}): {qemu_out.decode(errors='replace')[-2000:]}")
    rc_file = results / "rc"
    rc = int(rc_file.read_text().strip()) if rc_file.is_file() and rc_file.read_text().strip() else None
    m = _BOOTED.search(console)
    out_file = results / "output.log"
    return BootResult(
        kernel=kernel, rc=rc, timed_out=timed_out, boot_s=float(m.group(1)) if m else None, wall_s=wall,
        output=out_file.read_text(errors="replace") if out_file.is_file() else "", serial=console, results=results,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernel", help="6.1 or 6.12 (see scripts/setup-vmkernels.sh)")
    ap.add_argument("--cwd", default=os.getcwd(), help="working directory in the guest (default: here)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--results", type=Path, help="results folder (default: a new temp dir)")
    ap.add_argument("command", nargs="+", help="command to run in the guest")
    args = ap.parse_args(argv)
    known = kernels()
    if args.kernel not in known:
        print(f"no kernel {args.kernel!r} prepared (have: {', '.join(known) or 'none'}); "
              "run scripts/setup-vmkernels.sh", file=sys.stderr)  # fmt: skip
        return 2
    res = boot(known[args.kernel], shlex.join(args.command), results=args.results, cwd=args.cwd,
               timeout=args.timeout)  # fmt: skip
    sys.stdout.write(res.output)
    print(f"[{res.describe()}; results in {res.results}]", file=sys.stderr)
    if res.rc is None:
        print(res.serial[-3000:], file=sys.stderr)
        return 124 if res.timed_out else 125
    return res.rc


if __name__ == "__main__":
    sys.exit(main())
