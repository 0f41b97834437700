"""A model server run as a child process (`fashion-pipeline serve`), stopped with its whole process group."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from steps.lifeline import die_with_parent

log = logging.getLogger(__name__)
SERVER_STOP_S = 30.0  # in-flight requests get this long (uvicorn's graceful shutdown is as long)


class ModelServerProcess:
    """`fashion-pipeline serve` as a child process, its output folded into our log.

    It leads its own process group: a terminal's Ctrl-C reaches only its parent, which stops it once.
    It dies with the thread that started it, so start it from one that lives as long as it should.
    """

    def __init__(self, store_uri: str, host: str, port: int, log_sample_rate: float = 0.0) -> None:
        self.args = [_cli(), "--store", store_uri, "serve", "--host", host, "--port", str(port)]
        if log_sample_rate > 0:
            self.args += ["--log-sample-rate", str(log_sample_rate)]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,
            preexec_fn=die_with_parent(),  # started and waited for by the caller's thread
        )
        threading.Thread(target=self._relay, name="server-log", daemon=True).start()

    def _relay(self) -> None:
        server_log = logging.getLogger("server")
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            server_log.info(line.rstrip())

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = SERVER_STOP_S) -> bool:
        """SIGTERM, then SIGKILL after `timeout_s`; True if it stopped by itself, cleanly."""
        if self.proc is None:
            return True
        if self.proc.poll() is None:
            terminate_group(self.proc.pid)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.error("the model server did not stop within %.0f s: killing it", timeout_s)
                self.kill()
                return False
        return self.proc.returncode == 0

    def kill(self) -> None:
        if self.proc is not None:
            terminate_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def terminate_group(pid: int, signum: int = signal.SIGTERM) -> None:
    """Signal a child's whole process group (the child leads it); a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _cli() -> str:
    return shutil.which("fashion-pipeline", path=str(Path(sys.executable).parent)) or "fashion-pipeline"
