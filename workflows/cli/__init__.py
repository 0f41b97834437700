"""`fashion-pipeline`: the command line, a composition root by command group.

    app.py       the Typer app, global options (--store, -v) and what the groups share
    steps.py     fetch, train, evaluate, gate, rollout, report: one per workflow step
    dev.py       run (the local engine), render, lint
    serving.py   serve, predict
    platform.py  webhook, up, drop
    models.py    models list|show|promote|history
    runs.py      runs list|get|logs|delete

Commands only translate options into calls of `steps/` and `workflows/`; a new command goes into
the module of its group (importing it here registers it).
"""

from __future__ import annotations

import sys

import typer

from steps.errors import UserError

# Importing a group registers its commands, in this order in `--help`.
# isort: off
from workflows.cli import steps, dev, serving, platform, models, runs  # noqa: F401

# isort: on
from workflows.cli.app import STATE, app

__all__ = ["STATE", "app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and a non-zero exit."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="fashion-pipeline", standalone_mode=False)
    except typer.Abort:
        print("fashion-pipeline: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # usage errors (typer vendors click's exceptions)
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message())
        else:
            message = " ".join(exc.format_message().split())
            print(f"fashion-pipeline: {message}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except UserError as exc:
        print(f"fashion-pipeline: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fashion-pipeline: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
