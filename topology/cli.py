"""`prefect-events`: the worker, offline processing, and small Kafka tools around them.

Expected failures (bad flags or config, unreachable broker, unreadable file) end in one line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, NoReturn, TextIO

import orjson

from streams.pipeline import ArtifactPipeline, AssetPipeline, Outcome
from topology import config
from topology.config import ConfigError, Settings

PROG = "prefect-events"
DEMO_SECONDS = 60.0
FORWARD_BATCH_SIZE = 200


class UsageError(Exception):
    """A one-line error for the user (exit 2)."""


# --- argument parsing -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _settings_parser(helps: Mapping[str, str] | None = None) -> _Parser:
    """Every Settings field as a flag; flags override the environment. `helps` replaces the help
    of some, for a command that treats them differently (a parser given as a parent shares its
    flags' objects, so each such command needs a parser of its own)."""
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("settings (each also PREFECT_EVENTS_<NAME>)")
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} [env {config.env_name(f)}, default {f.default!r}]"
        if helps and f.name in helps:
            help_text = helps[f.name]
        group.add_argument(
            flag,
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            # argparse formats help with %: a literal one ("20%") would crash --help.
            help=help_text.replace("%", "%%"),
        )
    return parent


def build_parser() -> argparse.ArgumentParser:
    settings = _settings_parser()
    parser = _Parser(prog=PROG, description="Prefect artifact and asset events from Kafka.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", parents=[settings], help="run the stream processor")
    p.add_argument(
        "--embedded-broker",
        action="store_true",
        help="start the embedded Tansu broker first (for trying it out) and stop it on exit; it "
        "replaces bootstrap_servers and sets store=memory://, fetch_max_wait_ms at most 10 and "
        "changelog_batch_records=1, whatever was given (logged at start; README, The embedded broker)",
    )

    p = sub.add_parser("process", help="process a JSONL file offline, print events as JSONL")
    p.add_argument("--stream", choices=("artifacts", "assets"), required=True)
    p.add_argument(
        "--lineage-retention-days",
        default=None,
        metavar="DAYS",
        help="the setting lineage_retention_days [env PREFECT_EVENTS_LINEAGE_RETENTION_DAYS, default 7.0]",
    )
    p.add_argument(
        "--allowed-lateness-hours",
        default=None,
        metavar="HOURS",
        help="the setting allowed_lateness_hours [env PREFECT_EVENTS_ALLOWED_LATENESS_HOURS, default 24.0]",
    )
    p.add_argument("file", help="JSONL input messages, or - for stdin")

    p = sub.add_parser("produce", parents=[settings], help="publish each line of a file")
    p.add_argument("--topic", required=True)
    p.add_argument(
        "--key-field",
        help="dotted path(s) of the record key in each JSON line, first present wins "
        "(e.g. artifact.id,artifact_id); default: no key",
    )
    p.add_argument("file", help="one message per line, or - for stdin")

    p = sub.add_parser("tail", parents=[settings], help="print a topic's records as JSONL")
    p.add_argument("--topic", required=True)
    p.add_argument("--from-beginning", action="store_true")
    # Numeric flags are strings here, read by config.number as the settings are.
    p.add_argument("--max", default=None, help="stop after N records")
    p.add_argument("--timeout", default=None, help="stop after S idle seconds")
    p.add_argument("--meta", action="store_true", help="wrap each value with key and headers")

    sub.add_parser("config", parents=[settings], help="print the effective configuration")

    demo_settings = _settings_parser(
        {
            "bootstrap_servers": "a Kafka to run the demo on [env KAFKA_BOOTSTRAP_SERVERS; "
            "default: none, the demo starts the embedded broker]"
        }
    )
    p = sub.add_parser(
        "demo",
        parents=[demo_settings],
        help="worker + embedded broker + a demo feed",
        description="Start the embedded broker (unless --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS "
        "names a broker), a worker on it, feed it the demo operations and print the events and dead "
        "letters as they come. On the embedded broker the worker runs with store=memory://, "
        "fetch_max_wait_ms at most 10 and changelog_batch_records=1 (README, The embedded broker).",
    )
    p.add_argument(
        "--seconds",
        default=DEMO_SECONDS,
        help=f"give up after this many seconds [default {DEMO_SECONDS:g}]",
    )

    p = sub.add_parser("forward", parents=[settings], help="deliver events to a Prefect server")
    p.add_argument("--to", required=True, help="Prefect API URL, e.g. http://127.0.0.1:4200/api")
    p.add_argument(
        "--group-id",
        default=None,
        help="the sink's consumer group; a new one re-sends from the start [default <app_id>-forward]",
    )
    p.add_argument(
        "--forward-batch-size",
        default=FORWARD_BATCH_SIZE,
        help=f"most records per request to the server, at least 1 [default {FORWARD_BATCH_SIZE}]",
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Settings)
        if getattr(args, f.name, None) is not None
    }
    return config.load(overrides)


