#!/usr/bin/env python3
"""Count how many TracingPolicy files of a directory tree this kernel serves, and why the others
are refused: each file parsed and compiled by the collector's policy engine against the running
kernel's probed features (collector/kernel_features.py) and BTF, as `tetrapipe tracingpolicy add`
would, without loading it (``--load`` also compiles and loads each into the kernel with bcc,
then unloads it: 1-2 s per policy natively, 15-27 s in a qemu guest).

    .venv/bin/python scripts/count-policies.py <tetragon checkout>/examples [--load] [--json out.json]

Prints one line per file (loaded / refused: reason) and ``served N of M (P%)``. Files that are
not TracingPolicies (other kinds, non-YAML) are listed as skipped and not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector import kernel_features, loader, procfs  # noqa: E402
from collector.drain import RecordQueue  # noqa: E402
from collector.policy import compiler, parser  # noqa: E402
from collector.policy.manager import PolicyManager  # noqa: E402
from collector.policy.model import PolicyError  # noqa: E402

KINDS = ("TracingPolicy", "TracingPolicyNamespaced")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--load", action="store_true", help="also load each policy into the kernel")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    feats = kernel_features.probe()
    print(feats.summary())
    mgr = None
    if args.load:
        loader.prepare()
        mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(), feats)
    results: dict[str, str] = {}
    for f in sorted(p for p in args.dir.rglob("*") if p.suffix in (".yaml", ".yml")):
        rel = str(f.relative_to(args.dir))
        text = f.read_text(errors="replace")
        if not any(f"kind: {k}" in text or f'kind: "{k}"' in text for k in KINDS):
            print(f"skipped  {rel}: not a TracingPolicy")
            continue
        try:
            if mgr is not None:
                for lp in mgr.load_text(text, rel):
                    mgr.delete(lp.name)
            else:
                for p in parser.parse_text(text, rel):
                    compiler.compile_policy(p, 1, procfs.host_namespaces(), feats)
            results[rel] = "loaded"
        except PolicyError as exc:
            results[rel] = f"refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - a count must go on
            results[rel] = f"refused: {type(exc).__name__}: {exc}"
        print(f"{results[rel].split(':')[0]:<8} {rel}" + (f": {results[rel][9:]}" if results[rel] != "loaded" else ""))
    if mgr is not None:
        mgr.stop()
    ok = sum(1 for v in results.values() if v == "loaded")
    total = len(results)
    print(f"served {ok} of {total} ({100 * ok / max(total, 1):.0f}%) on {feats.release}")
    if args.json:
        args.json.write_text(json.dumps({"release": feats.release, "served": ok, "total": total,
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
