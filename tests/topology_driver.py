"""A broker-free driver of the worker's topology, in the spirit of Kafka Streams'
TopologyTestDriver: raw records in, the same steps the agents run, records routed between them by
topic and partition, table writes applied, until nothing is left to process.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from topology import steps
from topology.records import Headers, Out, partition_for
from topology.steps import BatchResult, InRecord, Topics

RETENTION_US = 7 * 86_400_000_000


def topics(partitions: int = 4, raw_partitions: int = 4) -> Topics:
    return Topics(
        artifact_events="events.artifacts",
        asset_events="events.assets",
        dead_letters="dead-letters",
        artifacts_by_id="by-id",
        artifacts_by_key="by-key",
        task_results_by_flow_run="by-flow-run",
        partitions=partitions,
        raw_artifacts="raw.artifacts",
        raw_task_results="raw.task-results",
        raw_partitions=raw_partitions,
    )


@dataclass
class Driver:
    topics: Topics
    batch_size: int = 1
    logs: dict[tuple[str, int], list[InRecord]] = field(default_factory=lambda: defaultdict(list))
    tables: dict[str, dict[bytes, bytes]] = field(default_factory=lambda: defaultdict(dict))
    queue: deque[tuple[str, int]] = field(default_factory=deque)
    positions: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    # (table, partition, key, value; None deletes) of every state write, when asked to keep them
    changelog: list[tuple[str, int, bytes, bytes | None]] | None = None

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Headers = (),
    ) -> None:
        count = self.topics.raw_partitions if topic.startswith("raw.") else self.topics.partitions
        if partition is None:
            partition = partition_for(key, count) if key is not None else 0
        self._append(Out(topic, key, value, list(headers), partition))

    def _append(self, out: Out) -> None:
        partition = out.partition
        if partition is None:  # the producer's choice: by key, or any partition (0) without one
            partition = 0 if out.key is None else partition_for(out.key, self.topics.partitions)
        log = self.logs[(out.topic, partition)]
        log.append(InRecord(out.topic, partition, len(log), out.key, out.value, tuple(out.headers)))
        self.queue.append((out.topic, partition))

    def _step_for(self, topic: str) -> tuple[str, Callable[[Sequence[InRecord], steps.Load], BatchResult]]:
        t = self.topics
        if topic in (t.raw_artifacts, t.artifacts_by_id):
            return "memberships", lambda b, load: steps.apply_memberships(t, b, load)
        if topic == t.artifacts_by_key:
            return "collections", lambda b, load: steps.apply_collections(t, b, load)
        return "lineage", lambda b, load: steps.apply_lineage(t, b, load, RETENTION_US)

    def run(self) -> None:
        """Process pending records, oldest log first, `batch_size` at a time, until none is left."""
        while self.queue:
            topic, partition = self.queue.popleft()
            log = self.logs[(topic, partition)]
            start = self.positions[(topic, partition)]
            if start >= len(log):
                continue
            batch = log[start : start + self.batch_size]
            self.positions[(topic, partition)] = start + len(batch)
            if start + len(batch) < len(log):
                self.queue.append((topic, partition))
            if topic in (self.topics.artifact_events, self.topics.asset_events, self.topics.dead_letters):
                continue
            name, process = self._step_for(topic)
            table = self.tables[name]
            result = process(batch, lambda key, _partition, table=table: table.get(key))
            for out in result.outputs:
                self._append(out)
            for writes in (result.writes_before, result.writes):
                for key, (partition, value) in writes.items():
                    table[key] = value
                    if self.changelog is not None:
                        self.changelog.append((name, partition, key, value))
            for key, partition in result.deletes_after.items():
                table.pop(key, None)
                if self.changelog is not None:
                    self.changelog.append((name, partition, key, None))

    def events(self, topic: str) -> list[bytes]:
        return [r.value or b"" for (name, _), log in sorted(self.logs.items()) if name == topic for r in log]
