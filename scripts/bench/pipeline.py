#!/usr/bin/env python3
"""Benchmark: what orchestration costs, and how fast the steps without TensorFlow start.

Runs `fashion-pipeline run` (the default config unless -p overrides) and compares its wall time
with the sum of the node durations the engine recorded: the rest is orchestration (parsing,
substitution, scheduling, records). Then times `fetch` (a cache hit) and `gate` as processes.
Targets: orchestration <= 10% of the total; fetch and gate start in < 1 s.

    FASHION_MNIST_MIRROR=../shared/data/fashion-mnist .venv/bin/python scripts/bench/pipeline.py [-p NAME=VALUE]...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = shutil.which("fashion-pipeline", path=str(Path(sys.executable).parent)) or "fashion-pipeline"


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--parameter", action="append", default=[], help="NAME=VALUE for the run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "FASHION_PIPELINE_STORE": str(work / "store"), "TF_CPP_MIN_LOG_LEVEL": "2"}
        subprocess.run([CLI, "fetch", "--out", "fetch"], cwd=work, env=env, check=True, capture_output=True)
        params = [a for p in args.parameter for a in ("-p", p)]
        total = timed([CLI, "run", "--name", "bench", *params], work, env)
        run = json.loads((work / "runs" / "bench" / "workflow.json").read_text())
        for node in run["nodes"]:
            print(f"  {node['name']:<14} {node['phase']:<10} {node['duration_s'] or 0:7.2f} s")
        nodes = sum(node["duration_s"] or 0 for node in run["nodes"])
        overhead = total - nodes
        verdict = "PASS" if overhead <= 0.1 * total else "MISS"
        print(
            f"run {run['phase']}: {total:.1f} s wall, {nodes:.1f} s in the steps, orchestration "
            f"{overhead:.2f} s = {overhead / total:.1%} (target <= 10%: {verdict})"
        )

        fetch = min(timed([CLI, "fetch", "--out", "f"], work, env) for _ in range(3))
        gate_dir = next(n for n in run["nodes"] if n["name"] == "evaluate")["outputs"]["parameters"]["metrics_uri"]
        gate = min(timed([CLI, "gate", "--metrics", gate_dir, "--out", "g"], work, env) for _ in range(3))
        train_help = min(timed([CLI, "train", "--help"], work, env) for _ in range(3))
        for name, seconds in (("fetch (cache hit)", fetch), ("gate", gate), ("train --help", train_help)):
            verdict = "" if name.startswith("train") else f" (target < 1 s: {'PASS' if seconds < 1 else 'MISS'})"
            print(f"{name:<18} {seconds:.2f} s as a whole process{verdict}")


if __name__ == "__main__":
    main()