def _broker_given(args: argparse.Namespace) -> bool:
    """The user named a broker, by flag or environment (set empty, the variable is unset)."""
    return args.bootstrap_servers is not None or bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))


def _seconds(flag: str, raw: str | float | None) -> float | None:
    """A duration flag, read and checked as the duration settings are: nan never compares past a
    deadline (the wait was endless), and 0 or less gives up before anything could happen."""
    if raw is None:
        return None
    value = config.number(flag, raw, float)
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a finite number of seconds > 0")
    return value


# --- commands ---------------------------------------------------------------------------------


def cmd_process(args: argparse.Namespace) -> int:
    """Offline: the same processing code over in-memory state, events to stdout, rejects to stderr."""
    settings = config.load(
        {
            "lineage_retention_days": args.lineage_retention_days,
            "allowed_lateness_hours": args.allowed_lateness_hours,
        }
    )
    pipeline: ArtifactPipeline | AssetPipeline
    if args.stream == "artifacts":
        pipeline = ArtifactPipeline(retention_us=settings.lineage_retention_us)
    else:
        pipeline = AssetPipeline(
            retention_us=settings.lineage_retention_us,
            allowed_lateness_us=settings.allowed_lateness_us,
        )
    out = _stdout().buffer
    with _open_input(args.file) as lines:
        for number, line in enumerate(lines, start=1):
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            outcome: Outcome = pipeline.process(raw)
            if outcome.dead_letter is not None:
                sys.stderr.write(
                    orjson.dumps({"line": number, "reason": str(outcome.dead_letter)}).decode() + "\n"
                )
            for event in outcome.events:
                out.write(event.value + b"\n")
    out.flush()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(orjson.dumps(_settings(args).as_dict(), option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from topology.runner import run_worker

    return run_worker(
        _settings(args), embedded_broker=args.embedded_broker, broker_given=_broker_given(args)
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from topology.demo import run_demo

    settings = _settings(args)
    seconds = _seconds("--seconds", args.seconds)
    assert seconds is not None  # it has a default
    # A broker given by flag or environment is used; else the demo brings its own.
    return run_demo(settings, seconds=seconds, embedded_broker=not _broker_given(args))


def cmd_produce(args: argparse.Namespace) -> int:
    from topology.tools import RecordsRefused, produce

    settings = _settings(args)
    config.topic_name("--topic", args.topic)
    with _open_input(args.file) as lines:
        try:
            count = asyncio.run(produce(settings, args.topic, lines, args.key_field))
        except RecordsRefused as exc:
            for reason in exc.reasons:
                print(f"{PROG}: error: {reason}", file=sys.stderr)
            print(
                f"produced {exc.produced} records to {args.topic}; "
                f"{len(exc.reasons)} refused (above)",
                file=sys.stderr,
            )
            return 1
    print(f"produced {count} records to {args.topic}", file=sys.stderr)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from topology.tools import tail

    settings = _settings(args)
    config.topic_name("--topic", args.topic)
    most = None if args.max is None else config.number("--max", args.max, int)
    if most is not None and most < 1:
        raise UsageError("--max must be >= 1")
    timeout = _seconds("--timeout", args.timeout)
    out = _stdout()
    asyncio.run(tail(settings, args.topic, out, args.from_beginning, most, timeout, args.meta))
    return 0


def cmd_forward(args: argparse.Namespace) -> int:
    from topology import logs
    from topology.forward import events_url, forward, log
    from topology.metrics import Metrics, listen
    from topology.stopping import stop_on_signals

    settings = _settings(args)
    try:
        events_url(args.to)
    except ValueError as exc:
        raise UsageError(f"--to: {exc}") from None
    batch_size = config.number("--forward-batch-size", args.forward_batch_size, int)
    if batch_size < 1:
        raise UsageError("--forward-batch-size must be >= 1")
    if args.group_id is not None:
        config.utf8("--group-id", args.group_id)  # else the Kafka client's traceback on joining
    logs.configure(settings)  # as the worker does: log_level and log_format apply

    async def main() -> int:
        stop, started = asyncio.Event(), asyncio.Event()
        metrics = Metrics()
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(stop_on_signals(asyncio.get_running_loop(), stop))
            if settings.metrics_port:
                # Before Kafka, as the worker does: a port in use is one line at start, and
                # /healthz answers while the forwarder waits for the broker (/readyz: 503).
                server = await listen(metrics, settings.metrics_host, settings.metrics_port, started.is_set)
                stack.push_async_callback(server.close)
                log.info("metrics on %s/metrics", server.url)
            return await forward(
                settings,
                args.to,
                group_id=args.group_id,
                batch_size=batch_size,
                stop=stop,
                # Prefect's own variables: Bearer key (Cloud) or basic auth (self-hosted server).
                api_key=os.environ.get("PREFECT_API_KEY") or None,
                auth_string=os.environ.get("PREFECT_API_AUTH_STRING") or None,
                metrics=metrics,
                started=started,
            )

    delivered = asyncio.run(main())
    print(f"delivered {delivered} events", file=sys.stderr)
    return 0


COMMANDS = {
    "process": cmd_process,
    "config": cmd_config,
    "worker": cmd_worker,
    "demo": cmd_demo,
    "produce": cmd_produce,
    "tail": cmd_tail,
    "forward": cmd_forward,
}


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        if sys.stdin is None:  # started with stdin closed (<&-)
            raise UsageError("cannot read -: stdin is closed")
        yield sys.stdin.buffer
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        yield handle


def _stdout() -> TextIO:
    if sys.stdout is None:  # started with stdout closed (>&-)
        raise UsageError("cannot write the output: stdout is closed")
    return sys.stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # An unknown flag's value is taken as the next positional argument, and the one it
        # displaced is what is reported (`--partitions /dev/null`): name the unknown flags alone.
        flags = [arg for arg in extra if arg.startswith("-") and arg != "-"]
        parser.error(f"unrecognized arguments: {' '.join(flags or extra)}")
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`). Point stdout at /dev/null so that the interpreter's
        # final flush of what is still buffered does not fail a second time.
        with contextlib.suppress(OSError, AttributeError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"{PROG}: error: stdout was closed before all output was written", file=sys.stderr)
        return 1
    except Exception as exc:
        # Expected operational failures carry a one-line message; anything else is a bug.
        if _is_expected(exc):
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 1
        raise


def _is_expected(exc: BaseException) -> bool:
    from topology.admin import AdminError
    from topology.embedded_broker import BrokerError

    expected: tuple[type[BaseException], ...] = (AdminError, BrokerError, OSError)
    with contextlib.suppress(ImportError):
        from topology.forward import ForwardError

        expected = (*expected, ForwardError)
    return isinstance(exc, expected)


if __name__ == "__main__":
    sys.exit(main())
