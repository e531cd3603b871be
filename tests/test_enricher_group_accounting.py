"""The N-enricher bench's accounting (bench/enricher_group.py) and the enricher's count of the
raw partitions its group hands it: nodes spread one per partition by the producer's own
partitioner, lost / doubled / orphaned events found in what the group wrote, and a rebalance
visible as more assignments than partitions. No broker: the functions the bench's verdict rests on."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import REGISTRY

from bench.enricher_group import check_outputs, spread_nodes
from enricher.service import Enricher, StateRestorer
from tetrapipe.config import Config


def test_nodes_land_one_per_partition_as_the_collector_keys_them() -> None:
    part = DefaultPartitioner()
    for n in (1, 2, 3, 4, 6):
        names = spread_nodes("node-abc", n)
        assert len(set(names)) == n
        assert [part(x.encode(), list(range(n)), list(range(n))) for x in names] == list(range(n))


def test_outputs_lost_doubled_and_orphans_are_counted() -> None:
    ok = [(b"root", "process_exec", False), (b"a", "process_exec", True), (b"a", "process_exit", True)]
    assert check_outputs(ok, 3, roots=1) == {"events_read": 3, "distinct": 3, "lost": 0, "doubled": 0,
                                             "extra": 0, "orphans": 0}
    # the exit of "a" lost, its exec written twice, "b" built without its parent (a split tree)
    bad = [(b"root", "process_exec", False), (b"a", "process_exec", True), (b"a", "process_exec", True),
           (b"b", "process_exec", False), (b"b", "process_exit", True)]
    got = check_outputs(bad, 5, roots=1)
    assert (got["events_read"], got["distinct"], got["lost"], got["doubled"], got["orphans"]) == (5, 4, 1, 1, 1)
    # as many messages as expected, yet one lost and one doubled: the count alone would not tell
    assert check_outputs(ok[:2] + ok[1:2], 3, roots=1)["lost"] == 1


def test_each_assignment_of_raw_partitions_is_counted() -> None:
    name = "tetrapipe_enricher_partitions_assigned_total"
    before = REGISTRY.get_sample_value(name) or 0.0
    restorer = StateRestorer(Config(node_name="n", state_topic=""), Enricher(Config(node_name="n", state_topic="")),
                             None)  # no state topic: nothing to replay, no producer used
    asyncio.run(restorer.on_partitions_assigned([TopicPartition("raw", 0), TopicPartition("raw", 1)]))
    asyncio.run(restorer.on_partitions_assigned([TopicPartition("raw", 1)]))  # after a rebalance
    assert REGISTRY.get_sample_value(name) == before + 3
