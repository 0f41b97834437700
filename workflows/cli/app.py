"""The `fashion-pipeline` Typer app, its global options, and what every command group shares.

The command modules next to this one register their commands on `app` (or a sub-app) and stay
thin: they turn options into the arguments of a function in `steps/` or `workflows/` and print
its result. Output parameters are files in `--out`, one value per file, as Argo reads them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from steps import hardware
from steps.errors import UserError
from workflows.cli.native_log import quiet_tensorflow_import

app = typer.Typer(
    name="fashion-pipeline",
    help="Fetch Fashion-MNIST, train, evaluate, gate and register models; run the pipeline locally.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # `--install-completion`: run names complete from the runs directory
)

DEFAULT_STORE = "store"
VERBOSE_ENV = "FASHION_PIPELINE_VERBOSE"
WORKFLOW_ENV = "FASHION_PIPELINE_WORKFLOW"
# On a laptop the rollout goes to the local model server (the workflow's default is KServe).
EMBEDDED_TARGET = "local"

log = logging.getLogger(__name__)


class YesNo(StrEnum):
    yes = "true"
    no = "false"


class _State:
    store_uri: str = DEFAULT_STORE


STATE = _State()


@app.callback()
def _global(
    store: Annotated[
        str,
        typer.Option(
            envvar="FASHION_PIPELINE_STORE",
            help="Where datasets and models live: a path, file:///path or s3://bucket/prefix.",
        ),
    ] = DEFAULT_STORE,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            envvar=VERBOSE_ENV,
            help="Log everything: debug detail and TensorFlow's own C++ log, here and in the processes started.",
        ),
    ] = False,
) -> None:
    STATE.store_uri = store
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Before TensorFlow loads, in this process and those it starts (nodes, model servers, in a container too).
    hardware.decide_onednn()
    if verbose:
        # Inherited by the pipeline's nodes and the model server, which then log everything too.
        os.environ[VERBOSE_ENV] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    for noisy in ("urllib3", "matplotlib", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # TensorFlow's C++ banner lines are noise to a user; keep warnings and errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_tensorflow_import()


def open_store() -> Any:
    from steps.storage import open_store as open_uri

    return open_uri(STATE.store_uri)


def open_registry() -> Any:
    from steps.registry import Registry

    return Registry(open_store())


def workflow_name() -> str | None:
    """The Argo workflow this step runs in (set by the template), None when run by hand."""
    return os.environ.get(WORKFLOW_ENV) or None


def user() -> str:
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"


def write_outputs(step: str, out: Path, values: dict[str, Any]) -> None:
    """One file per output parameter, as Argo's `valueFrom.path` reads them: exactly the step's declared ones."""
    from workflows.spec import check_values

    check_values(step, values)
    out.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value)
        (out / name).write_text(text)


def echo_summary(values: dict[str, Any]) -> None:
    width = max(len(k) for k in values)
    for key, value in values.items():
        typer.echo(f"{key:<{width}}  {value}")


def parse_parameters(items: list[str] | None) -> dict[str, str]:
    """`-p NAME=VALUE` options as a dict (checked against the workflow by the engine or the run queue)."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"-p {item!r}: use NAME=VALUE")
        overrides[key.strip()] = value
    from workflows.arguments import check_values

    check_values(overrides)
    return overrides


def embedded_defaults(declared: dict[str, str]) -> dict[str, str]:
    """What differs on a laptop: the local store, a local rollout target, S3 only if configured."""
    defaults = {
        "store": open_store().uri,
        "rollout_target": EMBEDDED_TARGET,
        "s3_endpoint": os.environ.get("S3_ENDPOINT", ""),
    }
    return {k: v for k, v in defaults.items() if k in declared}


OutOption = Annotated[Path, typer.Option(help="Directory for output parameters and reports.")]
ParameterOption = Annotated[
    list[str] | None, typer.Option("--parameter", "-p", help="NAME=VALUE, as with `argo submit -p`.")
]
RunsDirOption = Annotated[Path, typer.Option(help="Where run records and node logs go.")]
