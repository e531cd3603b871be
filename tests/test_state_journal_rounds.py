"""The state journal on a real broker: a process that execs and exits within one round of the
enricher is never written (no value, no tombstone); one whose value went out gets its tombstone,
also when it is removed while that value is still being sent (the enricher builds the next round
meanwhile); one read back from the state topic after a restart gets its tombstone too."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition

from enricher import state
from enricher.process_cache import Entry
from tetrapipe import kafka
from tetrapipe.broker import EmbeddedBroker
from tetrapipe.config import Config


def _entry(eid: str, pid: int) -> Entry:
    return Entry(eid, pid, pid * 10, 0, {"binary": f"/bin/p{pid}"}, "", 0, "", pid, (0,) * 10, (0, 0, 0))


async def _read_all(bootstrap: str, topic: str, want: int) -> list[tuple[str, bytes | None]]:
    """(key, value) of every message, in order, once ``want`` arrived and 1 s passed quietly."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        await c.seek_to_beginning(tp)
        out: list[tuple[str, bytes | None]] = []
        quiet_since, deadline = time.monotonic(), time.monotonic() + 30
        while time.monotonic() < deadline:
            got = await c.getmany(tp, timeout_ms=200)
            msgs = [m for v in got.values() for m in v]
            out += [(m.key.decode(), m.value) for m in msgs]
            if msgs:
                quiet_since = time.monotonic()
            elif len(out) >= want and time.monotonic() - quiet_since > 1.0:
                break
        return out
    finally:
        await c.stop()


def test_short_lived_process_not_journaled_and_removals_of_sent_ones_tombstoned(broker: EmbeddedBroker) -> None:
    topic = f"state-rounds-{uuid.uuid4().hex[:8]}"
    cfg = Config(kafka=broker.bootstrap, state_topic=topic)

    async def run() -> None:
        await state.ensure_state_topic(cfg)
        p = await kafka.start_producer(cfg)
        try:
            j = state.StateJournal(topic)
            short, long_lived, racing = _entry("short", 1), _entry("long", 2), _entry("racing", 3)
            j.changed(short)
            j.changed(long_lived)
            j.removed(short)          # exec and exit in one round: dropped, never sent
            assert "short" not in j.dirty
            await asyncio.gather(*await j.flush(p))
            j.removed(long_lived)     # its value went out: tombstone
            j.changed(racing)
            sending = asyncio.ensure_future(j.flush(p))
            await asyncio.sleep(0)    # the flush has begun sending "racing" ...
            j.removed(racing)         # ... when the next round removes it: tombstone still
            await asyncio.gather(*await sending)
            restored = state.entry_from_json(state.entry_to_json(_entry("restored", 4)))
            j2 = state.StateJournal(topic)  # a restarted enricher, its cache read from the topic
            j2.removed(restored)
            await asyncio.gather(*await j.flush(p), *await j2.flush(p))
        finally:
            await p.stop()

    asyncio.run(run())
    got = asyncio.run(_read_all(broker.bootstrap, topic, 5))
    keys = [k for k, _ in got]
    assert "short" not in keys
    assert [v is None for k, v in got if k == "long"] == [False, True]
    assert [v is None for k, v in got if k == "racing"] == [False, True]
    assert [v is None for k, v in got if k == "restored"] == [True]
