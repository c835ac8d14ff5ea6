"""Topic set-up and broker reachability checks, done before Faust starts.

Faust creates missing topics itself but with whatever partition count a broker defaults to if a
client touched the topic first (Tansu auto-creates with 4), and then fails with PartitionsMismatch.
Creating and checking topics up front turns that into one clear error at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

__all__ = [
    "RECORD_LIMIT_BYTES",
    "AdminError",
    "BrokerUnreachable",
    "TopicMismatchError",
    "TopicSpec",
    "ensure_topics",
    "topic_exists",
    "wait_for_broker",
]

# `max.message.bytes` of the topics the worker writes (topology.app.TopicNames.specs says why),
# and the largest record `prefect-events produce` sends.
RECORD_LIMIT_BYTES = 16 * 1024 * 1024

_NO_ERROR = 0
_UNKNOWN_TOPIC = 3
_LEADER_NOT_AVAILABLE = 5
_TOPIC_ALREADY_EXISTS = 36
_RETRY_S = 0.2


class AdminError(RuntimeError):
    """Topic set-up failed; the message is one line a user can act on."""


class BrokerUnreachable(AdminError):
    """No Kafka broker answered at the given address in time."""


class TopicMismatchError(AdminError):
    """An existing topic has a different partition count than the one we need."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the worker needs it; partition counts must match exactly (keys hash to them)."""

    name: str
    partitions: int
    replication_factor: int = 1
    compacted: bool = False
    max_message_bytes: int | None = None  # None: the broker's `message.max.bytes`

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("topic name must not be empty")
        if self.partitions < 1:
            raise ValueError(f"topic {self.name}: partitions must be >= 1, got {self.partitions}")
        if self.replication_factor < 1:
            raise ValueError(
                f"topic {self.name}: replication_factor must be >= 1, got {self.replication_factor}"
            )

    def new_topic(self) -> Any:
        configs = {"cleanup.policy": "compact"} if self.compacted else {}
        if self.max_message_bytes is not None:
            configs["max.message.bytes"] = str(self.max_message_bytes)
        return NewTopic(self.name, self.partitions, self.replication_factor, topic_configs=configs)


async def wait_for_broker(bootstrap_servers: str, timeout_s: float) -> None:
    """Return once a broker at `bootstrap_servers` answers a metadata request.

    Retries until `timeout_s` because a broker started alongside the worker (compose, CI) may
    still be booting.
    """
    # Each failed attempt is expected while waiting; aiokafka would log every one at ERROR.
    with _quiet("aiokafka"):
        await _wait_for_broker(bootstrap_servers, timeout_s)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def _wait_for_broker(bootstrap_servers: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerUnreachable(
                f"cannot reach Kafka at {bootstrap_servers} within {timeout_s:g} s ({last_error})"
            )
        client = AIOKafkaClient(
            bootstrap_servers=bootstrap_servers,
            request_timeout_ms=max(1, int(remaining * 1000)),
        )
        try:
            await asyncio.wait_for(client.bootstrap(), timeout=remaining)
            return
        except TimeoutError:
            pass  # the deadline came: keep the last error an attempt gave ("no answer" if none)
        except (KafkaError, OSError) as exc:
            last_error = one_line(exc)
        finally:
            with contextlib.suppress(Exception):
                await client.close()
        await asyncio.sleep(min(_RETRY_S, max(0.0, deadline - time.monotonic())))


async def ensure_topics(
    bootstrap_servers: str, topics: Sequence[TopicSpec], *, timeout_s: float = 30
) -> None:
    """Create the missing topics, then check every topic's partition count.

    Creation tolerates TopicAlreadyExists, so concurrent workers can race here safely.
    """
    by_name: dict[str, TopicSpec] = {}
    for spec in topics:
        if by_name.setdefault(spec.name, spec) != spec:
            raise ValueError(f"topic {spec.name} is specified twice with different settings")
    if not by_name:
        return
    started = time.monotonic()
    await wait_for_broker(bootstrap_servers, timeout_s)
    remaining = max(0.001, timeout_s - (time.monotonic() - started))
    try:
        async with asyncio.timeout(remaining):
            await _create(bootstrap_servers, list(by_name.values()), timeout_s)
            await _check(bootstrap_servers, by_name)
    except TimeoutError:
        raise AdminError(
            f"topic set-up on {bootstrap_servers} did not finish within {timeout_s:g} s"
        ) from None


async def _create(bootstrap_servers: str, specs: list[TopicSpec], timeout_s: float) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000))
    try:
        await admin.start()
        response = await admin.create_topics(
            [spec.new_topic() for spec in specs], timeout_ms=int(timeout_s * 1000)
        )
    finally:
        await admin.close()
    for entry in response.to_object()["topic_errors"]:
        code = entry["error_code"]
        if code not in (_NO_ERROR, _TOPIC_ALREADY_EXISTS):
            message = entry.get("error_message") or f"error code {code}"
            raise AdminError(f"cannot create topic {entry['topic']}: {message}")


async def _check(bootstrap_servers: str, by_name: dict[str, TopicSpec]) -> None:
    """Compare partition counts, asking the broker NOT to auto-create anything.

    A plain metadata request for a missing topic makes Tansu (and Kafka with
    auto.create.topics.enable) create it with the broker default, which would hide the error.
    Freshly created topics may be briefly unknown on other brokers, so those are retried.
    """
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
    try:
        await client.bootstrap()
        pending = dict(by_name)
        while True:
            request = MetadataRequest(list(pending), allow_auto_topic_creation=False)
            response = await client.send(client.get_random_node(), request)
            for entry in response.to_object()["topics"]:
                spec = pending.get(entry["topic"])
                if spec is None:
                    continue
                code = entry["error_code"]
                if code in (_UNKNOWN_TOPIC, _LEADER_NOT_AVAILABLE):
                    continue
                if code != _NO_ERROR:
                    raise AdminError(f"cannot describe topic {spec.name}: error code {code}")
                actual = len(entry["partitions"])
                if actual != spec.partitions:
                    raise TopicMismatchError(
                        f"topic {spec.name} has {actual} partitions, expected {spec.partitions}"
                    )
                del pending[spec.name]
            if not pending:
                return
            await asyncio.sleep(_RETRY_S)
    finally:
        await client.close()


async def topic_exists(bootstrap_servers: str, topic: str) -> bool:
    """Whether the broker knows `topic`, asked without auto-creation (as `_check` asks): a client
    subscribing to a missing topic has the broker create it with its default partitions."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
    try:
        await client.bootstrap()
        request = MetadataRequest([topic], allow_auto_topic_creation=False)
        response = await client.send(client.get_random_node(), request)
    finally:
        await client.close()
    return all(entry["error_code"] != _UNKNOWN_TOPIC for entry in response.to_object()["topics"])


def one_line(exc: BaseException) -> str:
    """`Type: message` on one line (the message alone where it names its type already)."""
    text, name = " ".join(str(exc).split()), type(exc).__name__
    if text.startswith(name):  # aiokafka's errors name themselves
        return text
    return f"{name}: {text}" if text else name
