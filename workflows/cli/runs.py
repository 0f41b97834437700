"""`fashion-pipeline runs`: local runs, like `argo list`, `argo get`, `argo logs`, `argo retry`, `argo delete`.

Everything is read from the runs directory the engine writes (`runs/<name>/workflow.json` and each
node's `attempt-N/log.txt`), so it works while a run is going on in another process. A run whose
engine died is shown, and recorded, as Error: `engine exited unexpectedly`.
"""

from __future__ import annotations

import difflib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from steps.errors import UserError
from workflows.cli.app import app
from workflows.engine import records

runs_app = typer.Typer(help="Local runs: list, get, logs, delete (like the argo CLI).", no_args_is_help=True)
app.add_typer(runs_app, name="runs", rich_help_panel="Registry and runs")

FOLLOW_POLL_S = 0.5
_MARK = {"Succeeded": "✔", "Failed": "✖", "Error": "⚠", "Running": "●", "Skipped": "○", "Omitted": "-", "Pending": "◷"}


def _complete_name(ctx: typer.Context, incomplete: str) -> list[str]:
    runs_dir = Path(ctx.params.get("runs_dir") or "runs")
    return [name for name in _names(runs_dir) if name.startswith(incomplete)]


RunsDir = Annotated[Path, typer.Option(help="Where run records and node logs are.")]
RunName = Annotated[str, typer.Argument(help="The run's name.", autocompletion=_complete_name)]
Output = Annotated[str, typer.Option("--output", "-o", help="text, or json for scripts.")]


def _names(runs_dir: Path) -> list[str]:
    if not runs_dir.is_dir():
        return []
    return sorted(d.name for d in runs_dir.iterdir() if (d / "workflow.json").is_file())


def read_record(runs_dir: Path, name: str) -> dict[str, Any]:
    """A run's record; an unknown name is a user error naming the closest ones."""
    path = runs_dir / name / "workflow.json"
    if not path.is_file():
        known = _names(runs_dir)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f": did you mean {', '.join(close)}?" if close else f" ({len(known)} runs there: `runs list`)"
        raise UserError(f"no run named {name!r} in {runs_dir}{hint}")
    try:
        return records.read_record(path.parent)
    except json.JSONDecodeError as exc:
        raise UserError(f"the record of {name} ({path}) is not valid JSON: {exc}") from exc


def _check_output(output: str) -> None:
    if output not in ("text", "json"):
        raise UserError(f"--output {output!r}: use text or json")


def _started(record: dict[str, Any]) -> str:
    stamp = record.get("started")
    if not stamp:
        return "-"
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


