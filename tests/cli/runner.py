"""Running `saascore` as a user runs it: the console script of this venv, in a subprocess.

`Cli(cwd, env)` runs commands in `cwd` with exactly `env`; `cli.with_env(settings_env(settings))`
points it at a database. `cli.run_together(...)` starts several commands at once and waits for all
of them: each one spends most of a second importing, so independent commands share that time.
`cli.server(...)` runs `serve` or `demo` until the block ends.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

__all__ = ["SAASCORE", "Cli", "Result", "Server", "clean_environment", "free_port"]

SAASCORE = Path(sys.executable).with_name("saascore")
TIMEOUT = 60.0
#: How long a server may take to answer /healthz (imports, migrations, uvicorn).
STARTUP_TIMEOUT = 60.0
#: Variables that configure saascore; the subprocess starts without any of them.
CONFIG_PREFIXES = ("DATABASE_", "DB_", "CLOUD_SQL_", "USE_CLOUD_SQL_CONNECTOR", "SAASCORE_")
#: Variables that change how rich and typer lay out their output.
LAYOUT_VARIABLES = {"COLUMNS", "LINES", "TERMINAL_WIDTH", "FORCE_COLOR", "FORCE_TERMINAL"}


def clean_environment() -> dict[str, str]:
    """`os.environ` without anything that configures saascore (names are case-insensitive)
    or the layout of its output: the output is what a script reading a pipe gets."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(CONFIG_PREFIXES) and key not in LAYOUT_VARIABLES
    }
    return {**environment, "NO_COLOR": "1"}


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"saascore {' '.join(self.args)} -> exit {self.returncode}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )

    def ok(self) -> Result:
        assert self.returncode == 0, str(self)
        assert "Traceback" not in self.stderr, str(self)
        return self

    def error_line(self, code: int | None = None) -> str:
        """The one line the command printed on stderr when it failed (asserting it is one)."""
        assert self.returncode != 0, str(self)
        if code is not None:
            assert self.returncode == code, str(self)
        assert "Traceback" not in self.stderr + self.stdout, str(self)
        lines = self.stderr.splitlines()
        assert len(lines) == 1, str(self)
        assert lines[0].startswith("saascore: "), str(self)
        return lines[0]


@dataclass(frozen=True)
class Cli:
    cwd: Path
    env: dict[str, str]

    def with_env(self, env: dict[str, str]) -> Cli:
        return Cli(self.cwd, {**self.env, **env})

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(SAASCORE), *args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __call__(self, *args: str) -> Result:
        return self.run_together(args)[0]

    def run_together(self, *commands: Sequence[str]) -> list[Result]:
        """Run the commands at the same time; their results in the same order."""
        processes = [(tuple(args), self.start(*args)) for args in commands]
        results = []
        for args, process in processes:
            try:
                stdout, stderr = process.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
                pytest.fail(f"saascore {' '.join(args)} ran longer than {TIMEOUT}s:\n{stderr}")
            results.append(Result(args, process.returncode, stdout, stderr))
        return results

    @contextmanager
    def server(self, *args: str, port: int) -> Iterator[Server]:
        """A server command (`serve`, `demo`) running on `port`, stopped when the block ends."""
        server = Server(self.start(*args), port)
        try:
            yield server
        finally:
            server.stop()


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    stdout: str = ""
    stderr: str = ""
    stopped: bool = False
    #: What `read_stdout_until` read while the server ran (`stdout` starts with it).
    early_stdout: str = ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_until_healthy(self) -> httpx.Response:
        """Poll /healthz until it answers 200 (failing if the server exits or takes too long)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.stderr}")
            try:
                response = httpx.get(self.url("/healthz"), timeout=2.0)
            except httpx.TransportError:
                pass
            else:
                if response.status_code == 200:
                    return response
            time.sleep(0.2)
        pytest.fail(f"{self.url('/healthz')} did not answer 200 within {STARTUP_TIMEOUT}s")

    def read_stdout_until(self, pattern: str, timeout: float = STARTUP_TIMEOUT) -> re.Match[str]:
        """Read the running server's stdout until `pattern` (a regex, multiline) matches.
        Reads the pipe's file descriptor directly, so that `stop` later reads on from here."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        data = self.early_stdout.encode()
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern, data.decode(errors="replace"), re.M)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                pytest.fail(f"no {pattern!r} on the server's stdout within {timeout}s:\n{data!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"the server closed stdout before {pattern!r}:\n{data!r}")
            data += chunk
        self.early_stdout = data.decode(errors="replace")
        return found

    def stop(self) -> None:
        """Stop the server (SIGTERM: uvicorn shuts down cleanly) and keep its output."""
        if self.stopped:
            return
        self.stopped = True
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.stdout, self.stderr = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.stdout, self.stderr = self.process.communicate()
        self.stdout = self.early_stdout + self.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
