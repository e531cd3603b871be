"""Capability sets on the bus are bit masks (``Capabilities.*_mask`` in schemas/event.avsc); the
names (Tetragon's ``CapabilitiesType`` enum, what its JSON shows) are made only where an event
leaves tetrapipe: the protojson renderer (exporters/protojson.py), which the JSON file, fluentd,
gRPC and ``getevents`` outputs all go through."""

from __future__ import annotations

# capability bit numbers (include/uapi/linux/capability.h) → Tetragon's CapabilitiesType names
# (api/v1/tetragon/capabilities.proto, which spells bit 1 without the CAP_ prefix)
EVENT_NAMES = [
    "CAP_CHOWN", "DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
# bit i of a set, for the bits the enum does not name (none today: the kernel stops at 40)
ALL_NAMES = tuple(EVENT_NAMES[i] if i < len(EVENT_NAMES) else f"CAP_{i}" for i in range(64))
SETS = ("permitted", "effective", "inheritable")
U64 = (1 << 64) - 1
_NAMES: dict[int, tuple[str, ...]] = {}  # a node has few distinct masks


def to_long(mask: int) -> int:
    """A kernel_cap_t (u64) as the Avro long that carries it (two's complement)."""
    mask &= U64
    return mask - (1 << 64) if mask >> 63 else mask


def names(mask: int) -> list[str]:
    """The names of the set bits, lowest first (a fresh list)."""
    found = _NAMES.get(mask)
    if found is None:
        m = mask & U64
        found = tuple(ALL_NAMES[i] for i in range(m.bit_length()) if m >> i & 1)
        if len(_NAMES) >= 4096:
            _NAMES.clear()
        _NAMES[mask] = found
    return list(found)


def masks(permitted: int, effective: int, inheritable: int) -> dict[str, int]:
    """A ``Capabilities`` record of three kernel masks, as the enricher puts it on the bus."""
    return {"permitted_mask": to_long(permitted), "effective_mask": to_long(effective),
            "inheritable_mask": to_long(inheritable)}


def set_names(cap: dict, which: str) -> list[str]:
    """The names of one set of a ``Capabilities`` record: from its mask when the writer set one,
    else the name list (events written before the masks, schema v2 and older)."""
    mask = cap.get(which + "_mask")
    if mask is not None:
        return names(mask)
    return list(cap.get(which) or ())
