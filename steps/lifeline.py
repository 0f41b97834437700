"""Children that die with their parent, and a way to tell a dead parent from a live one.

A child started with `preexec_fn=die_with_parent()` gets SIGKILL from the kernel when the thread
that started it ends (Linux's parent-death signal, PR_SET_PDEATHSIG). So the thread that starts a
child must wait for it, as every caller here does. A parent that died before the child armed the
signal is caught by the check after arming it.

`Owner` names a process without guessing: host, pid and the kernel's start time of that pid. A pid
reused by another process has another start time. Records and children carry it, so a later start
can tell what a dead process left behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1
# Start times are read from /proc in clock ticks; a mismatch smaller than this is the same process.
_SAME_START_S = 0.05


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that ties the child to this process (None where the kernel cannot: not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    parent = os.getpid()

    def arm() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(126)  # the parent is already gone (or the signal cannot be armed): never run orphaned

    return arm


@dataclass(frozen=True)
class Owner:
    """A process on a host, as `host/pid/start`, the start time in seconds since the epoch."""

    host: str
    pid: int
    started: float

    @classmethod
    def current(cls) -> Owner:
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> Owner:
        import psutil  # a dependency of kserve

        return cls(socket.gethostname(), pid, psutil.Process(pid).create_time())

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner written by `str()`, or None if `text` is not one."""
        host, _, rest = text.rpartition("/")
        host, _, pid = host.rpartition("/")
        try:
            return cls(host, int(pid), float(rest)) if host else None
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}/{self.started:.2f}"

    def as_record(self) -> dict[str, object]:
        return {"host": self.host, "pid": self.pid, "started": round(self.started, 2)}

    @classmethod
    def from_record(cls, record: object) -> Owner | None:
        if not isinstance(record, dict):
            return None
        try:
            return cls(str(record["host"]), int(record["pid"]), float(record["started"]))
        except (KeyError, TypeError, ValueError):
            return None

    def gone(self) -> bool:
        """True when this process has certainly ended; False if it lives, or lives on another host."""
        import psutil

        if self.host != socket.gethostname():
            return False  # another machine's process: nothing here can tell
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.started) > _SAME_START_S:
                return True  # the pid was reused
            return process.status() == psutil.STATUS_ZOMBIE  # ended, not yet reaped by its parent
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False
