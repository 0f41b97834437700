"""`fashion-pipeline models`: the registry's versions, model cards and aliases."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from workflows.cli.app import app, echo_summary, open_registry, user

models_app = typer.Typer(help="The model registry: versions, model cards and aliases.", no_args_is_help=True)
app.add_typer(models_app, name="models", rich_help_panel="Registry and runs")


@models_app.command("list")
def models_list() -> None:
    """Registered versions with their accuracy and aliases."""
    registry = open_registry()
    aliases = _aliases_by_version(registry)
    versions = registry.versions()
    if not versions:
        typer.echo(f"no model versions in {registry.store.uri}")
        return
    typer.echo(f"{'version':<24} {'accuracy':>8}  {'architecture':<12} {'aliases'}")
    for version in versions:
        card = registry.card(version)
        evaluations = registry.records(version, "evaluations")
        accuracy = f"{evaluations[-1]['candidate']['accuracy']:.4f}" if evaluations else "-"
        arch = card.get("params", {}).get("architecture", "?")
        typer.echo(f"{version:<24} {accuracy:>8}  {arch:<12} {', '.join(aliases.get(version, []))}")


def _aliases_by_version(registry: Any) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for alias in ("production", "canary"):
        pointer = registry.alias(alias)
        if pointer:
            result.setdefault(pointer["version"], []).append(alias)
    return result


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="A version id, an alias, or 'latest'.")] = "production",
) -> None:
    """The model card of a version, with its evaluations and gate decisions."""
    registry = open_registry()
    version = registry.resolve(ref)
    shown = {
        "card": registry.card(version),
        "storage_uri": registry.version_uri(version),
        "evaluations": registry.records(version, "evaluations"),
        "decisions": registry.records(version, "decisions"),
    }
    typer.echo(json.dumps(shown, indent=2))


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="A version id, an alias, or 'latest'.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the alias history).")] = "",
    alias: str = "production",
) -> None:
    """Point an alias (default: production) at a version, by hand."""
    registry = open_registry()
    pointer = registry.set_alias(alias, registry.resolve(ref), reason, actor=f"cli:{user()}")
    echo_summary({"alias": alias, "version": pointer["version"], "previous": pointer["previous"] or "-"})


@models_app.command("history")
def models_history(alias: str = "production") -> None:
    """Every change of an alias, oldest first."""
    for entry in open_registry().history(alias):
        was = entry["previous"] or "-"
        typer.echo(
            f"{entry['updated']}  {entry['version']}  (was {was})  {entry['actor']}: {entry['reason']}"
            + _started_by(entry)
        )


def _started_by(entry: dict[str, Any]) -> str:
    """`  [webhook via fashion-pipeline up, event drop-1, run retrain-drop-1]` for a change a run made."""
    started = entry.get("trigger")
    if not isinstance(started, dict):
        return ""
    parts = [f"{started.get('by')} via {started.get('via')}"]
    payload = started.get("payload")
    if isinstance(payload, dict) and payload.get("event_id"):
        parts.append(f"event {payload['event_id']}")
    if entry.get("workflow"):
        parts.append(f"run {entry['workflow']}")
    return f"  [{', '.join(parts)}]"
