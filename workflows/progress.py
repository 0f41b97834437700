"""Live progress of a local run in the terminal: a node table when interactive, lines otherwise."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from workflows.engine import Run

_STYLE = {
    "Succeeded": "green",
    "Failed": "red",
    "Error": "red",
    "Running": "yellow",
    "Skipped": "dim",
    "Omitted": "dim",
    "Pending": "dim",
}


def _table(run: Run) -> Table:
    table = Table(title=f"{run.name}: {run.phase}", title_justify="left")
    for column in ("node", "phase", "duration", "message"):
        table.add_column(column)
    for node in run.nodes.values():
        duration = f"{node.duration:.1f}s" if node.duration is not None else ""
        style = _STYLE.get(node.phase, "")
        table.add_row(node.name, f"[{style}]{node.phase}[/]" if style else node.phase, duration, node.message[:80])
    return table


class Progress:
    """Context manager fed by the engine's `on_update`."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.interactive = self.console.is_terminal
        self._live: Live | None = None
        self._seen: dict[str, str] = {}

    def __enter__(self) -> Progress:
        if self.interactive:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, run: Run) -> None:
        if self._live is not None:
            self._live.update(_table(run))
            return
        for node in run.nodes.values():
            state = f"{node.phase}:{node.message}"
            if self._seen.get(node.name) != state and node.phase != "Pending":
                self._seen[node.name] = state
                duration = f" ({node.duration:.1f}s)" if node.phase not in ("Running",) and node.duration else ""
                message = f": {node.message}" if node.message else ""
                print(f"{run.name} {node.name}: {node.phase}{duration}{message}", file=sys.stderr, flush=True)

    def final(self, run: Run) -> None:
        if not self.interactive:
            self.console.print(_table(run))
        failed = [n for n in run.nodes.values() if n.phase in ("Failed", "Error") and n.log]
        for node in failed:
            self.console.print(f"[red]{node.name}[/] log ({node.log}), last lines:")
            lines = open(node.log, errors="replace").read().splitlines()[-15:]
            self.console.print("\n".join(lines), markup=False, highlight=False)
        message = f": {run.message}" if run.message else ""
        elapsed = (run.finished or 0) - run.started
        record = run.directory / "workflow.json"
        self.console.print(f"{run.name} {run.phase}{message} in {elapsed:.1f}s; record: {record}")
