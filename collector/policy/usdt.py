"""``spec.usdts``: USDT probes (``.note.stapsdt`` entries, as ``sys/sdt.h`` emits them) as hooks,
through bcc's USDT support.

An entry names the ELF file (``path``), the probe (``provider``, ``name``) and the arguments to
capture (``args``: index = the probe's argument position, typed). It becomes one hook of kind
``uprobe`` (a uprobe at each of the probe's locations) whose entry reads the arguments the note
describes (a register, memory at a register + offset, a constant) with bcc's generated readers
(``bpf_usdt_readarg``), each in its own C type, sign-extended as the note says; selectors and
actions then act as on any hook. Events are ``process_uprobe`` with ``symbol`` = ``provider:name``.

A probe with a semaphore (an is-enabled probe: the process fires it only while the semaphore is
non-zero) is served as Tetragon serves it: each uprobe is made with the semaphore's file offset as
its reference counter, so the kernel increments the semaphore in every process that maps the file
while the policy is loaded and takes it back at unload (collector/usdt_semaphore.py).

Refused, with the reason: a path that does not exist (as Tetragon at load), a probe that is not in
the file, an argument index past the probe's arguments, a semaphore probe on a kernel without
uprobe reference counters (Linux < 4.20) or whose semaphore is not in the file's loaded data, and
the ``Set`` action (Tetragon writes the argument's register or memory in the traced process;
tetrapipe does not write into traced processes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from collector import uprobes, usdt_semaphore
from collector.policy.model import Hook

if TYPE_CHECKING:
    from collector.policy.yamldoc import Ctx

USDT_KEYS = {"path", "provider", "name", "message", "args", "selectors", "tags", "btfPath"}
ARG_TYPES = frozenset(uprobes.INT_TYPES) | {"string"}


def parse(c: Ctx, raw: Any, path: str, i: int, common: Callable[..., Hook]) -> Hook:
    """One ``spec.usdts`` entry → a uprobe hook marked with its probe (``common``: the parser's
    args/selectors/message/tags reader)."""
    m = c.mapping(raw, path, USDT_KEYS)
    binary = c.string(m.get("path"), f"{path}.path", required=True)
    if not binary.startswith("/"):
        raise c.fail(f"{path}.path", "an absolute path to an ELF file is required")
    if m.get("btfPath"):
        raise c.fail(f"{path}.btfPath", "btfPath is not supported by tetrapipe for usdts")
    provider = c.string(m.get("provider"), f"{path}.provider", required=True)
    name = c.string(m.get("name"), f"{path}.name", required=True)
    hook = common(c, m, Hook(kind="uprobe", index=i), path)
    hook.binary = binary
    hook.call = f"{provider}:{name}"
    hook.usdt = True
    return hook


def target(hook: Hook, fail: Callable[[str, str], Exception]) -> uprobes.Target:
    """The probe's locations in the file, checked (``fail(yaml path, reason)`` makes the error)."""
    p = hook.path
    if not os.path.isfile(hook.binary):
        raise fail(f"{p}.path", f"{hook.binary} does not exist or is not a file")
    for sel_i, sel in enumerate(hook.selectors):
        for act_i, act in enumerate(sel.match_actions):
            if act.action == "Set":
                raise fail(f"{p}.selectors[{sel_i}].matchActions[{act_i}].action",
                           "Set writes the USDT argument's register or memory in the traced process; "
                           "tetrapipe does not write into traced processes")
    ctx, probe = _probe(hook, fail)   # the probe reads through ctx: keep it alive until done
    ref_ctr = _ref_ctr_offset(hook, probe.semaphore, fail) if probe.semaphore else 0
    for a in hook.args:
        if a.type not in ARG_TYPES:
            raise fail(f"{a.path}.type", f"type {a.type} is not supported for usdts (one of "
                                         f"{', '.join(sorted(ARG_TYPES))})")
        if a.index >= probe.num_arguments:
            raise fail(f"{a.path}.index", f"USDT probe {hook.call} has {probe.num_arguments} arguments: "
                                          f"index {a.index} is out of range")
    addrs = [probe.get_location(j).address for j in range(probe.num_locations)]
    del probe, ctx
    if not addrs:
        raise fail(p, f"USDT probe {hook.call} in {hook.binary} has no location")
    return uprobes.Target(hook.binary, hook.call, addrs[0], usdt=hook.call, more_offsets=tuple(addrs[1:]),
                          ref_ctr_offset=ref_ctr)


def _ref_ctr_offset(hook: Hook, semaphore: int, fail: Callable[[str, str], Exception]) -> int:
    """The semaphore's file offset, for the kernel to count it (refused where it cannot)."""
    what = f"USDT probe {hook.call} in {hook.binary} has a semaphore (an is-enabled probe)"
    reason = usdt_semaphore.kernel_reason()
    if reason:
        raise fail(hook.path, f"{what}: {reason}, so the kernel cannot enable it and the process "
                              "would never fire it")
    try:
        off = usdt_semaphore.file_offset(hook.binary, semaphore)
    except (OSError, usdt_semaphore.SemaphoreError) as exc:
        raise fail(hook.path, f"{what}: {exc}") from None
    if not 0 < off < 1 << 32:
        raise fail(hook.path, f"{what}: its file offset {off:#x} does not fit the kernel's 32-bit ref_ctr_offset")
    return off


def _probe(hook: Hook, fail: Callable[[str, str], Exception]) -> tuple[Any, Any]:
    from bcc import USDT
    from bcc.usdt import USDTException

    try:
        ctx = USDT(path=hook.binary)
    except USDTException as exc:
        raise fail(f"{hook.path}.path", f"{hook.binary}: {exc}") from None
    probes = ctx.enumerate_probes()
    for pr in probes:
        if pr.short_name() == hook.call:
            return ctx, pr
    have = ", ".join(sorted(pr.short_name() for pr in probes)) or "none"
    raise fail(f"{hook.path}.name", f"no USDT probe {hook.call} in {hook.binary} (its probes: {have})")


def entry_c(hook_id: int, fn_name: str, hook: Hook) -> str:
    """bcc's argument readers for this probe and the entry: each declared argument read in its
    own C type (sign-extended into ``a``), then the engine's ``tp_hook_<id>``."""
    from bcc import USDT

    ctx = USDT(path=hook.binary)
    sem = next((pr.semaphore for pr in ctx.enumerate_probes() if pr.short_name() == hook.call), 0)
    if sem:   # bcc enables a semaphore probe only in one process: its readers from a copy without
        provider, name = hook.call.split(":", 1)
        with usdt_semaphore.readers_path(hook.binary, provider, name, sem) as copy:
            ctx = USDT(path=copy)
            ctx.enable_probe(hook.call, fn_name)
            readers = ctx.get_text()
    else:
        ctx.enable_probe(hook.call, fn_name)
        readers = ctx.get_text()
    reads = []
    for a in hook.args:
        ctype = ctx.get_probe_arg_ctype(hook.call, a.index) or "uint64_t"
        reads.append(f"    {{ {ctype} v = 0; bpf_usdt_readarg({a.index + 1}, ctx, &v); "
                     f"a[{a.index}] = (u64)(s64)v; }}")
    body = "\n".join(reads)
    return (f"{readers}\nint {fn_name}(struct pt_regs *ctx)\n{{\n    u64 a[6] = {{}};\n{body}\n"
            f"    tp_hook_{hook_id}(ctx, a, 0, 0);\n    return 0;\n}}\n")
