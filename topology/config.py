"""The one config object: environment variables, overridden by CLI flags, validated at start.

Every setting has an environment variable `PREFECT_EVENTS_<NAME>` (upper case), except the broker
address, which follows the Kafka convention `KAFKA_BOOTSTRAP_SERVERS`. Any other `PREFECT_EVENTS_*`
variable gets a warning (a misspelled setting would otherwise be ignored without a word; one named
after a setting names the variable that sets it), but for those in NOT_SETTINGS.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, get_type_hints


class ConfigError(ValueError):
    """A setting is missing or malformed; the message is one line a user can act on."""


GUARANTEES = ("at_least_once",)
# Faust's transactions give each output the transactional producer of its *destination*
# partition, assuming outputs stay in their input's partition; this worker hands records on to
# other partitions (by artifact id, then by collection key), so a crash could commit an input
# whose hand-overs were aborted. Refused rather than offered broken.
_NO_EXACTLY_ONCE = (
    "processing_guarantee: exactly_once is not supported: Faust's transactions follow the "
    "destination partition and this worker re-keys records across partitions; at_least_once with "
    "the worker's replay marks gives byte-identical duplicates at most (README, Guarantees)"
)
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
# HOST:PORT, or [IPv6]:PORT as aiokafka (and Faust, through yarl) read it.
_SERVER = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^\s:,/\[\]]+):(?P<port>[0-9]{1,5})")
_STORE = re.compile(r"^(memory|rocksdb)://")
ENV_PREFIX = "PREFECT_EVENTS_"
# PREFECT_EVENTS_* variables that are not settings and not to be warned about: the tests' own
# (README, "Environment variables").
NOT_SETTINGS = frozenset({"PREFECT_EVENTS_GOLDEN_DIR", "PREFECT_EVENTS_REQUIRE_PREFECT"})


@dataclass(frozen=True)
class Settings:
    """Effective configuration of a worker (or a CLI command that talks to Kafka)."""

    bootstrap_servers: str = field(default="localhost:9092", metadata={"env": "KAFKA_BOOTSTRAP_SERVERS"})
    app_id: str = field(
        default="prefect-events", metadata={"help": "consumer group and internal topic prefix"}
    )
    artifacts_topic: str = "prefect.raw.artifacts"
    task_results_topic: str = "prefect.raw.asset-task-results"
    artifact_events_topic: str = "prefect.events.artifacts"
    asset_events_topic: str = "prefect.events.assets"
    dead_letter_topic: str = "prefect.raw.dead-letters"
    input_partitions: int = field(
        default=4, metadata={"help": "partitions of the raw input topics (created if missing)"}
    )
    partitions: int = field(
        default=4, metadata={"help": "partitions of internal topics, tables and output topics"}
    )
    replication_factor: int = 1
    store: str = field(
        default="rocksdb://", metadata={"help": "table store: rocksdb:// (production) or memory://"}
    )
    data_dir: str = field(default="./data", metadata={"help": "where RocksDB tables live"})
    rocksdb_write_buffer_mb: int = field(
        default=4, metadata={"help": "RocksDB write buffer per table partition (2 at most)"}
    )
    rocksdb_block_cache_mb: int = field(
        default=8, metadata={"help": "RocksDB block cache per table partition"}
    )
    standby_replicas: int = 0
    lineage_retention_days: float = 7.0
    allowed_lateness_hours: float = field(
        default=24.0,
        metadata={
            "help": "how far behind the newest event time a message may be and still get exactly "
            "the events it would get if the retention sweep never ran; the sweep keeps state this "
            "much longer than the retention"
        },
    )
    processing_guarantee: str = field(
        default="at_least_once",
        metadata={"help": "at_least_once (exactly_once is refused: see README, Guarantees)"},
    )
    batch_size: int = field(default=500, metadata={"help": "max messages per processing batch"})
    fetch_max_wait_ms: int = field(
        default=100, metadata={"help": "consumer fetch wait (Faust hard-codes 1500)"}
    )
    producer_linger_ms: int = 5
    producer_max_batch_bytes: int = field(
        default=1_000_000,
        metadata={
            "help": "largest producer batch: a batch's records for one partition leave in batches "
            "this size, one round trip each; keep under the broker's message.max.bytes"
        },
    )
    changelog_batch_records: int = field(
        default=0,
        metadata={
            "help": "most records per producer batch on the tables' changelogs; 0 = no limit "
            "but producer_max_batch_bytes; 1 on the embedded broker (its end offsets)"
        },
    )
    commit_interval_s: float = 1.0
    session_timeout_s: float = field(
        default=10.0,
        metadata={
            "help": "consumer group session timeout, 0.5..1800; Kafka's brokers accept 6..1800 by "
            "default, the embedded broker less"
        },
    )
    broker_wait_s: float = field(
        default=30.0, metadata={"help": "how long to wait for Kafka at start before giving up"}
    )
    gc_gen0_threshold: int = field(
        default=50_000,
        metadata={
            "help": "allocations between Python's youngest garbage collections; 0 keeps Python's "
            "own (700), which cost the worker ~20% of its throughput"
        },
    )
    shutdown_timeout_s: float = field(
        default=25.0,
        metadata={
            "help": "longest a SIGTERM/SIGINT shutdown may take before the worker exits anyway "
            "(code 75); keep it below the orchestrator's grace period"
        },
    )
    metrics_port: int = field(default=9309, metadata={"help": "0 disables the metrics server"})
    metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"
    log_format: str = "text"

    def __post_init__(self) -> None:
        # Checked here, and stored without `kafka://` and blanks: aiokafka takes it as it is,
        # Faust as broker_url.
        object.__setattr__(self, "bootstrap_servers", servers(self.bootstrap_servers))
        validate(self)

    @property
    def broker_url(self) -> str:
        """The broker list as Faust takes it."""
        return f"kafka://{self.bootstrap_servers}"

    @property
    def lineage_retention_us(self) -> int:
        return int(self.lineage_retention_days * 86_400_000_000)

    @property
    def allowed_lateness_us(self) -> int:
        return int(self.allowed_lateness_hours * 3_600_000_000)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def namespaced(prefix: str) -> dict[str, str]:
    """App id and every topic under `prefix`: pipelines (or tests) that share a cluster without
    seeing each other's records."""
    return {
        "app_id": prefix,
        "artifacts_topic": f"{prefix}.raw.artifacts",
        "task_results_topic": f"{prefix}.raw.asset-task-results",
        "artifact_events_topic": f"{prefix}.events.artifacts",
        "asset_events_topic": f"{prefix}.events.assets",
        "dead_letter_topic": f"{prefix}.raw.dead-letters",
    }


