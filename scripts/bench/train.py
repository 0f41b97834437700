#!/usr/bin/env python3
"""Benchmark: the default train and evaluate steps on each CPU tier, side by side, against a bare Keras loop.

For each tier (`native`: this CPU; `avx2`: an AVX2-only CPU emulated by scripts/as-avx2.sh) and each
seed, runs `fashion-pipeline train` and `fashion-pipeline evaluate` on the full real data as the
pipeline's nodes run them (one process each, the default budget or --budget), and prints their wall
times, the test accuracy, what fitting did (steps, epochs, images/s, GFLOPS), and in the same run a bare
Keras loop (`model.fit` on arrays) on the same model, precision and batch: the train node's images/s
as a share of it, and what oneDNN gives the bare loop on that tier.
Targets (2-core CPUs): train + evaluate <= 120 s on every tier; accuracy >= 93.5% where bfloat16 is
native, >= 92.5% on AVX2; the train node within 15% of the bare loop. Nightly (--budget 600): >= 94.5%
on the bfloat16 tier.

    FASHION_MNIST_MIRROR=../shared/data/fashion-mnist .venv/bin/python scripts/bench/train.py [--tiers native,avx2]
    .venv/bin/python scripts/bench/train.py --tiers native --budget 600 --no-bare      # the nightly budget
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = shutil.which("fashion-pipeline", path=str(Path(sys.executable).parent)) or "fashion-pipeline"
TIERS = {"native": [], "avx2": [str(REPO / "scripts" / "as-avx2.sh")]}
BARE_STEPS = 200


def bare_loop(dataset_uri: str, architecture: str, precision: str, batch_size: int, steps: int) -> None:
    """What a Keras user writes: build, compile, `fit` on arrays. Prints steady images/s (after a warm-up)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    from steps.dataset import load_dataset
    from steps.model import build_model

    data = load_dataset(dataset_uri)
    x = data.x_train[: batch_size * steps].astype(np.float32)
    y = data.y_train[: batch_size * steps].astype(np.int32)
    model = build_model(architecture, precision)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[: batch_size * 20], y[: batch_size * 20], batch_size=batch_size, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    print(json.dumps({"images_per_s": len(x) / (time.perf_counter() - started)}))


def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def measure_tier(tier: str, seeds: list[int], budget: float | None, bare: bool, work: Path) -> dict[str, object]:
    prefix = TIERS[tier]
    env = {**os.environ, "FASHION_PIPELINE_STORE": str(work / "store")}
    mirror = os.environ.get("FASHION_MNIST_MIRROR", str(REPO.parent / "shared" / "data" / "fashion-mnist"))
    run([*prefix, CLI, "fetch", "--data-url", mirror, "--out", str(work / "fetch")], env, work)
    dataset = (work / "fetch" / "dataset_uri").read_text()
    rows = []
    for seed in seeds:
        out = work / f"{tier}-{seed}"
        budget_args = ["--train-budget-s", f"{budget:g}"] if budget else []
        train_s, _ = run(
            [*prefix, CLI, "train", "--dataset", dataset, "--seed", str(seed), *budget_args, "--out", str(out / "t")],
            env,
            work,
        )
        version = (out / "t" / "model_version").read_text()
        evaluate = ["evaluate", "--dataset", dataset, "--model", version, "--champion", "none", "--out", str(out / "e")]
        evaluate_s, _ = run([*prefix, CLI, *evaluate], env, work)
        fit = json.loads((out / "t" / "training").read_text())
        accuracy = float((out / "e" / "accuracy").read_text())
        rows.append({"seed": seed, "train_s": train_s, "evaluate_s": evaluate_s, "accuracy": accuracy, "fit": fit})
        print(
            f"  {tier:<6} seed {seed}: train {train_s:6.1f} s + evaluate {evaluate_s:5.1f} s = "
            f"{train_s + evaluate_s:6.1f} s  accuracy {accuracy:.4f}  {fit['architecture']} {fit['precision']}"
            f"{' +mirror' if fit['mirror'] else ''}, {fit['epochs']:.2f} epochs in {fit['fit_s']:.1f} s, "
            f"{fit['images_per_s']:.0f} images/s, {fit['gflops']:.1f} GFLOPS",
            flush=True,
        )
    fit = rows[0]["fit"]
    result: dict[str, object] = {"tier": fit["cpu_tier"], "cpu": fit["cpu_model"], "rows": rows}
    if bare:
        spec = [dataset, fit["architecture"], fit["precision"], str(fit["batch_size"])]
        for onednn in ("0", "1"):
            _, printed = run(
                [*prefix, sys.executable, __file__, "--bare", *spec], {**env, "TF_ENABLE_ONEDNN_OPTS": onednn}, REPO
            )
            result[f"bare_onednn_{onednn}"] = json.loads(printed.splitlines()[-1])["images_per_s"]
    return result


def report(results: list[dict[str, object]], budget: float | None) -> None:
    nightly = budget is not None and budget >= 300
    print()
    print(
        "| tier | CPU | train + evaluate (median, max) | accuracy (mean, min) | epochs | images/s | GFLOPS "
        "| bare loop, oneDNN off / on | node / bare |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for result in results:
        rows: list[dict[str, object]] = result["rows"]  # type: ignore[assignment]
        totals = [r["train_s"] + r["evaluate_s"] for r in rows]  # type: ignore[operator]
        accuracies = [float(r["accuracy"]) for r in rows]  # type: ignore[arg-type]
        fits = [r["fit"] for r in rows]
        speed = statistics.median(f["images_per_s"] for f in fits)  # type: ignore[index]
        bare = result.get("bare_onednn_1")
        bare_cell = f"{result['bare_onednn_0']:.0f} / {bare:.0f}" if bare else "—"
        ratio = f"{speed / bare:.2f}" if bare else "—"
        print(
            f"| {result['tier']} | {result['cpu']} | {statistics.median(totals):.1f} s, {max(totals):.1f} s "
            f"| {statistics.mean(accuracies):.2%}, {min(accuracies):.2%} "
            f"| {statistics.median(f['epochs'] for f in fits):.2f} | {speed:.0f} "  # type: ignore[index]
            f"| {statistics.median(f['gflops'] for f in fits):.1f} | {bare_cell} | {ratio} |"  # type: ignore[index]
        )
        bf16 = result["tier"] in ("amx", "avx512-bf16")
        floor = 0.945 if nightly else 0.935 if bf16 else 0.925
        mean = statistics.mean(accuracies)
        verdict = "PASS" if mean >= floor else "MISS"
        checks = [f"mean accuracy >= {floor:.1%}: {verdict} (lowest seed {min(accuracies):.2%})"]
        if not nightly:
            checks.append(f"train + evaluate <= 120 s: {'PASS' if max(totals) <= 120 else 'MISS'}")
        if bare:
            checks.append(f"node within 15% of the bare loop: {'PASS' if speed >= 0.85 * bare else 'MISS'}")  # type: ignore[operator]
        print(f"  {result['tier']}: " + "; ".join(checks))


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--bare":
        bare_loop(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), BARE_STEPS)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", default="native,avx2", help="comma-separated: native, avx2 (emulated)")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--budget", type=float, help="train_budget_s (default: the workflow's default)")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare Keras loop")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for tier in args.tiers.split(","):
            if tier not in TIERS:
                sys.exit(f"unknown tier {tier!r}: choose from {', '.join(TIERS)}")
            work = Path(tmp) / tier
            work.mkdir()
            results.append(measure_tier(tier, seeds, args.budget, not args.no_bare, work))
    report(results, args.budget)


if __name__ == "__main__":
    main()
