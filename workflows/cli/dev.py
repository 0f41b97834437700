"""Working on the pipeline itself: run it on the local engine, render the manifests, lint them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from steps.errors import UserError
from workflows.cli.app import ParameterOption, RunsDirOption, app, embedded_defaults, parse_parameters, user

if TYPE_CHECKING:
    from workflows.engine import Engine, Run
    from workflows.engine.runtime import Runtime

PANEL = "Development"

OUTPUT_FORMATS = ("text", "json")


def node_runtime(name: str, image: str | None, manifest: dict[str, Any], values: dict[str, str]) -> Runtime:
    """Where the nodes run (`--runtime`, `--image`), with the file store a container runtime mounts."""
    from workflows.engine import resolve_parameters
    from workflows.engine.runtime import make_runtime

    return make_runtime(name, image=image, file_store=file_store(resolve_parameters(manifest, values)))


def file_store(values: dict[str, str]) -> Path | None:
    """The directory of a file store the nodes use (a container runtime mounts it at the same path)."""
    from steps.storage import open_store

    store = values.get("store")
    if not store or store.startswith("s3://"):
        return None
    return Path(open_store(store).uri.removeprefix("file://"))


@app.command(rich_help_panel=PANEL)
def run(
    parameter: ParameterOption = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="A compiled Workflow(Template) YAML (default: compiled now).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The run's name (default: template name + random suffix).")] = None,
    runs_dir: RunsDirOption = Path("runs"),
    runtime: Annotated[
        str,
        typer.Option(
            help="Where each node runs: process (this Python environment), or podman, docker, container "
            "(whichever is installed): the template's image, as its pod runs on a cluster."
        ),
    ] = "process",
    image: Annotated[
        str | None, typer.Option(help="With a container runtime: run every node in this image instead.")
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="text: the result in words; json: the run record, for scripts.")
    ] = "text",
) -> None:
    """Run the pipeline on the local engine: the same compiled workflow `argo submit` sends.

    SIGTERM or Ctrl-C stops it like `argo stop` (the exit handler still runs; a second signal skips
    it) and records the run as Failed with the reason.
    """
    from workflows import trigger
    from workflows.engine import Engine, load_manifest, workflow_parameters

    if output not in OUTPUT_FORMATS:
        raise UserError(f"--output {output!r}: use one of {', '.join(OUTPUT_FORMATS)}")

    if file is not None:
        manifest = load_manifest(file)
    else:
        from workflows.pipeline import manifest as compiled

        manifest = compiled()

    overrides = parse_parameters(parameter)
    if trigger.ARGUMENT in overrides:
        raise UserError(f"-p {trigger.ARGUMENT}: set by the launcher (it records how each run started)")
    declared = workflow_parameters(manifest)
    values = {**embedded_defaults(declared), **overrides}
    if trigger.ARGUMENT in declared:
        values[trigger.ARGUMENT] = trigger.summary("cli", "fashion-pipeline run", user=user(), operator=overrides)
    nodes = node_runtime(runtime, image, manifest, values)
    execute_foreground(
        lambda on_update: Engine(manifest, runs_dir, values, name=name, on_update=on_update, runtime=nodes),
        "fashion-pipeline run",
        output,
    )


def execute_foreground(make_engine: Callable[[Callable[[Run], None]], Engine], what: str, output: str) -> None:
    """Run a workflow in this process with its progress on the terminal; a stop signal stops it like `argo stop`.

    What a crash of an earlier engine left (node processes, containers) is removed first.
    """
    from workflows.engine.orphans import sweep
    from workflows.progress import Progress
    from workflows.shutdown import Shutdown, kill_descendants

    sweep()
    shutdown = Shutdown(what).install()
    with Progress() as progress:
        engine = make_engine(progress.update)
        shutdown.on_stop(lambda: engine.stop(shutdown.reason))

        def force() -> None:
            engine.terminate(shutdown.reason)
            kill_descendants()

        shutdown.on_force(force)
        result = engine.execute()
    progress.final(result)
    _print_result(result.record(), result.directory, output)
    if result.phase != "Succeeded":
        raise typer.Exit(shutdown.exit_status() if shutdown.requested.is_set() else 1)


def _print_result(record: dict[str, Any], run_dir: Path, output: str) -> None:
    """What a run produced, on stdout: its summary in words, or its record as JSON."""
    from workflows.run_summary import lines, summarise

    if output == "json":
        typer.echo(json.dumps(record, indent=2))
    else:
        typer.echo("\n".join(lines(summarise(record, run_dir))))


@app.command(rich_help_panel=PANEL)
def render(
    check: Annotated[
        bool, typer.Option("--check", help="Exit non-zero if argo/ or the payload schema is stale; write nothing.")
    ] = False,
    out: Annotated[Path, typer.Option(help="The manifests directory.")] = Path("argo"),
) -> None:
    """Compile the Hera workflows into argo/ (deterministic YAML), and the retrain payload's schema."""
    from workflows.render import render as write
    from workflows.render import stale
    from workflows.triggers.payload import SCHEMA_PATH

    if check:
        outdated = stale(out)
        if outdated:
            raise UserError(f"{', '.join(outdated)} is stale: run `fashion-pipeline render` and commit the result")
        typer.echo(f"{out}/ and {SCHEMA_PATH.name} are up to date")
        return
    written = write(out)
    typer.echo(
        "\n".join(f"wrote {path}" for path in written) or f"{out}/ and {SCHEMA_PATH.name} were already up to date"
    )


@app.command(rich_help_panel=PANEL)
def lint(
    paths: Annotated[list[Path] | None, typer.Argument(help="Manifest files or directories (default: argo/).")] = None,
    schemas: Annotated[
        Path | None,
        typer.Option(envvar="FASHION_PIPELINE_SCHEMAS", help="Directory with the pinned upstream schemas."),
    ] = None,
) -> None:
    """Validate manifests strictly against the Argo, Argo Events, KServe and Kubernetes schemas."""
    from workflows.validate import lint_paths

    targets = paths or [Path("argo")]
    for target in targets:
        if not target.exists():
            raise UserError(f"{target} does not exist")
    problems = lint_paths(targets, schemas or Path("schemas"))
    for problem in problems:
        typer.echo(str(problem), err=True)
    if problems:
        raise UserError(f"{len(problems)} problem(s) in {', '.join(map(str, targets))}")
    typer.echo(f"{', '.join(map(str, targets))}: no problems")
