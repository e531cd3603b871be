"""Names of the kernel numbers that records carry, shared by the collector (policy compiler) and
the enricher (events): capability bits and Tetragon's KprobeAction numbers."""

from __future__ import annotations

# capability bit numbers, include/uapi/linux/capability.h
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]

# Tetragon's CapabilitiesType enum (api/v1/tetragon/capabilities.proto) spells bit 1 without
# the CAP_ prefix; events use the enum's names
EVENT_CAPABILITIES = ["DAC_OVERRIDE" if c == "CAP_DAC_OVERRIDE" else c for c in CAPABILITIES]

# the actions a policy selector names → Tetragon's KprobeAction numbers (hook records carry them)
ACTION_NUMBERS = {
    "Post": 1, "FollowFD": 2, "Sigkill": 3, "UnfollowFD": 4, "Override": 5, "CopyFD": 6,
    "GetUrl": 7, "DnsLookup": 8, "NoPost": 9, "Signal": 10, "TrackSock": 11, "UntrackSock": 12,
    "NotifyEnforcer": 13, "CleanupEnforcerNotification": 14, "Set": 15,
}
# KprobeAction number → the enum name events carry (KPROBE_ACTION_SIGKILL)
ACTION_ENUM_NAMES = {n: f"KPROBE_ACTION_{name.upper()}" for name, n in ACTION_NUMBERS.items()}
