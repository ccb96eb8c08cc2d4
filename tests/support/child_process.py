"""A helper program as a real child process (a test agent, a model-server stand-in, an
`orchestrator` command): its output in a log file, ready once it printed a line, stopped with
SIGTERM (SIGKILL if it lingers) or killed with -9. The program itself ends its `main` with
`support.child_main.until_terminated()`, or runs on the SDK's `run_service`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from conftest import wait_until

TESTS = Path(__file__).resolve().parents[1]


class ChildProcess:
    """`argv` as a child process in its own session, stdout and stderr appended to `log`.

    `env` is added to this process's environment, with tests/ on PYTHONPATH so the child can
    import the test helpers (`python -m sdk_test_agent`, `support.child_main`)."""

    def __init__(
        self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.log = log
        python_path = [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._since = 0  # where this run's output starts in `log`

    def spawn(self) -> Self:
        """Start the process without waiting for anything."""
        self._since = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    async def printed(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first match of `pattern` in what this run printed, once it appears. Fails at once
        (and kills the process) if it exits first, or after `timeout`."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.output(since_spawn=True))
            if match:
                found.append(match)
                return True
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"{self.argv} exited before printing {pattern!r}:\n"
                                     f"{self.output()}")  # fmt: skip
            return False

        try:
            await wait_until(
                seen, timeout, 0.05, lambda: f"{pattern!r} from {self.argv}:\n{self.output()}"
            )
        except AssertionError:
            self.kill()
            raise
        return found[0]

    def output(self, since_spawn: bool = False) -> str:
        """The log's text (only this run's with `since_spawn`)."""
        if not self.log.exists():
            return ""
        data = self.log.read_bytes()
        return (data[self._since :] if since_spawn else data).decode(errors="replace")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """`kill -9`: the process vanishes without a word."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not end within `timeout`; its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode
