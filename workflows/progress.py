"""Live progress of a local run in the terminal: a node table when interactive, lines otherwise.

A running node's row carries what the step reports through `ARGO_PROGRESS_FILE` (the train step:
its epoch and latest validation accuracy), in the table and, as one line per report, in plain mode.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
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


def node_table(run: Run | dict[str, Any]) -> Table:
    """The node table of a live Run or of a run record (`runs get`)."""
    record = run if isinstance(run, dict) else run.record()
    table = Table(title=f"{record['name']}: {record['phase']}", title_justify="left")
    for column in ("node", "phase", "progress", "duration", "message"):
        table.add_column(column)
    for node in record["nodes"]:
        duration = f"{node['duration_s']:.1f}s" if node.get("duration_s") is not None else ""
        phase = node["phase"]
        style = _STYLE.get(phase, "")
        table.add_row(
            node["name"],
            f"[{style}]{phase}[/]" if style else phase,
            node.get("progress", ""),
            duration,
            node["message"][:80],
        )
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
            self._live.update(node_table(run))
            return
        for node in list(run.nodes.values()):
            state = f"{node.phase}:{node.progress}:{node.message}"
            if self._seen.get(node.name) != state and node.phase != "Pending":
                self._seen[node.name] = state
                duration = f" ({node.duration:.1f}s)" if node.phase not in ("Running",) and node.duration else ""
                # The step's status names its progress in words; the bare `N/M` only when it has none.
                progress = f" {node.progress}" if node.progress and node.phase == "Running" and not node.message else ""
                message = f": {node.message}" if node.message else ""
                print(f"{run.name} {node.name}: {node.phase}{progress}{duration}{message}", file=sys.stderr, flush=True)

    def final(self, run: Run) -> None:
        """The final table (plain mode; the live one stays on a terminal) and the tail of each failed node's log."""
        if not self.interactive:
            self.console.print(node_table(run))
        failed = [n for n in run.nodes.values() if n.phase in ("Failed", "Error") and n.log]
        for node in failed:
            self.console.print(f"[red]{node.name}[/] log ({node.log}), last lines:")
            try:
                lines = open(node.log, errors="replace").read().splitlines()[-15:]
            except OSError:
                lines = ["(no log)"]
            self.console.print("\n".join(lines), markup=False, highlight=False)
