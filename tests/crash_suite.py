"""Crash suite: nothing generated is lost, whatever single fault hits the pipeline.

While a generator execs ``/bin/true tpcs-<run>-<phase>-<n>`` at a steady rate (events with known
identities), the suite hits the pipeline with one fault at a time:

- ``collector``: kill -9, restart (its spool survives in the state dir);
- ``enricher``: kill -9, restart (uncommitted raw batches are read again);
- ``export-<sink>``: kill -9 each exporter, restart (uncommitted events are written again);
- ``broker``: SIGSTOP the broker for ``--outage`` seconds (60 by default), SIGCONT.

At the end it reads the JSON export and prints, per fault: events generated, exported, duplicated
and lost. Events the kernel never reported because the collector was not running (between its
kill and its restart), and records that died in its memory at the kill, are counted separately
as the collector-restart loss and do not fail the run; every other missing event does.

Runs on its own broker (so pausing it disturbs no one) and needs root (it loads BPF)::

    sudo .venv/bin/python tests/crash_suite.py                 # full run, 60 s outage
    sudo .venv/bin/python tests/crash_suite.py --outage 15     # CI length
    sudo .venv/bin/python tests/crash_suite.py --rounds 5 --rate 50   # longer soak

Every event is looked for in the JSON export and at a Forward Protocol receiver fed by the
fluentd exporter (tests/fluent_receiver.py); a result row per fault and destination.

``--kafka-cluster``: on a three-node Apache Kafka cluster (tests/kafka_cluster.py; topics with 3
replicas, min.insync.replicas 2) instead of the embedded broker, with the Kafka faults

- ``kafka-leader-raw`` / ``kafka-leader-events``: kill -9 the leader of the raw / events
  partition, start it again;
- ``kafka-follower``: kill -9 a follower of the raw partition, start it again;
- ``kafka-all``: stop every node, start them again (data on disk survives);

and a policy (open of /etc/ld.so.cache by the generator's binary) so each generated exec also
makes a policy event: every one must be exported, none dead-lettered.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fluent_receiver import FluentReceiver  # noqa: E402
from harness import Pipeline, export_text, wait_until  # noqa: E402

from tetrapipe.broker import EmbeddedBroker  # noqa: E402

KAFKA_FAULTS = ("kafka-leader-raw", "kafka-leader-events", "kafka-follower", "kafka-all")
POLICY_NAME = "crash-suite-ld-cache"
POLICY = f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {POLICY_NAME}
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args:
    - index: 1
      type: string
    selectors:
    - matchArgs:
      - index: 1
        operator: Equal
        values: ["/etc/ld.so.cache"]
      matchBinaries:
      - operator: In
        values: ["/usr/bin/true"]
"""

GEN_BINARY = "/bin/true"
EXPORTERS = ("json", "fluentd")


@dataclass
class Generated:
    ident: str
    phase: str
    t: float  # time.monotonic() after the process exited


@dataclass
class Generator:
    """Execs GEN_BINARY with a unique argument ``rate`` times a second, in a thread."""

    run_id: str
    rate: float
    phase: str = "warmup"
    events: list[Generated] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="generator", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = 1.0 / self.rate
        nxt = time.monotonic()
        n = 0
        while not self._stop.is_set():
            ident = f"tpcs-{self.run_id}-{self.phase}-{n}"
            subprocess.run([GEN_BINARY, ident], check=False)
            self.events.append(Generated(ident, self.phase, time.monotonic()))
            n += 1
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


@dataclass
class FaultResult:
    fault: str
    sink: str = "json"
    generated: int = 0
    exported: int = 0
    duplicated: int = 0
    lost: int = 0
    collector_restart_loss: int = 0  # missing, but inside the collector's down window
    notes: str = ""

    def row(self) -> str:
        return (f"{self.fault:<14} {self.sink:<8} {self.generated:>9} {self.exported:>8} {self.duplicated:>10} "
                f"{self.lost:>5} {self.collector_restart_loss:>22}  {self.notes}")


HEADER = (f"{'fault':<14} {'sink':<8} {'generated':>9} {'exported':>8} {'duplicated':>10} {'lost':>5} "
          f"{'collector_restart_loss':>22}  notes")


def read_export(path: Path) -> tuple[list[dict], int]:
    """Events of the JSON export, rotated backups included, and the number of lines that are
    not whole JSON objects."""
    events, torn = [], 0
    text = export_text(path)  # with the rotated backups: they are part of the export
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    return events, torn


def exported_idents(events: list[dict], run_id: str, kind: str = "process_exec") -> Counter[str]:
    prefix = f"tpcs-{run_id}-"
    seen: Counter[str] = Counter()
    for ev in events:
        p = (ev.get(kind) or {}).get("process") or {}
        args = p.get("arguments", "")
        if args.startswith(prefix) and p.get("binary", "").endswith("/true"):
            seen[args] += 1
    return seen


