#!/usr/bin/env python3
"""Count how many TracingPolicy files of a directory tree this kernel serves, and why the others
are refused: each file parsed and compiled by the collector's policy engine against the running
kernel's probed features (collector/kernel_features.py) and BTF, as `tetrapipe tracingpolicy add`
would, without loading it (``--load`` also compiles and loads each into the kernel with bcc,
then unloads it: 1-2 s per policy natively, 15-27 s in a qemu guest; pod-scoped policies then get
a stand-in pod list with no pods, as on a node whose Kubernetes API lists none: they load and act
on no process).

    .venv/bin/python scripts/count-policies.py <tetragon checkout>/examples [--load] [--json out.json]

Prints one line per file (loaded / refused: reason) and ``served N of M (P%)``. Files that are
not TracingPolicies (other kinds, non-YAML) are listed as skipped and not counted.

``--with-named-files`` then counts the refused ones again with the files Tetragon's library names
but a Debian install does not have put in place (scripts/named_files.py: our USDT tester programs at
the tester paths, the system's libc at /lib64/libc.so.6), inside a child's own mount namespace:
nothing on the disk changes. It prints both figures, as installed and with the named files in
place, and each refusal left with its reason. The policies are counted exactly as without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import named_files  # noqa: E402

from collector import kernel_features, loader, procfs  # noqa: E402
from collector.drain import RecordQueue  # noqa: E402
from collector.policy import compiler, parser  # noqa: E402
from collector.policy.manager import PolicyManager  # noqa: E402
from collector.policy.model import PolicyError  # noqa: E402
from collector.policy.pod_scope import PodScope  # noqa: E402
from tetrapipe.k8s.pods import PodIndex  # noqa: E402

KINDS = ("TracingPolicy", "TracingPolicyNamespaced")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--load", action="store_true", help="also load each policy into the kernel")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--with-named-files", action="store_true",
                    help="count the refused ones again with the files they name put in place, in a mount "
                         "namespace of their own (scripts/named_files.py)")
    ap.add_argument("--named-files-pass", help=argparse.SUPPRESS)  # the child of --with-named-files
    args = ap.parse_args()
    if args.named_files_pass:
        return named_files_pass(args)
    feats = kernel_features.probe()
    print(feats.summary())
    files = policy_files(args.dir)
    results = count(args.dir, files, feats, args.load)
    ok, total = summary(results, feats.release, "as installed")
    out: dict[str, object] = {"release": feats.release, "served": ok, "total": total, "results": results}
    if args.with_named_files:
        out["with_named_files"] = with_named_files(args, results, feats.release)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


def policy_files(root: Path) -> list[str]:
    """The TracingPolicy files under ``root`` (relative paths); the others listed as skipped."""
    files = []
    for f in sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml")):
        rel = str(f.relative_to(root))
        text = f.read_text(errors="replace")
        if not any(f"kind: {k}" in text or f'kind: "{k}"' in text for k in KINDS):
            print(f"skipped  {rel}: not a TracingPolicy")
            continue
        files.append(rel)
    return files


def count(root: Path, files: list[str], feats: kernel_features.KernelFeatures, load: bool) -> dict[str, str]:
    """Each file compiled (``load``: also loaded and unloaded) here: "loaded" or "refused: reason"."""
    mgr = None
    if load:
        loader.prepare()
        # pod-scoped policies (podSelector, TracingPolicyNamespaced) need the node's pods: a stand-in
        # pod list with no pods (no Kubernetes API in a count), so they load and act on no process
        mgr = PolicyManager(RecordQueue(1_000_000, asyncio.new_event_loop()), procfs.host_namespaces(), feats,
                            pod_scope=PodScope(PodIndex(), watch_mkdir=False))
    results: dict[str, str] = {}
    try:
        for rel in files:
            text = (root / rel).read_text(errors="replace")
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
            print(f"{results[rel].split(':')[0]:<8} {rel}"
                  + (f": {results[rel][9:]}" if results[rel] != "loaded" else ""), flush=True)
    finally:
        if mgr is not None:
            mgr.stop()
    return results


def summary(results: dict[str, str], release: str, how: str) -> tuple[int, int]:
    ok = sum(1 for v in results.values() if v == "loaded")
    total = len(results)
    print(f"served {ok} of {total} ({100 * ok / max(total, 1):.0f}%) on {release} {how}", flush=True)
    return ok, total


def with_named_files(args: argparse.Namespace, installed: dict[str, str], release: str) -> dict[str, object]:
    """The files refused as installed counted again by a child in its own mount namespace
    (``unshare --mount --propagation private``) where the named files are in place; the loaded ones
    stay loaded (placing files only adds paths that did not exist)."""
    refused = [rel for rel, v in installed.items() if v != "loaded"]
    print(f"-- with the named files in place (scripts/named_files.py): {len(refused)} refused counted again")
    with tempfile.TemporaryDirectory(prefix="tetrapipe-count-") as tmp:
        spec = Path(tmp) / "pass.json"
        spec.write_text(json.dumps({"files": refused, "parent_mnt_ns": os.readlink("/proc/self/ns/mnt")}))
        cmd = ["unshare", "--mount", "--propagation", "private", sys.executable, str(Path(__file__).resolve()),
               str(args.dir), "--named-files-pass", str(spec)] + (["--load"] if args.load else [])
        subprocess.run(cmd, check=True)
        child = json.loads((Path(tmp) / "result.json").read_text())
    results = {**installed, **child["results"]}
    ok, total = summary(results, release, "with the named files in place")
    for rel, v in results.items():
        if v != "loaded":
            print(f"  refused {rel}: {v[9:]}")
    return {"served": ok, "total": total, "placed": child["placed"], "results": results}


def named_files_pass(args: argparse.Namespace) -> int:
    spec_path = Path(args.named_files_pass)
    spec = json.loads(spec_path.read_text())
    placed = named_files.place_all(spec["parent_mnt_ns"])
    for target, how in placed.items():
        print(f"placed   {target}: {how}")
    feats = kernel_features.probe()
    results = count(args.dir, spec["files"], feats, args.load)
    (spec_path.parent / "result.json").write_text(json.dumps({"placed": placed, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