def as_environ(values: Mapping[str, Any]) -> dict[str, str]:
    """Settings values as the environment variables a worker process reads them from."""
    by_name = {f.name: f for f in fields(Settings)}
    return {env_name(by_name[name]): str(value) for name, value in values.items()}


def env_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("env", f"PREFECT_EVENTS_{f.name.upper()}"))


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Set `PREFECT_EVENTS_*` variables (in any case) that are not settings nor NOT_SETTINGS."""
    known = {env_name(f) for f in fields(Settings)} | NOT_SETTINGS
    return sorted(
        name
        for name, value in environ.items()
        if name.upper().startswith(ENV_PREFIX) and name not in known and value != ""
    )


def meant_variable(name: str) -> str | None:
    """The variable that sets what `name`, no setting's, looks like it was meant to: the broker's
    `KAFKA_BOOTSTRAP_SERVERS` for its name under `PREFECT_EVENTS_`, a setting's own for its name
    in another case; None for a name like no setting's."""
    for f in fields(Settings):
        if name.upper() == f"{ENV_PREFIX}{f.name.upper()}":
            return env_name(f)
    return None


def utf8(name: str, raw: Any) -> Any:
    """`raw`, unless it is a str that cannot be UTF-8: bytes that are not UTF-8 in the environment
    or the command line reach Python as lone surrogates (PEP 383), which orjson, the Kafka clients
    and the logs refuse to encode, far from the variable or flag that brought them."""
    if isinstance(raw, str):
        try:
            raw.encode()
        except UnicodeEncodeError:
            try:
                shown = repr(raw.encode("utf-8", "surrogateescape"))  # the bytes as they were given
            except UnicodeEncodeError:
                shown = ascii(raw)
            raise ConfigError(f"{name}: {shown} is not valid UTF-8") from None
    return raw


Num = TypeVar("Num", int, float)


def number(name: str, raw: str | Num, kind: type[Num]) -> Num:
    """`raw` as an int or a float, read strictly; else ConfigError naming `name` (a setting's
    variable or flag, or a command's numeric flag: every number the CLI takes is read here).

    int() and float() also read `4_0` as 40, other scripts' digits (`٤` as 4), a leading `+` and
    surrounding blanks: a typo or a pasted character would pass as another number. `inf` and `nan`
    pass, for the caller's range check to name."""
    raw = utf8(name, raw)
    if isinstance(raw, kind) and not isinstance(raw, bool):
        return raw
    text = str(raw)
    try:
        if not text.isascii() or "_" in text or text != text.strip() or text.startswith("+"):
            raise ValueError(text)
        return kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}: expected {expected}, got {text!r}") from None


def _coerce(name: str, raw: Any, kind: type) -> Any:
    if kind in (int, float):
        return number(name, raw, kind)
    raw = utf8(name, raw)
    return raw if isinstance(raw, kind) else str(raw).strip()


