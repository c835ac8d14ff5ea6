"""The CLI's contract: one-line errors with exit codes, the effective config, offline processing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

from topology import config
from topology.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "topology.cli", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["config", "--partitions", "x"],
            "prefect-events: error: --partitions: expected an integer, got 'x'",
        ),
        (["config", "--partitions", "0"], "prefect-events: error: partitions: 0 is out of range [1, 10000]"),
        (
            ["config", "--changelog-batch-records", "-1"],
            "prefect-events: error: changelog_batch_records: -1 is out of range [0, 1000000]",
        ),
        (
            ["config", "--store", "redis://"],
            "prefect-events: error: store: 'redis://' must be memory:// or rocksdb://",
        ),
        (
            ["config", "--bootstrap-servers", "no-port"],
            "prefect-events: error: bootstrap_servers: 'no-port' is not a HOST:PORT[,HOST:PORT] list",
        ),
        (
            ["config", "--processing-guarantee", "maybe"],
            "prefect-events: error: processing_guarantee: 'maybe' must be one of at_least_once",
        ),
        (
            ["config", "--processing-guarantee", "exactly_once"],
            "prefect-events: error: processing_guarantee: exactly_once is not supported: Faust's "
            "transactions follow the destination partition and this worker re-keys records across "
            "partitions; at_least_once with the worker's replay marks gives byte-identical "
            "duplicates at most (README, Guarantees)",
        ),
        (
            ["config", "--artifact-events-topic", "prefect.raw.artifacts"],
            "prefect-events: error: topics: input, output and dead-letter topics must all be different",
        ),
        (
            ["process", "--stream", "artifacts", "/no/such/file"],
            "prefect-events: error: cannot read /no/such/file: No such file or directory",
        ),
        (
            ["config", "--broker-wait-s", "inf"],
            "prefect-events: error: broker_wait_s: inf is not a finite number",
        ),
        (
            ["config", "--commit-interval-s=-inf"],
            "prefect-events: error: commit_interval_s: -inf is not a finite number",
        ),
        (
            ["config", "--session-timeout-s", "nan"],
            "prefect-events: error: session_timeout_s: nan is not a finite number",
        ),
        (
            ["config", "--lineage-retention-days", "1e300"],
            "prefect-events: error: lineage_retention_days: 1e+300 is out of range (0, 36500]",
        ),
        (
            ["process", "--stream", "assets", "--lineage-retention-days", "nan", "-"],
            "prefect-events: error: lineage_retention_days: nan is not a finite number",
        ),
        (
            ["process", "--stream", "assets", "--lineage-retention-days", "1e300", "-"],
            "prefect-events: error: lineage_retention_days: 1e+300 is out of range (0, 36500]",
        ),
        (
            ["process", "--stream", "assets", "--lineage-retention-days", "0", "-"],
            "prefect-events: error: lineage_retention_days: 0.0 is out of range (0, 36500]",
        ),
        (
            ["config", "--allowed-lateness-hours", "-1"],
            "prefect-events: error: allowed_lateness_hours: -1.0 is out of range [0, 876000]",
        ),
        (
            ["process", "--stream", "assets", "--allowed-lateness-hours", "876001", "-"],
            "prefect-events: error: allowed_lateness_hours: 876001.0 is out of range [0, 876000]",
        ),
        (
            ["process", "--stream", "assets", "--allowed-lateness-hours", "inf", "-"],
            "prefect-events: error: allowed_lateness_hours: inf is not a finite number",
        ),
        (
            ["process", "--stream", "assets", "--allowed-lateness-hours", "a day", "-"],
            "prefect-events: error: --allowed-lateness-hours: expected a number, got 'a day'",
        ),
        (
            ["config", "--dead-letter-topic", ".."],
            "prefect-events: error: dead_letter_topic: '..' is not a valid Kafka topic name",
        ),
        (
            ["config", "--artifacts-topic", "."],
            "prefect-events: error: artifacts_topic: '.' is not a valid Kafka topic name",
        ),
        (
            ["config", "--asset-events-topic", "events\n"],
            "prefect-events: error: asset_events_topic: 'events\\n' is not a valid Kafka topic name",
        ),
        (
            ["config", "--bootstrap-servers", "127.0.0.1:99999"],
            "prefect-events: error: bootstrap_servers: port 99999 of '127.0.0.1:99999' "
            "is out of range [1, 65535]",
        ),
        (
            ["config", "--bootstrap-servers", "k1:9092,k2:0"],
            "prefect-events: error: bootstrap_servers: port 0 of 'k2:0' is out of range [1, 65535]",
        ),
        (
            ["config", "--bootstrap-servers", "::1:9092"],
            "prefect-events: error: bootstrap_servers: '::1:9092' is not a HOST:PORT[,HOST:PORT] list",
        ),
        (
            ["config", "--broker-wait-s", "0"],
            "prefect-events: error: broker_wait_s: 0.0 is out of range (0, 86400]",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert result.stderr.decode() == message + "\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["config", "--commit-interval-s", "-inf"],
            "prefect-events config: error: argument --commit-interval-s: expected one argument",
        ),
        ([], "prefect-events: error: the following arguments are required: COMMAND"),
        # argparse took 3 as the file and reported the file as the unknown flag's argument
        (
            ["process", "--stream", "artifacts", "--partitions", "3", "/dev/null"],
            "prefect-events: error: unrecognized arguments: --partitions",
        ),
        (
            ["process", "--stream", "artifacts", "/dev/null", "more"],
            "prefect-events: error: unrecognized arguments: more",
        ),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = cli(*args)
    assert (result.returncode, result.stderr.decode()) == (2, message + " (see --help)\n")


@pytest.mark.parametrize("command", ["worker", "process", "produce", "tail", "config", "demo", "forward"])
def test_every_command_explains_itself(command: str) -> None:
    result = cli(command, "--help")
    assert (result.returncode, result.stderr) == (0, b"")
    if command != "process":  # the offline command takes no broker settings
        for f in dataclasses.fields(config.Settings):
            assert "--" + f.name.replace("_", "-") in result.stdout.decode()


def test_a_settings_help_may_say_percent() -> None:
    result = cli("worker", "--help")
    assert "~20% of its throughput" in " ".join(result.stdout.decode().split())


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (
            "demo",
            [
                "Start the embedded broker (unless --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS names "
                "a broker), a worker on it,",
                "--seconds SECONDS give up after this many seconds [default 60]",
                "--bootstrap-servers BOOTSTRAP_SERVERS a Kafka to run the demo on [env "
                "KAFKA_BOOTSTRAP_SERVERS; default: none, the demo starts the embedded broker]",
            ],
        ),
        (
            "forward",
            [
                "--group-id GROUP_ID the sink's consumer group; a new one re-sends from the start "
                "[default <app_id>-forward]",
                "--forward-batch-size FORWARD_BATCH_SIZE most records per request to the server, at "
                "least 1 [default 200]",
                "--bootstrap-servers BOOTSTRAP_SERVERS [env KAFKA_BOOTSTRAP_SERVERS, default "
                "'localhost:9092']",
            ],
        ),
        (
            "worker",
            [
                "--bootstrap-servers BOOTSTRAP_SERVERS [env KAFKA_BOOTSTRAP_SERVERS, default "
                "'localhost:9092']",
                "--embedded-broker start the embedded Tansu broker first (for trying it out) and stop "
                "it on exit; it replaces bootstrap_servers and sets store=memory://, fetch_max_wait_ms "
                "at most 10 and changelog_batch_records=1, whatever was given",
            ],
        ),
    ],
)
def test_help_says_what_a_flag_defaults_to(command: str, says: list[str]) -> None:
    """A flag whose default is not a plain value (the demo's broker) says what happens instead."""
    result = cli(command, "--help")
    text = " ".join(result.stdout.decode().split())
    assert [line for line in says if line not in text] == []


# No metrics server: these tests must not depend on port 9309 being free.
UNREACHABLE = ["--bootstrap-servers", "kafka://127.0.0.1:1", "--broker-wait-s", "1", "--metrics-port", "0"]


@pytest.mark.parametrize(
    "args",
    [
        ["produce", "--topic", "t", *UNREACHABLE, "-"],
        ["tail", "--topic", "t", *UNREACHABLE],
        ["forward", "--to", "http://127.0.0.1:1/api", *UNREACHABLE],
    ],
)
def test_unreachable_broker_is_one_line_and_exit_1(args: list[str]) -> None:
    result = cli(*args)
    assert (result.returncode, result.stderr.decode()) == (
        1,
        "prefect-events: error: cannot reach Kafka at 127.0.0.1:1 within 1 s (KafkaConnectionError: "
        "Unable to bootstrap from [('127.0.0.1', 1, <AddressFamily.AF_INET: 2>)])\n",
    )


@pytest.mark.parametrize("command", ["produce", "tail"])
@pytest.mark.parametrize("topic", ["bad topic", "", "a,b", "..", "t\u00e9"])
def test_a_topic_kafka_would_refuse_is_one_line_before_kafka(command: str, topic: str) -> None:
    """aiokafka retries the metadata of a topic name Kafka refuses forever, ten lines a second:
    the name is checked as the settings' topic names are, before the broker is asked anything."""
    result = cli(command, "--topic", topic, *UNREACHABLE, *(["-"] if command == "produce" else []))
    assert (result.returncode, result.stderr.decode()) == (
        2,
        f"prefect-events: error: --topic: {topic!r} is not a valid Kafka topic name\n",
    )


@pytest.mark.parametrize(
    ("data_dir", "problem"),
    [
        ("a-file", "'{tmp}/a-file' is not a directory"),
        ("a-file/tables", "cannot write to '{tmp}/a-file/tables': Not a directory"),
        ("/proc/prefect-events", "cannot write to '/proc/prefect-events': No such file or directory"),
    ],
    ids=["a file", "under a file", "not writable"],
)
def test_worker_data_dir_it_cannot_write_is_one_line_before_kafka(
    data_dir: str, problem: str, tmp_path: Path
) -> None:
    """RocksDB would fail only once partitions are assigned, one traceback per table partition."""
    (tmp_path / "a-file").write_text("")
    path = data_dir if data_dir.startswith("/") else str(tmp_path / data_dir)
    result = cli("worker", "--data-dir", path, *UNREACHABLE)
    assert (result.returncode, result.stderr.decode()) == (
        2,
        f"prefect-events: error: data_dir: {problem.format(tmp=tmp_path)}\n",
    )


def test_worker_creates_a_missing_data_dir(tmp_path: Path) -> None:
    result = cli("worker", "--data-dir", str(tmp_path / "new" / "data"), *UNREACHABLE)
    assert (tmp_path / "new" / "data").is_dir()
    assert result.returncode == 1 and "cannot reach Kafka at 127.0.0.1:1" in result.stderr.decode()


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "-0.0"])
@pytest.mark.parametrize(("command", "flag"), [("tail", "--timeout"), ("demo", "--seconds")])
def test_a_duration_flag_must_be_finite_and_positive(command: str, flag: str, value: str) -> None:
    """`tail --timeout nan` never timed out; `demo --seconds 0` ran the whole start-up to give up
    at once. Refused as the duration settings are, before the broker is asked."""
    topic = ["--topic", "t"] if command == "tail" else []
    result = cli(command, *topic, f"{flag}={value}", *UNREACHABLE)
    assert "Traceback" not in result.stderr.decode()
    assert (result.returncode, result.stderr.decode()) == (
        2,
        f"prefect-events: error: {flag} must be a finite number of seconds > 0\n",
    )


