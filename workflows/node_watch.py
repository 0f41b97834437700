"""While a node runs: its self-reported progress, and a stop that arrived as the node was starting.

A step reports progress in the file named by `ARGO_PROGRESS_FILE`, as on Argo: the executor reads
the file's last line, `k/N`, every few seconds and shows it as the node's progress (docs/progress.md).
A line before it may hold a short status, such as the train step's latest validation accuracy: the
local engine shows it as the node's message, Argo ignores it. Writes replace the file in one
rename, so a reader never sees half a line.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROGRESS_ENV = "ARGO_PROGRESS_FILE"
POLL_S = 0.5
_PROGRESS = re.compile(r"(\d+)/(\d+)")


@dataclass(frozen=True)
class NodeProgress:
    done: int
    total: int
    message: str = ""

    @property
    def text(self) -> str:
        """Argo's `N/M` form."""
        return f"{self.done}/{self.total}"


def write_progress(path: Path | str, done: int, total: int, message: str = "") -> None:
    """Report `done` of `total` (and a one-line status) for whoever watches the node."""
    path = Path(path)
    status = " ".join(message.split())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{status}\n{done}/{total}\n" if status else f"{done}/{total}\n")
    os.replace(tmp, path)


def read_progress(path: Path | str) -> NodeProgress | None:
    """The last valid report in the file, as Argo reads it; None if there is none (yet)."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    if not lines:
        return None
    match = _PROGRESS.fullmatch(lines[-1])
    if not match:
        return None
    done, total = int(match.group(1)), int(match.group(2))
    if done > total:  # Argo refuses N > M
        return None
    message = lines[-2] if len(lines) > 1 and not _PROGRESS.fullmatch(lines[-2]) else ""
    return NodeProgress(done, total, message)


@contextmanager
def watch_node(
    progress_file: Path,
    on_progress: Callable[[NodeProgress], None],
    stopped: Callable[[], bool],
    kill: Callable[[], None],
) -> Iterator[None]:
    """Around a node's execution: report each new progress, and kill the node if the run is stopped.

    The engine's stop kills the node that is running when it comes; one that was starting at that
    moment is caught here, at the next poll.
    """
    done = threading.Event()

    last_seen: list[NodeProgress | None] = [None]

    def poll() -> None:
        while not done.wait(POLL_S):
            if stopped():
                kill()
            progress = read_progress(progress_file)
            if progress is not None and progress != last_seen[0]:
                last_seen[0] = progress
                on_progress(progress)

    thread = threading.Thread(target=poll, name="node-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        final = read_progress(progress_file)  # what the step wrote last, however soon it exited after
        if final is not None and final != last_seen[0]:
            on_progress(final)
