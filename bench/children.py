"""Child processes of the bench: start, wait until ready, sample CPU and RSS, stop by pid."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

# Helpers run as `python -m bench.<module>` from the repository root, where `bench` is a package.
REPO_ROOT = Path(__file__).resolve().parent.parent
READY = "READY"


class ChildFailed(RuntimeError):
    """A child process exited or did not become ready in time."""


class Child:
    """One process we started; only its own pid (and the children it spawned) are ever signalled."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_dir: Path,
        env: dict | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self._spawned: list[psutil.Process] = []
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def module(cls, name: str, module: str, args: list[str], log_dir: Path, env=None) -> Child:
        """A bench helper module (`bench.<module>`) run with this Python; it prints READY when
        it serves."""
        command = [sys.executable, "-m", f"{__package__}.{module}", *args]
        return cls(name, command, log_dir, env, cwd=REPO_ROOT)

    def start(self, stdout_ready: bool = True) -> Child:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE if stdout_ready else log,
            stderr=log,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the child prints READY on stdout (bounded by `timeout`)."""
        assert self.proc is not None and self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline = time.monotonic() + timeout
        buffer = b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChildFailed(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            chunk = self.proc.stdout.read(4096) or b""
            buffer += chunk
            if READY.encode() in buffer:
                return
            time.sleep(0.02)
        raise ChildFailed(f"{self.name} not ready after {timeout}s: {self.tail()}")

    async def wait_until(self, probe: Callable[[], Awaitable[bool]], timeout: float) -> None:
        """Poll `probe` until it is true while the child stays alive (bounded by `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ChildFailed(f"{self.name} exited: {self.tail()}")
            if await probe():
                return
            await asyncio.sleep(0.1)
        raise ChildFailed(f"{self.name} not ready after {timeout}s: {self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def processes(self) -> list[psutil.Process]:
        """This child and everything it spawned."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def terminate(self) -> None:
        """SIGTERM our pid if it runs (`stop` then waits): lets several children stop at once."""
        if self.proc is not None and self.proc.poll() is None:
            self._spawned = self.processes()[1:]  # read while our pid still leads them
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM our pid, then SIGKILL it and any process it spawned that is still there."""
        if self.proc is None:
            return
        spawned = self._spawned or self.processes()[1:]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        for proc in spawned:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        self._spawned = []


class Usage:
    """CPU seconds and RSS of a set of children, between two snapshots."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self._cpu0 = self.cpu_seconds()

    def cpu_seconds(self) -> float:
        total = 0.0
        for child in self.children:
            for proc in child.processes():
                try:
                    times = proc.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for child in self.children:
            for proc in child.processes():
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
        return total

    def report(self, completed: int) -> dict:
        """CPU seconds used since construction, per 1,000 operations, and RSS now."""
        used = self.cpu_seconds() - self._cpu0
        return {
            "cpu_seconds": round(used, 3),
            "cpu_seconds_per_1000": round(used / completed * 1000, 4) if completed else None,
            "rss_mib": round(self.rss_bytes() / 2**20, 1),
        }


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port now."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


async def until_signalled() -> None:
    """Inside a child: return on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def announce_ready() -> None:
    """Inside a child: tell the parent it serves."""
    print(READY, flush=True)