@pytest.mark.parametrize(
    ("command", "flag", "value", "expected"),
    [
        ("tail", "--max", "1_0", "an integer"),
        ("tail", "--max", "\u0663", "an integer"),
        ("tail", "--max", "+3", "an integer"),
        ("tail", "--max", " 3", "an integer"),
        ("tail", "--max", "many", "an integer"),
        ("tail", "--timeout", "1_0", "a number"),
        ("tail", "--timeout", "\u0665", "a number"),
        ("tail", "--timeout", "5 ", "a number"),
        ("demo", "--seconds", "6_0", "a number"),
        ("demo", "--seconds", "+60", "a number"),
        ("forward", "--forward-batch-size", "2_00", "an integer"),
        ("forward", "--forward-batch-size", "\u0662", "an integer"),
        ("forward", "--forward-batch-size", "many", "an integer"),
        ("config", "--metrics-port", "+9309", "an integer"),
        ("config", "--metrics-port", " 9309 ", "an integer"),
        ("config", "--partitions", " 4", "an integer"),
    ],
)
def test_a_number_flag_is_read_as_strictly_as_a_setting(
    command: str, flag: str, value: str, expected: str
) -> None:
    """int() and float() read `1_0` as 10, `\u0663` as 3 and take a sign and blanks: every
    numeric flag goes through the settings' parser, and is refused the same way, before Kafka."""
    before = {"tail": ["--topic", "t"], "forward": ["--to", "http://127.0.0.1:1/api"]}.get(command, [])
    result = cli(command, *before, *UNREACHABLE, f"{flag}={value}")  # the last --metrics-port wins
    assert (result.returncode, result.stderr.decode()) == (
        2,
        f"prefect-events: error: {flag}: expected {expected}, got {value!r}\n",
    )


