"""Prefect itself as a test oracle: its own event models, and a real `prefect server start`.

Prefect lives in a separate venv (`.venv-prefect`, built by scripts/prefect-venv.sh) because its
dependency pins conflict with faust's; we talk to it through subprocesses only. Tests that need it
call `require_prefect_venv()`, which skips them with the build log's tail when the venv cannot be
built (no package index reachable), or fails them when PREFECT_EVENTS_REQUIRE_PREFECT=1.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFECT_VENV = Path(os.environ.get("PREFECT_VENV", ROOT / ".venv-prefect"))
BUILD_SCRIPT = ROOT / "scripts" / "prefect-venv.sh"


class PrefectUnavailable(RuntimeError):
    """The Prefect venv could not be built; the message says why."""


@functools.cache
def ensure_prefect_venv() -> Path:
    """Build the Prefect venv if needed (idempotent, cached per process); return its path."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        env={**os.environ, "PREFECT_VENV": str(PREFECT_VENV)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise PrefectUnavailable(f"{BUILD_SCRIPT.name} failed ({proc.returncode}): {tail}")
    return PREFECT_VENV


def prefect_version(venv: Path) -> str:
    """The pinned version, from the stamp prefect-venv.sh writes ("prefect==X.Y.Z ...")."""
    stamp = (venv / ".stamp").read_text().split()
    return stamp[0].removeprefix("prefect==") if stamp else "?"


def require_prefect_venv() -> Path:
    """The Prefect venv for a test: skip (never silently) or fail when it cannot be built."""
    try:
        return ensure_prefect_venv()
    except PrefectUnavailable as exc:
        if os.environ.get("PREFECT_EVENTS_REQUIRE_PREFECT") == "1":
            pytest.fail(f"Prefect venv required but unavailable: {exc}")
        pytest.skip(f"Prefect venv unavailable (no package index?): {exc}")


# Runs inside .venv-prefect: validate each event with the client model (prefect.events.Event,
# what emit() builds) and the server model (what POST /api/events parses), then apply the size
# limit the server's publisher enforces, to the event as it publishes it, received time and all
# (it drops larger events without an error).
_VALIDATOR = r"""
import json, sys
from pydantic import ValidationError
from prefect.events import Event as ClientEvent
from prefect.server.events.schemas.events import Event as ServerEvent
from prefect.settings import get_current_settings

limit = get_current_settings().server.events.maximum_size_bytes
results = []
for raw in json.load(sys.stdin):
    errors = []
    for model in (ClientEvent, ServerEvent):
        try:
            event = model.model_validate(raw)
        except ValidationError as exc:
            for e in exc.errors():
                msg = ".".join(str(p) for p in e["loc"]) + ": " + e["msg"]
                if msg not in errors:
                    errors.append(msg)
        else:  # the server measures the event with the `received` time it adds
            if model is ServerEvent:
                size = len(event.receive().model_dump_json().encode())
                if size > limit:
                    errors.append(f"size: {size} bytes is over the server's limit of {limit}")
    results.append(errors)
json.dump(results, sys.stdout)
"""


def validate_events(events: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Validate event dicts with Prefect's own models; one list of error strings per event.

    An empty list means Prefect accepts the event. Call it once with many events: each call
    starts a Python process that imports Prefect (~2 s).
    """
    venv = require_prefect_venv()
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _VALIDATOR],
        input=json.dumps(list(events)),
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"Prefect validator crashed: {proc.stderr.strip()[-2000:]}")
    results: list[list[str]] = json.loads(proc.stdout)
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PrefectServer:
    """A running `prefect server start` (SQLite, no UI, no scheduler) on a free local port."""

    process: subprocess.Popen[bytes]
    port: int
    home: Path
    startup_seconds: float
    version: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def log_tail(self, lines: int = 20) -> str:
        path = self.home / "server.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def prefect_server(home: Path, *, timeout: float = 90.0) -> Iterator[PrefectServer]:
    """Start a Prefect server with its state in `home`; stop it (its whole process group) after.

    The database starts as a copy of the venv's pre-migrated template, and the event persister
    flushes every 0.1 s (default 5 s) so events can be read back quickly.
    """
    venv = require_prefect_venv()
    home.mkdir(parents=True, exist_ok=True)
    template = venv / "template" / "prefect.db"
    if template.exists() and not (home / "prefect.db").exists():
        shutil.copyfile(template, home / "prefect.db")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="0.1",
    )
    command = [
        str(venv / "bin" / "prefect"), "server", "start", "--host", "127.0.0.1",
        "--port", str(port), "--no-scheduler", "--no-late-runs", "--no-ui", "--analytics-off",
    ]  # fmt: skip
    started = time.monotonic()
    with open(home / "server.log", "wb") as logfile:
        process = subprocess.Popen(
            command, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = PrefectServer(process, port, home, 0.0, prefect_version(venv))
    try:
        _wait_healthy(server, started + timeout)
        server.startup_seconds = time.monotonic() - started
        yield server
    finally:
        _stop(process)


def _wait_healthy(server: PrefectServer, deadline: float) -> None:
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"prefect server exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"prefect server not healthy in time:\n{server.log_tail()}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (uvicorn may fork), SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
