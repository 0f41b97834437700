"""What a dead engine leaves behind, found by name and removed: node processes and containers.

Every node carries its run's name and its engine (`steps.lifeline.Owner`): a process in its
environment, a container in its labels. Node processes die with their engine by the kernel's
parent-death signal, and containers by the engine's reaper (workflows/engine/reaper.py). This sweep,
run at each start of `run`, `up`, `webhook` and `runs retry`, is for what escaped both: a machine
that lost power mid-removal, or a node started by an older version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess

from steps.lifeline import Owner

log = logging.getLogger(__name__)

OWNER_ENV, RUN_ENV = "FASHION_PIPELINE_OWNER", "FASHION_PIPELINE_RUN"
OWNER_LABEL, RUN_LABEL = "fashion-pipeline.owner", "fashion-pipeline.run"
CONTAINER_ENGINES = ("podman", "docker")


def node_marks(run: str, owner: Owner) -> dict[str, str]:
    """The environment that names a node process's run and engine."""
    return {OWNER_ENV: str(owner), RUN_ENV: run}


def node_labels(run: str, owner: Owner) -> dict[str, str]:
    """The labels that name a node container's run and engine."""
    return {OWNER_LABEL: str(owner), RUN_LABEL: run}


def sweep() -> list[str]:
    """Remove every node process and container whose engine has ended; what was removed, in words."""
    removed = sweep_processes()
    for engine in CONTAINER_ENGINES:
        if shutil.which(engine):
            removed += sweep_containers(engine)
    for line in removed:
        log.warning("%s", line)
    return removed


def sweep_processes() -> list[str]:
    import psutil

    removed = []
    for process in psutil.process_iter(["pid", "environ", "cmdline"]):
        env = process.info.get("environ") or {}
        owner = Owner.parse(env.get(OWNER_ENV, ""))
        if owner is None or not owner.gone() or process.pid == os.getpid():
            continue
        command = " ".join(process.info.get("cmdline") or [])[:120]
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            pgid = os.getpgid(process.pid)
            if pgid != os.getpgid(0):
                os.killpg(pgid, signal.SIGKILL)  # the node leads its group: its children go with it
            process.kill()
            removed.append(
                f"killed {command!r} (pid {process.pid}) of run {env.get(RUN_ENV, '?')}, "
                f"left by an engine that exited (pid {owner.pid})"
            )
    return removed


def sweep_containers(engine: str) -> list[str]:
    names = subprocess.run(
        [engine, "ps", "--all", "--filter", f"label={OWNER_LABEL}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
    )
    removed = []
    for name in names.stdout.split():
        labels = subprocess.run(
            [
                engine,
                "inspect",
                "--format",
                f'{{{{index .Config.Labels "{OWNER_LABEL}"}}}} {{{{index .Config.Labels "{RUN_LABEL}"}}}}',
                name,
            ],
            capture_output=True,
            text=True,
        ).stdout.split()
        owner = Owner.parse(labels[0]) if labels else None
        if owner is None or not owner.gone():
            continue
        subprocess.run([engine, "rm", "--force", name], capture_output=True)
        run = labels[1] if len(labels) > 1 else "?"
        removed.append(f"removed container {name} of run {run}, left by an engine that exited (pid {owner.pid})")
    return removed
