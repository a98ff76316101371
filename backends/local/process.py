"""A local model server as a managed background process: pid file and log in the cache's run folder, a start
that waits for its health endpoint, a stop that signals its whole process group. vLLM and llama.cpp's
`llama-server` are both run through it (`backends.local.vllm`, `backends.local.llamacpp`)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx

from backends.local.base_model import cache_dir


def sigterm_interrupts() -> Any:
    """From now on SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so whatever a long command started (a
    compiler, pip, a server) is stopped by its own cleanup instead of left running; returns the previous handler."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


class ServerError(Exception):
    """A local server cannot be installed, started or driven; the message says why and what to do."""


class ManagedServer:
    """One server process, identified by `label` and port."""

    label = "server"
    health_path = "/health"

    def __init__(self, host: str, port: int, startup_timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        run = cache_dir() / "run"
        self.pid_file = run / f"{self.label.lower().replace('.', '')}-{port}.pid"
        self.log_file = run / f"{self.label.lower().replace('.', '')}-{port}.log"
        self._process: subprocess.Popen[bytes] | None = None  # kept so a server we started can be reaped

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def error(self, message: str) -> ServerError:
        return ServerError(message)

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            return httpx.get(f"{self.url}{self.health_path}", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def running_already(self, log: Callable[[str], None]) -> int | None:
        """The pid of our healthy server on this port; an error for a stuck one or a stranger on the port."""
        if (pid := self.pid()) is not None:
            if self.healthy():
                log(f"{self.label} already running (pid {pid}) at {self.url}")
                return pid
            raise self.error(f"{self.label} pid {pid} is alive but {self.url}{self.health_path} does not answer; "
                             f"see {self.log_file}")  # fmt: skip
        if self.healthy():
            raise self.error(f"something else already serves {self.url}; stop it or choose another port")
        return None

    def launch(self, command: list[str], env: dict[str, str]) -> tuple[int, float]:
        """Start `command` in its own session and wait for health; returns (pid, seconds to healthy)."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            out.flush()
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._process = process
        self.pid_file.write_text(str(process.pid))
        started = time.monotonic()
        while not self.healthy(timeout_s=1.0):
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise self.error(f"{self.label} exited with code {process.returncode}:\n{self.log_tail()}")
            if time.monotonic() - started > self.startup_timeout_s:
                self.stop()
                raise self.error(
                    f"{self.label} did not become healthy in {self.startup_timeout_s:g} s; see {self.log_file}"
                )
            time.sleep(0.25)  # polling a health endpoint: the server gives no other readiness signal
        return process.pid, time.monotonic() - started

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM the server's process group, SIGKILL after `timeout_s`; False if none was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self._running(pid):
                time.sleep(0.2)
            if not self._running(pid):
                break
        if self._process is not None:
            self._process.wait(timeout=5)
            self._process = None
        self.pid_file.unlink(missing_ok=True)
        return True

    def _running(self, pid: int) -> bool:
        if self._process is not None and self._process.pid == pid:
            return self._process.poll() is None  # our child: poll() also reaps it
        return alive(pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def offline_env() -> dict[str, str]:
    """The environment for a local server: this one, never reaching for a hub."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env