class Suite:
    def __init__(self, tmp: Path, outage: float, rate: float, settle: float, rounds: int,
                 faults: list[str], log: bool = True, kafka: object | None = None) -> None:
        self.tmp = tmp
        self.outage = outage
        self.settle = settle
        self.rounds = rounds
        self.faults = faults
        self.log_enabled = log
        self.run_id = uuid.uuid4().hex[:8]
        self.gen = Generator(self.run_id, rate)
        self.kafka = kafka  # a started tests/kafka_cluster.KafkaCluster, or the embedded broker
        self.broker = EmbeddedBroker(log_path=tmp / "broker.log")
        self.policy_missing: dict[str, int] = {}  # sink -> generated execs without their policy event
        self.policy_without_process: dict[str, int] = {}  # sink -> policy events with flags "miss"
        # as `tetrapipe run` or Kubernetes would: a service that exits on its own is started again
        self.self_restarts: list[str] = []
        self._killing: set[str] = set()
        self._sup_stop = threading.Event()
        self.fluent = FluentReceiver()
        self.pipe: Pipeline | None = None
        # phase -> (t_kill, t_ready) of the collector fault
        self.collector_windows: dict[str, tuple[float, float]] = {}
        self.spool_written = 0.0
        self.notes: dict[str, str] = {}
        self.audit: dict[str, float] = {}
        self.dead: list[str] = []
        self.torn = 0

    def say(self, msg: str) -> None:
        if self.log_enabled:
            print(f"[crash-suite {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # ---- faults -------------------------------------------------------------------------
    def kill_restart(self, name: str, phase: str) -> None:
        assert self.pipe is not None
        svc = self.pipe.services[name]
        argv = svc.argv
        time.sleep(1.0)
        self._killing.add(name)
        t_kill = time.monotonic()
        svc.signal(signal.SIGKILL)
        assert svc.proc is not None
        svc.proc.wait()
        self.say(f"{name}: killed -9 (pid {svc.proc.pid})")
        time.sleep(1.0)
        new = self.pipe.start(name, *argv)
        t_ready = time.monotonic()
        self.say(f"{name}: restarted (pid {new.proc.pid if new.proc else '?'}), "
                 f"down {t_ready - t_kill:.1f}s")
        if name == "collector":
            self.collector_windows[phase] = (t_kill, t_ready)
        self._killing.discard(name)
        time.sleep(1.0)

    def _supervise(self) -> None:
        """Start again a service that exited on its own (not one the suite is killing)."""
        while not self._sup_stop.wait(1.0):
            assert self.pipe is not None
            for name, svc in list(self.pipe.services.items()):
                if name in self._killing or svc.proc is None or svc.proc.poll() is None:
                    continue
                code = svc.proc.returncode
                self.self_restarts.append(f"{name} exited {code} in phase {self.gen.phase}")
                self.say(f"{name} exited on its own with {code}: starting it again")
                self.pipe.start(name, *svc.argv, wait=False)

    def broker_outage(self, phase: str) -> None:
        assert self.pipe is not None
        col = self.pipe.services["collector"]
        before = col.metric("tetrapipe_spool_batches_written_total")
        time.sleep(1.0)
        self.broker.pause()
        self.say(f"broker: SIGSTOP for {self.outage:.0f}s")
        try:
            time.sleep(self.outage)
        finally:
            self.broker.resume()
        self.say("broker: SIGCONT")
        written = col.metric("tetrapipe_spool_batches_written_total") - before
        self.spool_written += written
        self.notes[phase] = f"{written:.0f} batches spooled during the outage"
        # the spool replays; wait until it is empty again
        wait_until(lambda: col.metric("tetrapipe_spool_batches") == 0, timeout=120,
                   what="collector spool replayed")
        time.sleep(1.0)

    def kafka_fault(self, fault: str, phase: str) -> None:
        """kill -9 a leader or a follower, or stop every node; then start them again."""
        assert self.pipe is not None and self.kafka is not None
        k = self.kafka
        time.sleep(1.0)
        if fault == "kafka-all":
            k.stop()  # type: ignore[attr-defined]
            self.say("kafka: every node stopped")
            time.sleep(5.0)
            t0 = time.monotonic()
            k.start()  # type: ignore[attr-defined]
            self.notes[phase] = f"all 3 nodes down 5 s, back in {time.monotonic() - t0:.0f} s"
        else:
            topic = self.pipe.base["events_topic" if fault == "kafka-leader-events" else "raw_topic"]
            leader, replicas, _isr = k.partition_roles(topic)  # type: ignore[attr-defined]
            victim = leader if fault.startswith("kafka-leader") else next(r for r in replicas if r != leader)
            k.kill9(victim)  # type: ignore[attr-defined]
            self.say(f"kafka: node {victim} ({'leader' if victim == leader else 'follower'} of {topic}) "
                     "killed -9")
            t0 = time.monotonic()
            new_leader = leader
            while time.monotonic() - t0 < 20:  # the cluster notices the death, elects another
                new_leader = k.partition_roles(topic)[0]  # type: ignore[attr-defined]
                if new_leader not in (victim, -1) or victim != leader:
                    break
                time.sleep(0.5)
            elect = time.monotonic() - t0
            time.sleep(max(0.0, 3.0 - elect))  # events flow a while without it
            k.restart_node(victim)  # type: ignore[attr-defined]
            self.notes[phase] = (f"node {victim} killed; leader {leader} -> {new_leader} "
                                 f"after {elect:.0f} s")
        self.say(f"kafka: back ({self.notes[phase]})")
        time.sleep(2.0)

    # ---- run ----------------------------------------------------------------------------
    def run(self) -> list[FaultResult]:
        settings = {}
        if self.kafka is not None:
            bootstrap = self.kafka.bootstrap  # type: ignore[attr-defined]
            pol = self.tmp / "policy.yaml"
            pol.write_text(POLICY)
            settings["tracing_policy"] = str(pol)
            settings["kafka_stuck_exit_s"] = "15"
        else:
            self.broker.start()
            bootstrap = self.broker.bootstrap
        self.fluent.start()
        self.say(f"broker on {bootstrap}, fluentd receiver on {self.fluent.address}; "
                 f"run id {self.run_id}")
        self.pipe = Pipeline(bootstrap, self.tmp,
                             settings={**settings, "procfs_bootstrap": "false", "spool_send_timeout_s": "3",
                                       "fluentd_address": self.fluent.address,
                                       # every process of this busy host is exported: with the
                                       # default 10 MB x 5 backups, rotation deletes the evidence
                                       "export_file_max_size_mb": "0"})
        try:
            self.pipe.start_all(exporters=EXPORTERS)
            if self.kafka is not None:  # the embedded-broker run keeps "a service died" a failure
                threading.Thread(target=self._supervise, name="supervise", daemon=True).start()
            self.gen.start()
            time.sleep(2.0)
            order: list[str] = []
            for r in range(self.rounds):
                for f in self.faults:
                    phase = f if self.rounds == 1 else f"{f}{r}"
                    order.append(phase)
                    self.gen.phase = phase
                    self.say(f"fault {phase}")
                    if f == "broker":
                        self.broker_outage(phase)
                    elif f in KAFKA_FAULTS:
                        self.kafka_fault(f, phase)
                    else:
                        self.kill_restart(f, phase)
            self.gen.phase = "after"
            time.sleep(2.0)
            self.gen.stop()
            self.say(f"generator stopped: {len(self.gen.events)} events")
            return self.collect(["warmup", *order, "after"])
        finally:
            self.gen.stop()
            self._sup_stop.set()
            if self.pipe:
                self.pipe.stop()
            if self.kafka is None:
                self.broker.stop()
            self.fluent.stop()

    def collect(self, phases: list[str]) -> list[FaultResult]:
        assert self.pipe is not None
        def in_collector_window(g: Generated) -> bool:
            w = self.collector_windows.get(g.phase)
            return bool(w and w[0] - 0.5 <= g.t <= w[1])

        wanted = {g.ident for g in self.gen.events if not in_collector_window(g)}

        kinds = ["process_exec"] + (["process_kprobe"] if self.kafka is not None else [])

        def all_in() -> bool:
            events, _ = read_export(self.pipe.export_file)  # type: ignore[union-attr]
            return all(wanted <= set(exported_idents(evs, self.run_id, kind))
                       for evs in (events, self.fluent_records()) for kind in kinds)

        try:
            wait_until(all_in, timeout=self.settle, interval=0.5, what="every event exported")
        except AssertionError:
            pass  # reported below as loss
        events, torn = read_export(self.pipe.export_file)
        seen_by = {"json": exported_idents(events, self.run_id),
                   "fluentd": exported_idents(self.fluent_records(), self.run_id)}
        if self.kafka is not None:
            for sink, evs in (("json", events), ("fluentd", self.fluent_records())):
                pol = set(exported_idents(evs, self.run_id, "process_kprobe"))
                # a policy event built without its process (flags "miss": the enricher lost the
                # process at a restart) is delivered, not lost: matched by pid, counted apart
                by_pid = {str((ev.get("process_exec") or {}).get("process", {}).get("pid")):
                          (ev.get("process_exec") or {}).get("process", {}).get("arguments", "")
                          for ev in evs if "process_exec" in ev}
                missed = {by_pid.get(str(ev["process_kprobe"]["process"].get("pid")), "")
                          for ev in evs if "process_kprobe" in ev
                          and ev["process_kprobe"].get("policy_name") == POLICY_NAME
                          and "miss" in ev["process_kprobe"]["process"].get("flags", "")}
                self.policy_without_process[sink] = len((wanted - pol) & missed)
                self.policy_missing[sink] = len(wanted - pol - missed)
        svc = self.pipe.services
        # a service that died on its own (not one the suite killed and restarted) is a failure
        self.dead = [n for n, v in svc.items() if v.proc is not None and v.proc.poll() is not None]
        self.audit = {
            "enricher raw batches missing": svc["enricher"].metric("tetrapipe_sequence_missing"),
            "enricher raw batches duplicated": svc["enricher"].metric(
                "tetrapipe_sequence_duplicates_total"),
            "collector spool drops": svc["collector"].metric("tetrapipe_spool_batches_dropped_total"),
            "collector ring-buffer lost": svc["collector"].metric(
                "tetrapipe_observer_ringbuf_events_lost_total"),
            "enricher dead letters": svc["enricher"].metric("tetrapipe_deadletter_messages_total"),
            "enricher unknown-policy records": svc["enricher"].metric(
                "tetrapipe_policy_events_unknown_policy_total"),
        }
        for e in EXPORTERS:
            m = svc[f"export-{e}"].metric
            self.audit[f"export-{e} events missing"] = m("tetrapipe_sequence_missing")
            self.audit[f"export-{e} events duplicated (skipped)"] = m(
                "tetrapipe_sequence_duplicates_total")
        self.torn = torn
        results = []
        for phase in phases:
            gen = [g for g in self.gen.events if g.phase == phase]
            for sink, seen in seen_by.items():
                res = FaultResult(phase, sink, generated=len(gen), notes=self.notes.get(phase, ""))
                for g in gen:
                    n = seen.get(g.ident, 0)
                    if n:
                        res.exported += 1
                        res.duplicated += n - 1
                    elif in_collector_window(g):
                        res.collector_restart_loss += 1
                    else:
                        res.lost += 1
                results.append(res)
        return results

    def fluent_records(self) -> list[dict]:
        """What reached the fluentd receiver, in the JSON export's shape (the record is the
        event's protojson)."""
        return [r.record for r in self.fluent.snapshot()]


def print_report(results: list[FaultResult], torn: int, audit: dict[str, float] | None = None) -> None:
    print(HEADER)
    for r in results:
        print(r.row())
    for sink in dict.fromkeys(r.sink for r in results):
        tot = FaultResult("total", sink)
        for r in results:
            if r.sink != sink:
                continue
            tot.generated += r.generated
            tot.exported += r.exported
            tot.duplicated += r.duplicated
            tot.lost += r.lost
            tot.collector_restart_loss += r.collector_restart_loss
        print(tot.row())
    print(f"torn lines in the JSON export: {torn}")
    for k, v in (audit or {}).items():
        print(f"sequence audit (last processes): {k}: {v:.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outage", type=float, default=60.0, help="broker outage, seconds (60)")
    ap.add_argument("--rate", type=float, default=20.0, help="generated execs per second (20)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the fault list (1)")
    ap.add_argument("--settle", type=float, default=60.0, help="wait for the export at the end (60 s)")
    ap.add_argument("--faults", default=",".join(["collector", "enricher",
                                                  *(f"export-{e}" for e in EXPORTERS), "broker"]))
    ap.add_argument("--workdir", help="keep logs and the export here (default: a temp dir)")
    ap.add_argument("--kafka-cluster", action="store_true",
                    help="on a 3-node Apache Kafka cluster, with the Kafka faults and a policy")
    args = ap.parse_args(argv)
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="tetrapipe-crash-"))
    tmp.mkdir(parents=True, exist_ok=True)
    faults = [f for f in args.faults.split(",") if f]
    cluster = None
    if args.kafka_cluster:
        from kafka_cluster import KafkaCluster

        cluster = KafkaCluster(tmp / "kafka", size=3).start()
        faults = [f for f in faults if f != "broker"] + list(KAFKA_FAULTS)
    try:
        suite = Suite(tmp, args.outage, args.rate, args.settle, args.rounds, faults, kafka=cluster)
        results = suite.run()
    finally:
        if cluster is not None:
            cluster.stop()
    if suite.policy_missing:
        print(f"generated execs without their policy event: {suite.policy_missing}; "
              f"policy events without their process (flags miss): {suite.policy_without_process}")
    if suite.self_restarts:
        print(f"services that exited on their own and were started again: {suite.self_restarts}")
    print_report(results, suite.torn, suite.audit)
    if suite.dead:
        print(f"services that died on their own: {', '.join(suite.dead)}")
    print(f"logs and export in {tmp}")
    bad = sum(r.lost for r in results) or suite.torn or suite.dead
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