def test_forward_batch_size_below_1_is_one_line() -> None:
    result = cli("forward", "--to", "http://127.0.0.1:1/api", "--forward-batch-size", "0")
    assert (result.returncode, result.stderr.decode()) == (
        2,
        "prefect-events: error: --forward-batch-size must be >= 1\n",
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "http://127.0.0.1:99999/api",
            "'http://127.0.0.1:99999/api' is not a valid URL: Port out of range 0-65535",
        ),
        ("prefect:4200/api", "'prefect:4200/api' is not an http(s) URL with a host"),
    ],
)
def test_forward_bad_url_is_one_line(url: str, problem: str) -> None:
    result = cli("forward", "--to", url)
    assert (result.returncode, result.stderr.decode()) == (2, f"prefect-events: error: --to: {problem}\n")


NO_METRICS = ["--metrics-port", "0"]

# `forward` with the Kafka and HTTP side replaced by two log lines like the real ones.
FAKE_FORWARD = """
import logging, sys
import topology.forward

async def forward(settings, api_url, **kwargs):
    log = logging.getLogger("topology.forward")
    log.info("forwarding to %s", api_url)
    log.debug("forwarded %d of %d records", 5, 5)
    return 5

topology.forward.forward = forward
from topology.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("flags", "lines"),
    [
        ([], ["INFO topology.forward: forwarding to http://prefect/api"]),
        (
            ["--log-level", "DEBUG"],
            [
                "INFO topology.forward: forwarding to http://prefect/api",
                "DEBUG topology.forward: forwarded 5 of 5 records",
            ],
        ),
        (
            ["--log-format", "json", "--log-level", "WARNING"],
            [],
        ),
        (
            ["--log-format", "json"],
            ['{"level":"INFO","logger":"topology.forward","message":"forwarding to http://prefect/api"}'],
        ),
    ],
)
def test_forward_logs_as_its_settings_say(flags: list[str], lines: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FAKE_FORWARD, "forward", "--to", "http://prefect/api", *NO_METRICS, *flags],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    *logged, last = result.stderr.decode().splitlines()
    assert last == "delivered 5 events"
    if "json" in flags:  # without the timestamp
        logged = [json.dumps({k: v for k, v in json.loads(line).items() if k != "ts"}) for line in logged]
        lines = [json.dumps(json.loads(line)) for line in lines]
    else:
        logged = [line.split(" ", 2)[2] for line in logged]  # after the date and time
    assert [line for line in logged if "topology.forward" in line] == lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cli(args: list[str]) -> subprocess.Popen[bytes]:
    """`prefect-events ARGS` running in the background, its stderr to read once it has ended."""
    command = [sys.executable, "-m", "topology.cli", *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30) -> tuple[int, str]:
    """The first answer from `url`, while `process` lives."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, process.stderr.read() if process.stderr else b""
        try:
            return http_get(url)
        except OSError:  # not listening yet
            assert time.monotonic() < deadline, f"nothing listens at {url}"
            time.sleep(0.05)


def test_forward_metrics_port_in_use_is_one_line_before_kafka() -> None:
    """The worker's own line and exit 2; before the broker wait, which would end in exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = ["--metrics-host", "127.0.0.1", "--metrics-port", str(port)]
        result = cli("forward", "--to", "http://127.0.0.1:1/api", *UNREACHABLE, *metrics)
    assert (result.returncode, result.stderr.decode()) == (
        2,
        f"prefect-events: error: metrics server: cannot listen on 127.0.0.1:{port}: "
        "Address already in use (metrics_host, metrics_port; port 0 disables the server)\n",
    )


@pytest.mark.parametrize(
    "flags", [["--embedded-broker"], UNREACHABLE[:4]], ids=["embedded broker", "unreachable broker"]
)
def test_worker_metrics_port_in_use_is_one_line_before_broker_or_kafka(flags: list[str]) -> None:
    """The port is bound first: no embedded broker started (it logged two lines, then stopped),
    no broker wait (which ended in `cannot reach Kafka`, exit 1)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = ["--metrics-host", "127.0.0.1", "--metrics-port", str(port)]
        result = cli("worker", *flags, "--store", "memory://", *metrics)
    assert (result.returncode, result.stderr.decode()) == (
        2,
        f"prefect-events: error: metrics server: cannot listen on 127.0.0.1:{port}: "
        "Address already in use (metrics_host, metrics_port; port 0 disables the server)\n",
    )


def test_worker_health_answers_while_waiting_for_kafka() -> None:
    """The port was bound on one loop while the broker wait ran on another: a probe's connection
    was taken and never answered. /healthz answers during the wait, and SIGTERM ends it at once,
    with a line saying so (it used to take the signal's default action)."""
    port = free_port()
    args = ["worker", "--store", "memory://", "--bootstrap-servers", f"127.0.0.1:{free_port()}"]
    args += ["--broker-wait-s", "120", "--metrics-host", "127.0.0.1", "--metrics-port", str(port)]
    process = start_cli(args)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for_http(f"{url}/healthz", process, timeout_s=15) == (200, "ok\n")
        assert http_get(f"{url}/readyz") == (503, "not ready\n")
        status, body = http_get(f"{url}/metrics")
        assert status == 200 and "prefect_events_input_messages_total" in body
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - sent < 5
        assert process.stderr is not None
        assert "stopped on SIGTERM while starting: nothing was processed" in process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _tansu_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = []
    for child in map(int, children):
        try:
            if b"tansu" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue  # gone meanwhile
    return found


def test_a_worker_stopped_while_its_embedded_broker_starts_stops_the_broker_too(tmp_path: Path) -> None:
    """A SIGTERM during start-up used to take the signal's default action: the worker ended
    without a line, and its broker only through the kernel's parent-death signal. Now the worker
    stops it itself, and says so."""
    port = free_port()
    args = ["worker", "--embedded-broker", "--data-dir", str(tmp_path)]
    args += ["--metrics-host", "127.0.0.1", "--metrics-port", str(port)]
    process = start_cli(args)
    brokers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not (brokers := _tansu_children(process.pid)):
            assert process.poll() is None and time.monotonic() < deadline, "no embedded broker started"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        stderr = process.stderr.read().decode()
        assert "stopped on SIGTERM while starting: nothing was processed" in stderr
        for broker in brokers:
            assert not Path(f"/proc/{broker}").exists(), f"embedded broker pid {broker} outlived the worker"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for broker in brokers:
            if Path(f"/proc/{broker}").exists():
                os.kill(broker, signal.SIGKILL)