def load(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment, then from overrides (CLI flags; None = not given).
    Each `PREFECT_EVENTS_*` variable that is not a setting gets a warning line on stderr."""
    environ = os.environ if environ is None else environ
    for name in unknown_variables(environ):
        meant = meant_variable(name)
        hint = f"use {meant}" if meant else "see prefect-events config"
        print(f"prefect-events: warning: {name} is not a setting (ignored); {hint}", file=sys.stderr)
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env = env_name(f)
        if env in environ and environ[env] != "":
            values[f.name] = _coerce(env, environ[env], hints[f.name])
        if overrides and overrides.get(f.name) is not None:
            values[f.name] = _coerce(f"--{f.name.replace('_', '-')}", overrides[f.name], hints[f.name])
    return Settings(**values)


def servers(value: str) -> str:
    """A HOST:PORT[,HOST:PORT] list checked and normalised: no `kafka://` prefixes, no blanks."""
    parts = [part.strip().removeprefix("kafka://") for part in value.split(",")]
    for part in parts:
        match = _SERVER.fullmatch(part)
        if match is None:
            raise ConfigError(f"bootstrap_servers: {value!r} is not a HOST:PORT[,HOST:PORT] list")
        port = match["port"]
        if not 1 <= int(port) <= 65_535:
            raise ConfigError(f"bootstrap_servers: port {port} of {part!r} is out of range [1, 65535]")
    return ",".join(parts)


def topic_name(name: str, value: str) -> str:
    """`value` if Kafka takes it as a topic name, else ConfigError naming `name` (a setting or a
    flag): a client given a bad one retries its metadata request forever."""
    if not _TOPIC.fullmatch(value) or value in (".", ".."):  # Kafka refuses "." and ".."
        raise ConfigError(f"{name}: {value!r} is not a valid Kafka topic name")
    return value


def validate(s: Settings) -> None:
    """Raise ConfigError with one line naming the bad setting."""
    for name in (
        "artifacts_topic",
        "task_results_topic",
        "artifact_events_topic",
        "asset_events_topic",
        "dead_letter_topic",
        "app_id",
    ):
        topic_name(name, getattr(s, name))
    topics = [
        s.artifacts_topic,
        s.task_results_topic,
        s.artifact_events_topic,
        s.asset_events_topic,
        s.dead_letter_topic,
    ]
    if len(set(topics)) != len(topics):
        raise ConfigError("topics: input, output and dead-letter topics must all be different")
    for name, low, high in (
        ("input_partitions", 1, 10_000),
        ("partitions", 1, 10_000),
        ("replication_factor", 1, 100),
        ("standby_replicas", 0, 10),
        ("batch_size", 1, 100_000),
        ("fetch_max_wait_ms", 0, 60_000),
        ("producer_linger_ms", 0, 60_000),
        ("producer_max_batch_bytes", 1, 64 * 1024 * 1024),
        ("changelog_batch_records", 0, 1_000_000),
        ("gc_gen0_threshold", 0, 10_000_000),
        ("metrics_port", 0, 65_535),
        ("rocksdb_write_buffer_mb", 1, 4096),
        ("rocksdb_block_cache_mb", 1, 65_536),
    ):
        value = getattr(s, name)
        if not low <= value <= high:
            raise ConfigError(f"{name}: {value} is out of range [{low}, {high}]")
    for f in fields(s):
        value = getattr(s, f.name)
        # inf and nan compare false to every bound below, and crash int(value * 1000) later.
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name}: {value} is not a finite number")
    # Upper bounds: far beyond any use, and small enough to stay an integer in micro/milliseconds.
    for name, high in (
        ("lineage_retention_days", 36_500),
        ("broker_wait_s", 86_400),
        ("commit_interval_s", 3_600),
        ("shutdown_timeout_s", 3_600),
    ):
        value = getattr(s, name)
        if not 0 < value <= high:
            raise ConfigError(f"{name}: {value} is out of range (0, {high}]")
    if s.lineage_retention_us < 1:  # 1e-320 days passed (0, high] and was no retention at all
        raise ConfigError(f"lineage_retention_days: {s.lineage_retention_days} is below a microsecond")
    if not 0 <= s.allowed_lateness_hours <= 876_000:  # 100 years, as the retention's bound
        raise ConfigError(f"allowed_lateness_hours: {s.allowed_lateness_hours} is out of range [0, 876000]")
    if not 0.5 <= s.session_timeout_s <= 1800:
        raise ConfigError(f"session_timeout_s: {s.session_timeout_s} is out of range [0.5, 1800]")
    if not _STORE.match(s.store):
        raise ConfigError(f"store: {s.store!r} must be memory:// or rocksdb://")
    if s.processing_guarantee == "exactly_once":
        raise ConfigError(_NO_EXACTLY_ONCE)
    if s.processing_guarantee not in GUARANTEES:
        raise ConfigError(
            f"processing_guarantee: {s.processing_guarantee!r} must be one of {', '.join(GUARANTEES)}"
        )
    if s.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(f"log_level: {s.log_level!r} must be one of {', '.join(LOG_LEVELS)}")
    if s.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format: {s.log_format!r} must be one of {', '.join(LOG_FORMATS)}")