@runs_app.command("list")
def runs_list(runs_dir: RunsDir = Path("runs"), output: Output = "text") -> None:
    """Runs, newest first: name, phase, started, duration, gate decision and model version."""
    _check_output(output)
    records = [read_record(runs_dir, name) for name in _names(runs_dir)]
    records.sort(key=lambda r: r.get("started") or "", reverse=True)
    if output == "json":
        typer.echo(json.dumps(records, indent=2))
        return
    if not records:
        typer.echo(f"no runs in {runs_dir}")
        return
    rows = [("NAME", "PHASE", "STARTED", "DURATION", "DECISION", "MODEL")]
    for record in records:
        outputs = record.get("outputs", {}).get("parameters", {})
        rows.append(
            (
                record["name"],
                record.get("phase", "?"),
                _started(record),
                _duration(record.get("duration_s")),
                outputs.get("decision") or "-",
                outputs.get("model_version") or "-",
            )
        )
    _table(rows)


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@runs_app.command("get")
def runs_get(name: RunName, runs_dir: RunsDir = Path("runs"), output: Output = "text") -> None:
    """A run: its phase, parameters and outputs, and the node tree with phases, durations, messages and outputs."""
    _check_output(output)
    record = read_record(runs_dir, name)
    if output == "json":
        typer.echo(json.dumps(record, indent=2))
        return
    header = [
        ("Name:", record["name"]),
        ("Phase:", record.get("phase", "?")),
        ("Message:", record.get("message") or ""),
        ("Started:", _started(record)),
        ("Duration:", _duration(record.get("duration_s"))),
    ]
    for label, value in header:
        if value:
            typer.echo(f"{label:<12}{value}")
    outputs = record.get("outputs", {}).get("parameters", {})
    if outputs:
        typer.echo("Outputs:")
        for key, value in outputs.items():
            typer.echo(f"  {key}: {value}")
    typer.echo("")
    nodes = record.get("nodes", [])
    rows = [("STEP", "PHASE", "PROGRESS", "DURATION", "MESSAGE")]
    for i, node in enumerate(nodes):
        branch = "└─" if i == len(nodes) - 1 else "├─"
        mark = _MARK.get(node["phase"], "?")
        rows.append(
            (
                f"{branch} {mark} {node['name']}",
                node["phase"],
                node.get("progress") or "",
                _duration(node.get("duration_s")) if node.get("duration_s") is not None else "",
                node.get("message") or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    typer.echo(" ".join(cell.ljust(width) for cell, width in zip(rows[0], widths, strict=True)).rstrip())
    typer.echo(f"● {record['name']}")
    for row, node in zip(rows[1:], nodes, strict=True):
        typer.echo(" ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        pipe = "  " if node is nodes[-1] else "│ "
        for key, value in node.get("outputs", {}).get("parameters", {}).items():
            typer.echo(f"{pipe}    {key} = {value}")


def _log_files(run_dir: Path, node: str) -> list[Path]:
    """A node's logs, one per attempt, in order."""
    attempts = [p for p in (run_dir / node).glob("attempt-*/log.txt")]
    return sorted(attempts, key=lambda p: int(p.parent.name.removeprefix("attempt-")))


@runs_app.command("logs")
def runs_logs(
    name: RunName,
    node: Annotated[str | None, typer.Option("--node", "-n", help="Only this node's log.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """The nodes' logs, each line prefixed with its node (as `argo logs` prefixes the pod)."""
    record = read_record(runs_dir, name)
    names = [n["name"] for n in record.get("nodes", [])]
    if node is not None and node not in names:
        if record.get("phase") != "Running":
            raise UserError(f"run {name} has no node {node!r}: it has {', '.join(names) or 'none'}")
    run_dir = runs_dir / name
    offsets: dict[Path, int] = {}

    def drain() -> bool:
        current = read_record(runs_dir, name)
        for item in current.get("nodes", []):
            if node is not None and item["name"] != node:
                continue
            prefix = "" if node is not None else f"{item['name']}: "
            for path in _log_files(run_dir, item["name"]):
                with open(path, "rb") as handle:
                    handle.seek(offsets.get(path, 0))
                    data = handle.read()
                # Only whole lines: a line still being written is printed when it is complete.
                end = data.rfind(b"\n") + 1 if follow and current.get("phase") == "Running" else len(data)
                if end:
                    text = data[:end].decode(errors="replace")
                    sys.stdout.write("".join(f"{prefix}{line}\n" for line in text.splitlines()))
                    sys.stdout.flush()
                    offsets[path] = offsets.get(path, 0) + end
        return current.get("phase") == "Running"

    running = drain()
    while follow and running:
        time.sleep(FOLLOW_POLL_S)
        running = drain()
    if follow:
        drain()


@runs_app.command("retry")
def runs_retry(
    name: RunName,
    runs_dir: RunsDir = Path("runs"),
    output: Annotated[
        str, typer.Option("--output", "-o", help="text: the result in words; json: the run record, for scripts.")
    ] = "text",
) -> None:
    """Run a Failed or Error run again from its failed or interrupted nodes, like `argo retry`.

    Same workflow, same arguments, same place (process or image). Nodes that Succeeded are not run
    again: their recorded outputs stand. The exit handler runs again. The record keeps every try.
    """
    from workflows.cli.dev import execute_foreground
    from workflows.engine import Engine

    _check_output(output)
    record = read_record(runs_dir, name)  # an unknown name: the closest ones
    runtime = _recorded_runtime(runs_dir / name, record)
    execute_foreground(
        lambda on_update: Engine.retry(runs_dir, name, on_update, runtime), "fashion-pipeline runs retry", output
    )


def _recorded_runtime(run_dir: Path, record: dict[str, Any]) -> Any:
    """The runtime the run's nodes ran in (`run --runtime`, `--image`); None for the process runtime."""
    from workflows.cli.dev import node_runtime

    runtime = record.get("runtime") or {}
    manifest_path = run_dir / records.MANIFEST_FILE
    if runtime.get("name", "process") == "process" or not manifest_path.is_file():
        return None  # (without its manifest the run cannot be retried: Engine.retry says so)
    values = {k: str(v) for k, v in record.get("parameters", {}).items()}
    return node_runtime(runtime["name"], runtime.get("image"), json.loads(manifest_path.read_text()), values)


@runs_app.command("delete")
def runs_delete(
    names: Annotated[list[str], typer.Argument(help="Runs to delete.", autocompletion=_complete_name)],
    force: Annotated[
        bool, typer.Option(help="Delete a run even while it is Running (a run whose engine died reads as Error).")
    ] = False,
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """Delete runs: their records, logs and node outputs (models in the registry stay)."""
    records = {name: read_record(runs_dir, name) for name in names}
    for name, record in records.items():
        if record.get("phase") == "Running" and not force:
            raise UserError(f"run {name} is Running: stop it first (or --force to delete it anyway)")
    for name in records:
        shutil.rmtree(runs_dir / name)
        typer.echo(f"deleted {name}")
