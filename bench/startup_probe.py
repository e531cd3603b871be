"""Times the collector's start-up steps in a fresh process: include-tree preparation (header
generation when the cache is empty), bcc compile + load + attach of bpf/process.c, and the RSS
after. ``python -m bench.startup_probe CACHE_DIR`` prints one JSON line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

t_start = time.monotonic()

from collector import loader  # noqa: E402


def main() -> int:
    cache = Path(sys.argv[1])
    t_import = time.monotonic() - t_start
    t0 = time.monotonic()
    tree = loader.prepare(cache / "kernel-headers")
    t1 = time.monotonic()
    bpf = loader.load_program("process.c", {"TP_RINGBUF_PAGES": 4096})
    t2 = time.monotonic()
    rss = 0.0
    hwm = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    bpf.cleanup()
    print(json.dumps({"import_s": t_import, "headers_s": t1 - t0, "headers_generated": tree.generated,
                      "compile_load_s": t2 - t1, "rss_mib": rss, "peak_rss_mib": hwm}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
