#!/usr/bin/env python3
"""Benchmark: what orchestration costs, and how fast the steps without TensorFlow start.

Runs `fashion-pipeline run` (the default config unless -p overrides) and compares its wall time
with the sum of the node durations the engine recorded: the rest is orchestration (parsing,
substitution, scheduling, records). Then times `fetch` (a cache hit) and `gate` as processes.
Targets: orchestration <= 10% of the total; fetch and gate start in < 1 s.

With --containers, the step images instead: their sizes (target: the slim one <= 15% of the full one),
and what running each node in its image costs against the process runtime: the same quick pipeline
run as processes, in podman with each node in its template's image (fetch, gate and report slim), and
in podman with every node in the full image (`--image`), node by node and wall time, in the same run
(target: the slim images' run no slower than the full image's). With --build, also the images' cold
build (no cache) and a cached rebuild after a code change.

    FASHION_MNIST_MIRROR=../shared/data/fashion-mnist .venv/bin/python scripts/bench/pipeline.py [-p NAME=VALUE]...
    .venv/bin/python scripts/bench/pipeline.py --containers [--build]
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


REPO = Path(__file__).resolve().parents[2]
QUICK = ["-p", "train_limit=3000", "-p", "epochs=1", "-p", "min_accuracy=0.5", "-p", "min_class_recall=0"]


def image_build(base: str) -> None:
    """Cold build (no cache), then a rebuild after a code change (the dependency layer cached)."""
    env = {**os.environ, "PYTHON_IMAGE": base, "CONTAINER_ENGINE": "podman"}
    build = [str(REPO / "scripts" / "build-image.sh"), "--no-load"]
    cold = timed([*build, "--no-cache"], REPO, env)
    marker = REPO / "steps" / "_bench_marker.py"
    marker.write_text("# a code change for the cached rebuild\n")
    try:
        cached = timed(build, REPO, env)
    finally:
        marker.unlink()
    print(f"image build: cold {cold:.0f} s, cached after a code change {cached:.0f} s")


def containers(args: argparse.Namespace) -> None:
    from workflows import templates

    if args.build:
        image_build(args.base)
    sizes = {}
    for image in (templates.IMAGE, templates.SLIM_IMAGE):
        size = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True
        )
        if size.returncode != 0:
            sys.exit(f"{image} is not built: scripts/build-image.sh (or pass --build)")
        sizes[image] = int(size.stdout)
        start = min(timed(["podman", "run", "--rm", image, "true"], REPO, dict(os.environ)) for _ in range(3))
        print(f"image {image}: {sizes[image] / 1e9:.3f} GB; podman run --rm IMAGE true: {start:.2f} s")
    ratio = sizes[templates.SLIM_IMAGE] / sizes[templates.IMAGE]
    print(f"slim / full: {ratio:.1%} (target <= 15%: {'PASS' if ratio <= 0.15 else 'MISS'})")
    variants = {
        "process": ["--runtime", "process"],
        "podman": ["--runtime", "podman"],
        "podman-full": ["--runtime", "podman", "--image", templates.IMAGE],
    }
    with tempfile.TemporaryDirectory(prefix="bench-containers-") as tmp:
        mirror = os.environ.get("FASHION_MNIST_MIRROR", str(REPO.parent / "shared" / "data" / "fashion-mnist"))
        durations, walls = {}, {}
        for variant, runtime in variants.items():
            # One store each, the dataset already in it: every run does the same work (a first promotion).
            work = Path(tmp) / variant
            work.mkdir()
            env = {**os.environ, "FASHION_PIPELINE_STORE": str(work / "store"), "TF_CPP_MIN_LOG_LEVEL": "2"}
            subprocess.run([CLI, "fetch", "--data-url", mirror, "--out", "f"], cwd=work, env=env, capture_output=True)
            name = f"bench-{variant}"
            started = time.perf_counter()
            subprocess.run([CLI, "run", *runtime, "--name", name, *QUICK], cwd=work, env=env, capture_output=True)
            walls[variant] = time.perf_counter() - started
            run = json.loads((work / "runs" / name / "workflow.json").read_text())
            durations[variant] = {n["name"]: n["duration_s"] or 0.0 for n in run["nodes"]}
            print(f"{variant}: run {run['phase']} in {walls[variant]:.1f} s")
        print(f"  {'node':<14} {'process':>8} {'podman':>8} {'full img':>8} {'slim - full':>11}")
        for node, seconds in durations["process"].items():
            own, full = durations["podman"].get(node, 0.0), durations["podman-full"].get(node, 0.0)
            print(f"  {node:<14} {seconds:7.2f}s {own:7.2f}s {full:7.2f}s {own - full:+10.2f}s")
        ratio = walls["podman"] / walls["podman-full"]
        print(
            f"wall: podman, each node its image {walls['podman']:.1f} s vs every node in the full image "
            f"{walls['podman-full']:.1f} s = {ratio:.3f}x (target no slower: {'PASS' if ratio <= 1.02 else 'MISS'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--parameter", action="append", default=[], help="NAME=VALUE for the run")
    parser.add_argument("--containers", action="store_true", help="measure the step image instead")
    parser.add_argument("--build", action="store_true", help="with --containers: also time the image build")
    parser.add_argument("--base", default="localhost/fashion-pipeline/python:3.11-bookworm", help="the base image")
    args = parser.parse_args()
    if args.containers:
        containers(args)
        return
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
