"""Shared pytest fixtures, one section each. Add new fixtures in a section of their own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest

# ---------------------------------------------------------------------------------------------
# Kafka broker: one per session, started on first use, stopped at session end.
# Order: KAFKA_BOOTSTRAP_SERVERS if set; else Kafka in Docker (testcontainers, KRaft) when a
# Docker engine answers; else the embedded Tansu broker (topology/embedded_broker.py).
# ---------------------------------------------------------------------------------------------

BrokerKind = Literal["external", "testcontainers", "embedded"]
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"


@dataclass(frozen=True)
class SessionBroker:
    kind: BrokerKind
    bootstrap_servers: str
    detail: str


_BROKER_USED = pytest.StashKey[SessionBroker]()
_DOCKER_FAILED = pytest.StashKey[str]()


def _docker_engine_answers(timeout_s: float = 3.0) -> bool:
    """Ping the engine the way testcontainers will reach it; False fast when there is none."""
    try:
        from testcontainers.core.docker_client import DockerClient, get_docker_host

        if get_docker_host() is None and not os.path.exists("/var/run/docker.sock"):
            return False  # docker-py would only fail on the default socket (and leak it)
        client = DockerClient(timeout=timeout_s).client
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_broker(pytestconfig: pytest.Config) -> Iterator[SessionBroker]:
    """The session's broker; prefer `bootstrap_servers` / `broker_kind` in tests."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        broker = SessionBroker("external", external, "from KAFKA_BOOTSTRAP_SERVERS")
        pytestconfig.stash[_BROKER_USED] = broker
        yield broker
        return
    if _docker_engine_answers():
        from testcontainers.community.kafka import KafkaContainer

        container: KafkaContainer | None = None
        try:
            container = KafkaContainer(KAFKA_IMAGE).with_kraft()
            container.start()
        except Exception as exc:  # image pull or start failed: fall back, and say so
            pytestconfig.stash[_DOCKER_FAILED] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if container is not None:
                with contextlib.suppress(Exception):
                    container.stop()
        else:
            try:
                broker = SessionBroker(
                    "testcontainers", container.get_bootstrap_server(), f"{KAFKA_IMAGE}, KRaft"
                )
                pytestconfig.stash[_BROKER_USED] = broker
                yield broker
            finally:
                container.stop()
            return
    from topology.embedded_broker import EmbeddedBroker

    with EmbeddedBroker() as embedded:
        broker = SessionBroker("embedded", embedded.bootstrap_servers, f"Tansu pid {embedded.pid}, memory://")
        pytestconfig.stash[_BROKER_USED] = broker
        yield broker


@pytest.fixture(scope="session")
def bootstrap_servers(kafka_broker: SessionBroker) -> str:
    """`host:port` of the session's broker (started lazily by the first test that asks)."""
    return kafka_broker.bootstrap_servers


@pytest.fixture(scope="session")
def broker_kind(kafka_broker: SessionBroker) -> BrokerKind:
    """One of external, testcontainers, embedded: tests of Tansu's defects need embedded."""
    return kafka_broker.kind


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    broker = config.stash.get(_BROKER_USED, None)
    if broker is None:
        terminalreporter.write_line("kafka broker: none started (no test needed one)")
    else:
        terminalreporter.write_line(
            f"kafka broker: {broker.kind} at {broker.bootstrap_servers} ({broker.detail})"
        )
    failed = config.stash.get(_DOCKER_FAILED, None)
    if failed:
        terminalreporter.write_line(f"kafka broker: Docker was available but failed: {failed}")
    terminalreporter.write_line(_golden_summary())


def _golden_summary() -> str:
    """Where the golden cases came from, or that there were none: a clone that does not sit
    beside shared/ would otherwise pass with its golden checks quietly gone."""
    from tests.spec_helpers import GOLDEN_DIR, golden_cases

    cases = golden_cases()
    if cases:
        return f"golden cases: {len(cases)} at {GOLDEN_DIR}"
    return (
        f"golden cases: none at {GOLDEN_DIR}, so the tests that use them were skipped "
        "(set PREFECT_EVENTS_GOLDEN_DIR to shared/golden)"
    )