# `worker --embedded-broker` sending itself SIGTERM at a chosen moment of its start-up.
SIGTERM_AT = """
import os, signal, sys
import topology.runner as runner

moment = sys.argv.pop(1)
prepare, build = runner.prepare, runner.build

async def prepare_then_signal(settings):
    await prepare(settings)
    os.kill(os.getpid(), signal.SIGTERM)  # as the checks finish

def signal_then_build(settings, metrics):
    os.kill(os.getpid(), signal.SIGTERM)  # after the checks, before Faust's handlers exist
    return build(settings, metrics)

if moment == "prepared":
    runner.prepare = prepare_then_signal
else:
    runner.build = signal_then_build
from topology.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("moment", ["prepared", "building"])
def test_a_sigterm_between_the_start_up_checks_and_fausts_handlers_stops_the_worker(
    moment: str, tmp_path: Path
) -> None:
    """Neither lost (the worker started and ran on) nor the default action (killed, no line)."""
    args = ["worker", "--embedded-broker", "--data-dir", str(tmp_path), *NO_METRICS]
    result = subprocess.run(
        [sys.executable, "-c", SIGTERM_AT, moment, *args],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert (
        "stopped on SIGTERM while starting: nothing was processed" in stderr
        or re.search(r"stopped on SIGTERM after \d+\.\ds", stderr)
    ), stderr
    if moment == "building":  # caught before Faust's handlers, acted on by Faust's shutdown
        assert "SIGTERM: stopping: finishing the batch in hand" in stderr


def test_forward_stops_at_once_on_sigterm_while_waiting_for_kafka() -> None:
    """With Kafka unreachable the forwarder waits up to broker_wait_s; SIGTERM ends that wait."""
    port = free_port()
    args = ["forward", "--to", "http://127.0.0.1:1/api", "--bootstrap-servers", f"127.0.0.1:{free_port()}"]
    args += ["--broker-wait-s", "120", "--metrics-host", "127.0.0.1", "--metrics-port", str(port)]
    process = start_cli(args)
    try:
        # Serving means the signal handlers are in place and the broker wait comes next.
        assert wait_for_http(f"http://127.0.0.1:{port}/readyz", process) == (503, "not ready\n")
        time.sleep(0.5)  # well into the wait
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - sent < 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    lines = process.stderr.read().decode().splitlines()
    assert lines[-1] == "delivered 0 events"
    assert "Traceback" not in "\n".join(lines)


def test_environment_is_read_and_flags_win() -> None:
    env = {
        "PREFECT_EVENTS_PARTITIONS": "8",
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "PREFECT_EVENTS_LOG_FORMAT": "json",
        "PATH": "/usr/bin:/bin",
    }
    result = cli("config", "--partitions", "12", env=env)
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["partitions"] == 12
    assert effective["bootstrap_servers"] == "k1:9092,k2:9092"
    assert effective["log_format"] == "json"
    assert effective["store"] == "rocksdb://"  # production default


def test_bootstrap_servers_are_stored_without_kafka_scheme_for_every_client() -> None:
    """aiokafka takes `kafka://h:9092` as host `kafka`, Faust `kafka://kafka://h:9092` likewise."""
    from faust.transport.drivers.aiokafka import server_list

    from topology.app import Worker

    result = cli("config", "--bootstrap-servers", " kafka://k1:9092, [::1]:9093,kafka://[fd00::2]:9094")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bootstrap_servers"] == "k1:9092,[::1]:9093,[fd00::2]:9094"
    settings = config.load({"bootstrap_servers": "kafka://k1:9092,k2:9093", "store": "memory://"}, environ={})
    assert settings.bootstrap_servers == "k1:9092,k2:9093"
    assert server_list(Worker(settings).app.conf.broker, 9092) == ["k1:9092", "k2:9093"]


def test_bad_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^PREFECT_EVENTS_BATCH_SIZE: expected an integer, got 'lots'$"):
        config.load(environ={"PREFECT_EVENTS_BATCH_SIZE": "lots"})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PARTITIONS", "\u0664", "PREFECT_EVENTS_PARTITIONS: expected an integer, got '\u0664'"),
        ("PARTITIONS", "4_0", "PREFECT_EVENTS_PARTITIONS: expected an integer, got '4_0'"),
        ("COMMIT_INTERVAL_S", "1_0.5", "PREFECT_EVENTS_COMMIT_INTERVAL_S: expected a number, got '1_0.5'"),
        ("LINEAGE_RETENTION_DAYS", "1e-320", "lineage_retention_days: 1e-320 is below a microsecond"),
        ("METRICS_PORT", "+9309", "PREFECT_EVENTS_METRICS_PORT: expected an integer, got '+9309'"),
        ("METRICS_PORT", " 9309 ", "PREFECT_EVENTS_METRICS_PORT: expected an integer, got ' 9309 '"),
        ("PARTITIONS", " 4", "PREFECT_EVENTS_PARTITIONS: expected an integer, got ' 4'"),
        ("COMMIT_INTERVAL_S", "1.5\n", "PREFECT_EVENTS_COMMIT_INTERVAL_S: expected a number, got '1.5\\n'"),
        ("COMMIT_INTERVAL_S", "+1.5", "PREFECT_EVENTS_COMMIT_INTERVAL_S: expected a number, got '+1.5'"),
    ],
    ids=[
        "arabic-indic-digit",
        "int-underscore",
        "float-underscore",
        "no-retention",
        "int-plus",
        "int-spaces",
        "int-leading-space",
        "float-newline",
        "float-plus",
    ],
)
def test_a_number_python_would_stretch_to_read_is_refused(variable: str, value: str, message: str) -> None:
    """int() and float() read `4_0` as 40 and `\u0664` (Arabic-Indic four) as 4: a typo or a pasted
    character must not pass as another number; a retention that rounds to 0 us is none."""
    with pytest.raises(ConfigError) as refused:
        config.load(environ={f"PREFECT_EVENTS_{variable}": value})
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KAFKA_BOOTSTRAP_SERVERS", b"h\xff:9092"),
        ("PREFECT_EVENTS_DATA_DIR", b"/tmp/\xff"),
        ("PREFECT_EVENTS_APP_ID", b"a\xff"),
        ("PREFECT_EVENTS_PARTITIONS", b"\xff"),
        ("PREFECT_EVENTS_LOG_LEVEL", b"INFO\xc3"),  # a UTF-8 sequence cut short
    ],
)
@pytest.mark.parametrize("command", ["config", "worker"])
def test_a_variable_that_is_not_utf8_is_one_line(command: str, variable: str, value: bytes) -> None:
    """Such bytes reach Python as lone surrogates, which orjson (config) and the Kafka clients
    (worker) refused with a traceback."""
    env = {"PATH": "/usr/bin:/bin", variable: os.fsdecode(value)}
    result = cli(command, "--broker-wait-s", "1", "--metrics-port", "0", env=env)
    assert "Traceback" not in result.stderr.decode(errors="replace")
    assert (result.returncode, result.stderr) == (
        2,
        f"prefect-events: error: {variable}: {value!r} is not valid UTF-8\n".encode(),
    )


def test_a_flag_or_value_that_is_not_utf8_is_named() -> None:
    result = cli("config", "--data-dir", os.fsdecode(b"/tmp/\xff"), env={"PATH": "/usr/bin:/bin"})
    assert (result.returncode, result.stderr) == (
        2,
        b"prefect-events: error: --data-dir: b'/tmp/\\xff' is not valid UTF-8\n",
    )
    with pytest.raises(ConfigError) as raised:
        config.load(environ={"PREFECT_EVENTS_STORE": "memory://\ud800"})  # no byte makes this one
    assert str(raised.value) == "PREFECT_EVENTS_STORE: 'memory://\\ud800' is not valid UTF-8"


def test_forward_group_id_that_is_not_utf8_is_one_line() -> None:
    group = os.fsdecode(b"g\xff")
    result = cli("forward", "--to", "http://127.0.0.1:1/api", "--group-id", group, *UNREACHABLE)
    assert (result.returncode, result.stderr) == (
        2,
        b"prefect-events: error: --group-id: b'g\\xff' is not valid UTF-8\n",
    )


def test_a_prefect_events_variable_that_is_no_setting_is_warned_about() -> None:
    env = {"PATH": "/usr/bin:/bin", "PREFECT_EVENTS_BOGUS": "1", "PREFECT_EVENTS_PARTITIONS": "8"}
    result = cli("config", env=env)
    assert (result.returncode, result.stderr.decode(), json.loads(result.stdout)["partitions"]) == (
        0,
        "prefect-events: warning: PREFECT_EVENTS_BOGUS is not a setting (ignored); "
        "see prefect-events config\n",
        8,
    )


def test_each_unknown_variable_is_one_warning_and_the_tests_own_are_none(
    capsys: pytest.CaptureFixture[str],
) -> None:
    environ = {
        "PREFECT_EVENTS_PARTITION": "8",  # misspelled
        "prefect_events_batch_size": "10",  # lower case: not read either
        "PREFECT_EVENTS_BOOTSTRAP_SERVERS": "k:9092",  # the broker is KAFKA_BOOTSTRAP_SERVERS
        "PREFECT_EVENTS_EMPTY": "",  # set empty, as unset
        "PREFECT_EVENTS_BATCH_SIZE": "10",
        "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
        "PREFECT_EVENTS_GOLDEN_DIR": "/golden",  # the tests' own
        "PREFECT_EVENTS_REQUIRE_PREFECT": "1",
        "PREFECT_API_URL": "http://prefect/api",  # Prefect's, not ours
    }
    assert config.load(environ=environ).batch_size == 10
    assert capsys.readouterr().err.splitlines() == [
        f"prefect-events: warning: {name} is not a setting (ignored); {hint}"
        for name, hint in (
            # a setting under the name it is not read from: the one it is
            ("PREFECT_EVENTS_BOOTSTRAP_SERVERS", "use KAFKA_BOOTSTRAP_SERVERS"),
            ("PREFECT_EVENTS_PARTITION", "see prefect-events config"),
            ("prefect_events_batch_size", "use PREFECT_EVENTS_BATCH_SIZE"),
        )
    ]


def test_the_broker_is_the_only_setting_read_from_a_variable_of_another_pattern() -> None:
    """Were there another, its PREFECT_EVENTS_ name would want the same hint (above)."""
    assert {
        f.name: config.env_name(f)
        for f in dataclasses.fields(config.Settings)
        if config.env_name(f) != f"PREFECT_EVENTS_{f.name.upper()}"
    } == {"bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS"}


def test_the_variables_that_are_no_settings_are_the_ones_the_repository_uses() -> None:
    """The list of PREFECT_EVENTS_* names not warned about is every such name used in the
    repository that is not a setting's (but the made-up ones above), and the README explains each."""
    settings = {config.env_name(f) for f in dataclasses.fields(config.Settings)}
    name = re.compile(r"PREFECT_EVENTS_[A-Z0-9_]*[A-Z0-9]")
    used = set()
    for folder in ("tests", "bench", "scripts", "topology", "streams", "docker", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix not in (".pyc", ".jsonl") and path != Path(__file__):
                used |= set(name.findall(path.read_text(errors="replace")))
    assert used - settings == config.NOT_SETTINGS
    readme = (ROOT / "README.md").read_text()
    assert [name for name in sorted(config.NOT_SETTINGS) if f"`{name}" not in readme] == []


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PREFECT_EVENTS_BROKER_WAIT_S", "inf", "broker_wait_s: inf is not a finite number"),
        (
            "PREFECT_EVENTS_LINEAGE_RETENTION_DAYS",
            "nan",
            "lineage_retention_days: nan is not a finite number",
        ),
        ("PREFECT_EVENTS_COMMIT_INTERVAL_S", "3601", "commit_interval_s: 3601.0 is out of range (0, 3600]"),
        (
            "PREFECT_EVENTS_ALLOWED_LATENESS_HOURS",
            "nan",
            "allowed_lateness_hours: nan is not a finite number",
        ),
        (
            "PREFECT_EVENTS_ALLOWED_LATENESS_HOURS",
            "-0.5",
            "allowed_lateness_hours: -0.5 is out of range [0, 876000]",
        ),
    ],
)
def test_non_finite_or_huge_durations_are_refused(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config.load(environ={variable: value})
    assert str(raised.value) == message


def test_process_reads_stdin_and_reports_dead_letters_by_line() -> None:
    good = (
        b'{"op": "delete", "occurred": "2026-11-24T10:00:00Z", '
        b'"artifact_id": "0b7c4a43-5a5e-4a53-9a0e-2f2b5f0c9a11"}'
    )
    update = (
        b'{"op": "update", "occurred": "2026-11-24T10:00:00.5+00:00", '
        b'"artifact_id": "0b7c4a43-5a5e-4a53-9a0e-2f2b5f0c9a11", "changes": {}}'
    )
    result = cli("process", "--stream", "artifacts", "-", stdin=b"\n".join([good, b"{oops", b"", update]))
    assert result.returncode == 0
    (dead,) = result.stderr.decode().splitlines()
    assert json.loads(dead) == {
        "line": 2,
        "reason": "invalid_json: not UTF-8 JSON: unexpected character, expected a string key: "
        "line 1 column 2 (char 1)",
    }
    (line,) = result.stdout.splitlines()
    event = json.loads(line)
    assert event["event"] == "prefect.artifact.updated"
    assert event["occurred"] == "2026-11-24T10:00:00.500000Z"
    assert event["payload"] == {}


# A flow run's first three task results: the third inherits asset x from the first through the
# second, 4.4 ms of event time later.
THREE_TASK_RESULTS = b"\n".join(
    (ROOT / "topology/demo_feed/task_results.jsonl").read_bytes().splitlines()[:3]
)


def _assets_events(result: subprocess.CompletedProcess[bytes]) -> list[tuple[str, str, list[str]]]:
    assert (result.returncode, result.stderr) == (0, b"")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    return [
        (
            e["event"],
            e["resource"]["prefect.resource.id"],
            [r["prefect.resource.id"] for r in e["related"] if r["prefect.resource.role"] == "asset"],
        )
        for e in events
    ]


def test_process_takes_lineage_retention_from_the_environment_and_the_flag_wins() -> None:
    kept = [
        ("prefect.asset.materialization.succeeded", "s3://golden/s5/x", []),
        ("prefect.asset.referenced", "s3://golden/s5/x", []),
        ("prefect.asset.materialization.succeeded", "s3://golden/s5/y", ["s3://golden/s5/x"]),
    ]
    forgotten = [
        ("prefect.asset.materialization.succeeded", "s3://golden/s5/x", []),
        ("prefect.asset.materialization.succeeded", "s3://golden/s5/y", []),
    ]
    one_ms = {"PREFECT_EVENTS_LINEAGE_RETENTION_DAYS": str(0.001 / 86_400), "PATH": "/usr/bin:/bin"}
    process = ["process", "--stream", "assets"]
    assert _assets_events(cli(*process, "-", stdin=THREE_TASK_RESULTS)) == kept
    assert _assets_events(cli(*process, "-", stdin=THREE_TASK_RESULTS, env=one_ms)) == forgotten
    flag = ["--lineage-retention-days", "1"]
    assert _assets_events(cli(*process, *flag, "-", stdin=THREE_TASK_RESULTS, env=one_ms)) == kept


def test_allowed_lateness_defaults_to_a_day_may_be_zero_and_is_taken_in_microseconds() -> None:
    assert config.load(environ={}).allowed_lateness_us == 24 * 3_600_000_000
    assert config.load({"allowed_lateness_hours": "0"}, environ={}).allowed_lateness_us == 0
    environ = {"PREFECT_EVENTS_ALLOWED_LATENESS_HOURS": "1.5"}
    assert config.load(environ=environ).allowed_lateness_us == 5_400_000_000


def _task_result(task_run: str, occurred: str, flow_run: str, **fields: object) -> bytes:
    runs = (("task_run", task_run), ("flow_run", flow_run))
    ids = {run: f"00000000-0000-4000-8000-{n:0>12}" for run, n in runs}
    return json.dumps(
        {
            "task_run_id": ids["task_run"],
            "flow_run_id": ids["flow_run"],
            "occurred": occurred,
            "state": {"type": "COMPLETED", "name": "Completed"},
            "downstream_assets": [],
            "upstream_assets": [],
            "upstream_task_run_ids": [],
            "materialized_by": None,
            "context": {run: {"id": ids[run], "name": run} for run in ("flow_run", "task_run")},
            **fields,
        }
    ).encode()


# The audit's reproduction: flow run F's task 1 on 2026-01-01 materializes x; 1,023 task results of
# another flow run on 2026-01-09 (the sweep runs after the 1,024th message); F's task 2 of
# 2026-01-07, 2 days behind them, consumes task 1 and materializes y.
LATE_TASK_RESULT = b"\n".join(
    [
        _task_result("1", "2026-01-01T00:00:00Z", "f", downstream_assets=[{"key": "s3://x"}]),
        *(_task_result(f"b{i:x}", "2026-01-09T00:00:00Z", "e") for i in range(1023)),
        _task_result(
            "2",
            "2026-01-07T00:00:00Z",
            "f",
            upstream_task_run_ids=["00000000-0000-4000-8000-000000000001"],
            downstream_assets=[{"key": "s3://y"}],
        ),
    ]
)


def test_process_takes_the_allowed_lateness_from_the_environment_and_the_flag_wins() -> None:
    """Within the allowed lateness (48 h), task 2 gets what it gets without the filler; with none
    it is beyond it, and the sweep forgot F (8 days behind the watermark, 6 by task 2's time)."""
    kept = [
        ("prefect.asset.materialization.succeeded", "s3://x", []),
        ("prefect.asset.referenced", "s3://x", []),
        ("prefect.asset.materialization.succeeded", "s3://y", ["s3://x"]),
    ]
    forgotten = [
        ("prefect.asset.materialization.succeeded", "s3://x", []),
        ("prefect.asset.materialization.succeeded", "s3://y", []),
    ]
    without_filler = b"\n".join(LATE_TASK_RESULT.splitlines()[:: 1024])
    process = ["process", "--stream", "assets"]
    none = {"PREFECT_EVENTS_ALLOWED_LATENESS_HOURS": "0", "PATH": "/usr/bin:/bin"}
    assert _assets_events(cli(*process, "-", stdin=without_filler, env=none)) == kept
    assert _assets_events(cli(*process, "-", stdin=LATE_TASK_RESULT, env=none)) == forgotten
    flag = ["--allowed-lateness-hours", "48"]
    assert _assets_events(cli(*process, *flag, "-", stdin=LATE_TASK_RESULT, env=none)) == kept


UPDATE = (
    b'{"op": "update", "occurred": "2026-11-24T10:00:00.5+00:00", '
    b'"artifact_id": "0b7c4a43-5a5e-4a53-9a0e-2f2b5f0c9a11", "changes": {}}'
)


@pytest.mark.parametrize(
    ("redirect", "message"),
    [
        (">&-", "prefect-events: error: cannot write the output: stdout is closed"),
        ("<&-", "prefect-events: error: cannot read -: stdin is closed"),
    ],
)
def test_process_started_with_stdout_or_stdin_closed_is_one_line(redirect: str, message: str) -> None:
    script = f'exec "$0" -m topology.cli process --stream artifacts - {redirect}'
    result = subprocess.run(["sh", "-c", script, sys.executable], capture_output=True, cwd=ROOT, timeout=60)
    assert (result.returncode, result.stderr.decode()) == (2, message + "\n")


def test_process_whose_reader_goes_away_is_one_line() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "topology.cli", "process", "--stream", "artifacts", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None
    process.stdout.close()  # like `| head` that has read enough
    _, stderr = process.communicate(b"\n".join([UPDATE] * 20_000), timeout=60)
    assert (process.returncode, stderr.decode()) == (
        1,
        "prefect-events: error: stdout was closed before all output was written\n",
    )


def test_the_readme_documents_every_setting() -> None:
    """Operators configure the worker from the README's settings table: a setting missing there
    exists only for those who read the code."""
    readme = (ROOT / "README.md").read_text()
    missing = [
        f.name
        for f in dataclasses.fields(config.Settings)
        if f"`{f.name}`" not in readme and not (f.name.endswith("_topic") and "`*_topic`" in readme)
    ]
    assert missing == []


def test_demo_uses_the_broker_a_flag_names(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from topology import cli as cli_module
    from topology import demo

    class NoEmbeddedBroker:
        def start(self) -> None:
            raise AssertionError("the embedded broker was started")

    monkeypatch.setattr(demo, "EmbeddedBroker", NoEmbeddedBroker)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert cli_module.main(["demo", *UNREACHABLE]) == 1
    assert capsys.readouterr().err == (
        "prefect-events: error: cannot reach Kafka at 127.0.0.1:1 within 1 s (KafkaConnectionError: "
        "Unable to bootstrap from [('127.0.0.1', 1, <AddressFamily.AF_INET: 2>)])\n"
    )


def test_demo_shows_why_its_worker_died(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's broker answers, the worker's does not: the worker exits at start-up."""
    from topology import demo

    async def broker_answers(*args: object, **kwargs: object) -> int:
        return 0

    async def print_events(
        settings: object, want: int, seconds: float, worker_alive: Callable[[], bool]
    ) -> int:
        async with asyncio.timeout(60):
            while worker_alive():
                await asyncio.sleep(0.05)
        return 0

    monkeypatch.setattr(demo, "prepare", broker_answers)
    monkeypatch.setattr(demo, "produce", broker_answers)
    monkeypatch.setattr(demo, "_print_events", print_events)
    settings = config.load(
        {"bootstrap_servers": "127.0.0.1:1", "broker_wait_s": 1, "metrics_port": 0}, environ={}
    )
    assert demo.run_demo(settings, seconds=60, embedded_broker=False) == 1
    assert capsys.readouterr().err.splitlines()[-3:] == [
        "0 of 24 records seen",
        "the worker exited early (exit 1); the end of its stderr:",
        "  prefect-events: error: cannot reach Kafka at 127.0.0.1:1 within 1 s (KafkaConnectionError: "
        "Unable to bootstrap from [('127.0.0.1', 1, <AddressFamily.AF_INET: 2>)])",
    ]


@dataclasses.dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


class FakeConsumer:
    """aiokafka's consumer as `tail` uses it: each getmany returns the next fetch, then nothing."""

    fetches: ClassVar[list[dict[str, list[FakeRecord]]]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.pending = list(self.fetches)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def getmany(self, timeout_ms: int) -> dict[str, list[FakeRecord]]:
        await asyncio.sleep(0)
        return self.pending.pop(0) if self.pending else {}


@pytest.mark.parametrize(
    ("max_records", "printed"),
    [
        (1, ["a0"]),
        (2, ["a0", "a1"]),
        (3, ["a0", "a1", "b0"]),
        (4, ["a0", "a1", "b0", "c0"]),
        (9, ["a0", "a1", "b0", "c0"]),  # then idle for the timeout
    ],
)
def test_tail_stops_after_max_records_across_partitions(
    monkeypatch: pytest.MonkeyPatch, max_records: int, printed: list[str]
) -> None:
    """A fetch holds several partitions' records: --max counts them all, not each partition's."""
    import io

    from topology import tools

    async def broker_answers(*args: object, **kwargs: object) -> None:
        pass

    def records(partition: int, *values: str) -> list[FakeRecord]:
        return [FakeRecord("t", partition, n, v.encode()) for n, v in enumerate(values)]

    async def topic_exists(*args: object) -> bool:
        return True

    monkeypatch.setattr(tools, "wait_for_broker", broker_answers)
    monkeypatch.setattr(tools, "topic_exists", topic_exists)
    monkeypatch.setattr(tools, "AIOKafkaConsumer", FakeConsumer)
    fetches = [{"t-0": records(0, "a0", "a1"), "t-1": records(1, "b0")}, {"t-2": records(2, "c0")}]
    monkeypatch.setattr(FakeConsumer, "fetches", fetches)
    settings = config.load({}, environ={})
    out = io.StringIO()
    count = asyncio.run(tools.tail(settings, "t", out, True, max_records, 0.3, False))
    assert (count, out.getvalue().splitlines()) == (len(printed), printed)


def test_tail_of_a_topic_the_broker_does_not_know_is_one_line_and_creates_none(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    """It exited 0 having printed nothing, and its subscription could have the broker create the
    topic: a misspelt name looked like a quiet topic."""
    from topology.admin import TopicSpec, ensure_topics, topic_exists

    topic = f"cli-missing-{tmp_path.name}"
    broker = ["--topic", topic, "--bootstrap-servers", bootstrap_servers]
    result = cli("tail", *broker, "--timeout", "1")
    assert (result.returncode, result.stderr.decode()) == (
        2,
        f"prefect-events: error: --topic: no topic {topic!r} at {bootstrap_servers}\n",
    )
    assert not asyncio.run(topic_exists(bootstrap_servers, topic))
    asyncio.run(ensure_topics(bootstrap_servers, [TopicSpec(topic, 1)]))  # once it exists: tailed
    produced = cli("produce", *broker, "-", stdin=b"{}\n")
    assert produced.returncode == 0, produced.stderr
    result = cli("tail", *broker, "--from-beginning", "--max", "1")
    assert (result.returncode, result.stdout) == (0, b"{}\n")


def test_produce_keys_a_uuid_as_the_worker_owns_it() -> None:
    """The worker owns a record by its lower-cased id: an upper-case key hashed to another
    partition and took the re-keying hop. Anything else is keyed as it is."""
    from streams.messages import parse_artifact_op
    from topology.tools import key_of

    upper = "C8A7B372-8A4F-4B09-B468-1DE5DD715799"
    line = json.dumps({"op": "delete", "occurred": "2026-11-26T06:38:38Z", "artifact_id": upper}).encode()
    assert key_of(line, "artifact.id,artifact_id") == parse_artifact_op(line).artifact_id.encode()
    assert key_of(line, "artifact_id") == upper.lower().encode()
    assert key_of(b'{"artifact_id": "Not-A-UUID"}', "artifact_id") == b"Not-A-UUID"
    assert key_of(b'{"artifact_id": 42}', "artifact_id") == b"42"


def test_produce_sends_records_as_large_as_the_workers_and_names_each_line_too_large(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    """aiokafka's 1 MB default request size made a 1.1 MB line a traceback: the producer now takes
    what the worker's topics take, and a line over that is one line by its number, the rest sent."""
    from topology.admin import RECORD_LIMIT_BYTES, TopicSpec, ensure_topics

    topic = f"cli-large-{tmp_path.name}"
    asyncio.run(ensure_topics(bootstrap_servers, [TopicSpec(topic, 1, max_message_bytes=RECORD_LIMIT_BYTES)]))
    big, too_big = b"x" * 1_100_000, b"y" * RECORD_LIMIT_BYTES
    stdin = b"\n".join([b'{"a": 1}', big, too_big, b"", b'{"b": 2}']) + b"\n"
    result = cli("produce", "--topic", topic, "--bootstrap-servers", bootstrap_servers, "-", stdin=stdin)
    assert "Traceback" not in result.stderr.decode()
    assert (result.returncode, result.stderr.decode().splitlines()) == (
        1,
        [
            f"prefect-events: error: line 3 ({RECORD_LIMIT_BYTES} bytes) is too large: a record may "
            f"be {RECORD_LIMIT_BYTES} bytes with its key and framing",
            f"produced 3 records to {topic}; 1 refused (above)",
        ],
    )


class RefusingProducer:
    """aiokafka's producer as the broker answers a record over the topic's max.message.bytes."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.sent: list[bytes] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

        future = asyncio.get_running_loop().create_future()
        if len(value) > 10:
            future.set_exception(MessageSizeTooLargeError())
        elif len(value) > 5:
            future.set_exception(RecordListTooLargeError())
        else:
            future.set_result(None)
        return future


def test_produce_names_each_line_the_broker_refuses_as_too_large(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from topology import cli as cli_module
    from topology import tools

    async def broker_answers(*args: object, **kwargs: object) -> None:
        pass

    monkeypatch.setattr(tools, "wait_for_broker", broker_answers)
    monkeypatch.setattr(tools, "AIOKafkaProducer", RefusingProducer)
    (tmp_path / "in").write_bytes(b"1\n" + b"x" * 11 + b"\n2\n" + b"y" * 6 + b"\n3\n")
    assert cli_module.main(["produce", "--topic", "t", str(tmp_path / "in")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "prefect-events: error: line 2 (11 bytes) was refused by the broker as too large "
        "(MessageSizeTooLargeError; the topic's max.message.bytes)",
        "prefect-events: error: line 4 (6 bytes) was refused by the broker as too large "
        "(RecordListTooLargeError; the topic's max.message.bytes)",
        "produced 3 records to t; 2 refused (above)",
    ]


NO_METRICS = ["--metrics-port", "0"]  # port 9309 may be taken on this machine, and is bound first

# `worker --embedded-broker` with a stand-in broker, stopped once its settings are made.
FAKE_EMBEDDED_WORKER = """
import sys
from topology import runner

class Broker:
    bootstrap_servers, pid = "127.0.0.1:1", 4242
    def start(self):
        return self
    def stop(self):
        pass

async def prepare(settings):
    raise OSError(f"stopped before the worker ran (fetch_max_wait_ms={settings.fetch_max_wait_ms})")

runner.EmbeddedBroker, runner.prepare = Broker, prepare
from topology.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("flags", "servers", "overrides", "wait"),
    [
        (
            ["--fetch-max-wait-ms", "100", "--store", "rocksdb://"],
            None,
            "store=memory:// (was rocksdb://), fetch_max_wait_ms=10 (was 100), "
            "changelog_batch_records=1 (was 0)",
            10,
        ),
        (["--store", "memory://", "--fetch-max-wait-ms", "5"], None, "changelog_batch_records=1 (was 0)", 5),
        (
            ["--store", "memory://", "--fetch-max-wait-ms", "10", "--changelog-batch-records", "1"],
            None,
            None,
            10,
        ),
        (
            ["--bootstrap-servers", "1.2.3.4:9092", "--fetch-max-wait-ms", "5"],
            None,
            "bootstrap_servers=127.0.0.1:1 (was 1.2.3.4:9092), store=memory:// (was rocksdb://), "
            "changelog_batch_records=1 (was 0)",
            5,
        ),
        (
            ["--store", "memory://", "--fetch-max-wait-ms", "10", "--changelog-batch-records", "1"],
            "k1:9092,k2:9092",
            "bootstrap_servers=127.0.0.1:1 (was k1:9092,k2:9092)",
            10,
        ),
    ],
    ids=["defaults", "some", "none", "broker by flag", "broker by variable"],
)
def test_embedded_broker_worker_says_which_settings_it_overrode(
    flags: list[str], servers: str | None, overrides: str | None, wait: int
) -> None:
    """Given settings it does not take are named, the broker address too when the user gave one
    (KAFKA_BOOTSTRAP_SERVERS is `servers`)."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    if servers is not None:
        env["KAFKA_BOOTSTRAP_SERVERS"] = servers
    result = subprocess.run(
        [sys.executable, "-c", FAKE_EMBEDDED_WORKER, "worker", "--embedded-broker", *flags, *NO_METRICS],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    *logged, last = result.stderr.decode().splitlines()
    assert (result.returncode, last) == (
        1,
        f"prefect-events: error: stopped before the worker ran (fetch_max_wait_ms={wait})",
    )
    expected = ["INFO prefect_events: embedded broker (Tansu) at 127.0.0.1:1, pid 4242"]
    if overrides is not None:
        expected.append(
            f'INFO prefect_events: the embedded broker overrides {overrides} (README, "The embedded broker")'
        )
    assert [line.split(" ", 2)[2] for line in logged] == expected


def test_demo_on_the_embedded_broker_says_which_settings_it_overrode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from topology import demo

    class Broker:
        bootstrap_servers = "127.0.0.1:1"

        def start(self) -> Broker:
            return self

        def stop(self) -> None:
            pass

    async def prepare(settings: config.Settings) -> None:
        raise OSError("stopped before the worker ran")

    monkeypatch.setattr(demo, "EmbeddedBroker", Broker)
    monkeypatch.setattr(demo, "prepare", prepare)
    settings = config.load({"fetch_max_wait_ms": 50}, environ={})
    with pytest.raises(OSError, match=r"^stopped before the worker ran$"):
        demo.run_demo(settings, seconds=1)
    assert capsys.readouterr().err.splitlines() == [
        "embedded broker (Tansu) at 127.0.0.1:1",
        "the embedded broker overrides store=memory:// (was rocksdb://), fetch_max_wait_ms=10 (was 50), "
        'changelog_batch_records=1 (was 0) (README, "The embedded broker")',
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_sigterm_to_the_demo_stops_its_worker_and_broker(tmp_path: Path) -> None:
    """`timeout`, a CI cancel or `kill` send SIGTERM to the demo alone: it stops its worker and its
    broker as on Ctrl-C, instead of leaving the worker holding its port and retrying forever."""
    import os
    import signal
    import time
    import uuid

    app_id = f"demo-sigterm-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PREFECT_EVENTS_APP_ID": app_id, "PREFECT_EVENTS_METRICS_PORT": "0"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "topology.cli", "demo"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert demo.stderr is not None
    lines = []
    for line in demo.stderr:  # the worker runs once the feed is produced
        lines.append(line.decode())
        if line.startswith(b"produced "):
            break
    demo.send_signal(signal.SIGTERM)
    lines += [line.decode() for line in demo.stderr]
    assert demo.wait(timeout=60) == 128 + signal.SIGTERM
    assert lines[-1] == "demo: SIGTERM, stopping the worker and the broker\n"
    deadline = time.monotonic() + 5
    while _processes_with(f"PREFECT_EVENTS_APP_ID={app_id}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(f"PREFECT_EVENTS_APP_ID={app_id}") == []


def _processes_with(variable: str) -> list[int]:
    """Live processes whose environment holds `variable` (the demo's worker inherits it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if variable.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found
