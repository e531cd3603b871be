"""What the enricher's redaction filters cost: ``bench.e2e.enricher_cpu`` (decode, build, Avro
encode, Kafka-free) without a filter, with a filter that matches no process, and with one that
redacts every process, interleaved over rounds. Prints events per CPU second per round and the
median of each, then the cost of one ``redact_process`` call (what each new process entry pays
once; events copy the redacted entry).

    .venv/bin/python bench/redaction_cost.py --events 10000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import e2e  # noqa: E402
from tetrapipe.redaction import parse_redaction_filters, redact_process  # noqa: E402

CASES = {
    "no filter": "",
    "filter, no match": '{"redact":["--password[= ](\\\\S+)"]}',
    "filter, redacts every process": '{"redact":["--password[= ](\\\\S+)"]}\n{"redact":["--bench (\\\\S+)"]}',
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    runs: dict[str, list[float]] = {name: [] for name in CASES}
    for r in range(a.rounds):
        for name, text in CASES.items():
            out = e2e.enricher_cpu(a.events, profile=False, redaction_filters=text)
            runs[name].append(out["enricher_events_per_s_cpu"])
            print(f"round {r + 1} {name:32s} {out['enricher_events_per_s_cpu']:9.0f} events/CPU s", flush=True)
    base = statistics.median(runs["no filter"])
    print(f"\nmedian over {a.rounds} rounds of {a.events} events (enricher_cpu, Kafka-free):")
    for name, vals in runs.items():
        med = statistics.median(vals)
        print(f"  {name:32s} {med:9.0f} events/CPU s  ({(base / med - 1) * 100:+.1f} % CPU per event vs no filter;"
              f" spread {min(vals):.0f}-{max(vals):.0f})")
    filters = parse_redaction_filters(CASES["filter, no match"])
    print(f"\none redact_process call, filter {CASES['filter, no match']} (timeit, best of 5 x 20000):")
    for what, proc in (("process without the secret", {"binary": "/usr/bin/true", "arguments": '--bench "a b"'}),
                       ("mysql -h db -u app --password=hunter2 shop",
                        {"binary": "/usr/bin/mysql", "arguments": "-h db -u app --password=hunter2 shop"})):
        copy = min(timeit.repeat(lambda p=proc: dict(p), number=20000, repeat=5))
        per = (min(timeit.repeat(lambda p=proc: redact_process(filters, dict(p)), number=20000, repeat=5))
               - copy) / 20000
        print(f"  {what:44s} {per * 1e6:6.2f} µs per process entry")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
