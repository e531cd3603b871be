"""Names of the kernel numbers that records carry, shared by the collector (policy compiler) and
the enricher (events): capability bits and Tetragon's KprobeAction numbers."""

from __future__ import annotations

from schemas.capabilities import EVENT_NAMES

# capability bit numbers (include/uapi/linux/capability.h), as policies spell them
CAPABILITIES = ["CAP_DAC_OVERRIDE" if c == "DAC_OVERRIDE" else c for c in EVENT_NAMES]

# Tetragon's CapabilitiesType enum (api/v1/tetragon/capabilities.proto) spells bit 1 without
# the CAP_ prefix; events use the enum's names (one table: schemas/capabilities.py)
EVENT_CAPABILITIES = list(EVENT_NAMES)

# the actions a policy selector names → Tetragon's KprobeAction numbers (hook records carry them)
ACTION_NUMBERS = {
    "Post": 1, "FollowFD": 2, "Sigkill": 3, "UnfollowFD": 4, "Override": 5, "CopyFD": 6,
    "GetUrl": 7, "DnsLookup": 8, "NoPost": 9, "Signal": 10, "TrackSock": 11, "UntrackSock": 12,
    "NotifyEnforcer": 13, "CleanupEnforcerNotification": 14, "Set": 15,
}
# KprobeAction number → the enum name events carry (KPROBE_ACTION_SIGKILL)
ACTION_ENUM_NAMES = {n: f"KPROBE_ACTION_{name.upper()}" for name, n in ACTION_NUMBERS.items()}


# io_uring opcodes named in events of requests judged as syscalls (TP_HOOK_IO_URING; uapi io_uring.h)
IO_URING_OPS = {1: "READV", 2: "WRITEV", 4: "READ_FIXED", 5: "WRITE_FIXED", 16: "CONNECT", 17: "FALLOCATE",
                18: "OPENAT", 22: "READ", 23: "WRITE", 28: "OPENAT2", 30: "SPLICE", 33: "TEE", 49: "READ_MULTISHOT",
                55: "FTRUNCATE", 60: "READV_FIXED", 61: "WRITEV_FIXED"}
