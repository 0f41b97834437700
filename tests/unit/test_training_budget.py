"""Budgeted training without TensorFlow: the fit clock, the recipe `auto` picks, the CPU tier, quiet imports."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from steps import hardware
from steps.errors import UserError
from steps.train import (
    AUTO_BF16,
    AUTO_FLOAT32,
    CALIBRATION_STEPS,
    LONG_BUDGET_S,
    FitClock,
    Progress,
    TrainParams,
    resolve_recipe,
)


@dataclass
class Timeline:
    """A clock that moves only when told: tracing, steps and validation take exactly what the test says."""

    t: float = 0.0
    horizons: list[tuple[float, bool]] = field(default_factory=list)
    reports: list[Progress] = field(default_factory=list)

    def now(self) -> float:
        return self.t

    def clock(self, budget_s: float | None, steps_per_epoch: int = 100, total_steps: int = 100) -> FitClock:
        return FitClock(
            steps_per_epoch,
            32,
            total_steps,
            budget_s,
            lambda total, warmup: self.horizons.append((total, warmup)),
            self.reports.append,
            self.now,
        )


def fit(timeline: Timeline, clock: FitClock, trace_s: float, step_s: float, validation_s: float = 0.0) -> None:
    """Drive the clock as Keras would, until it says stop (or 10,000 steps)."""
    clock.begin()
    for _ in range(10_000):
        timeline.t += trace_s if clock.steps == 0 else step_s
        stop = clock.step_done()
        if stop or clock.steps % clock.steps_per_epoch == 0:
            timeline.t += validation_s
            stop = clock.epoch_done({"val_accuracy": 0.9}) or stop
        if stop:
            break
    clock.end()


def test_a_budget_is_calibrated_after_tracing_and_spent_not_overspent() -> None:
    timeline = Timeline()
    clock = timeline.clock(budget_s=30.0)
    fit(timeline, clock, trace_s=2.0, step_s=0.1, validation_s=0.5)
    # Calibrated on the steps after the traced one: 11 + (30 - 2 - 1) / 0.1 steps; then each epoch's end
    # takes its validation into account, and the fit ends within the budget, not short of it.
    assert clock.calibrated_step_s == pytest.approx(0.1)
    assert clock.calibrated_total == 280
    assert 29.0 <= clock.fit_s <= 30.0
    assert clock.total_steps < clock.calibrated_total
    assert clock.steps == clock.total_steps
    # The first horizon sizes the warm-up; the epoch-end re-fits move only the horizon.
    assert timeline.horizons[0][1] is True and not any(warmup for _, warmup in timeline.horizons[1:])
    assert [r.step for r in timeline.reports][:1] == [1 + CALIBRATION_STEPS]


def test_the_horizon_follows_a_pace_that_changes() -> None:
    timeline = Timeline()
    clock = timeline.clock(budget_s=60.0)
    clock.begin()
    timeline.t += 1.0
    clock.step_done()
    for _ in range(CALIBRATION_STEPS + 89):  # 0.1 s a step at first: about 590 steps fit
        timeline.t += 0.1
        clock.step_done()
    clock.epoch_done({})
    first = clock.total_steps
    for _ in range(100):  # then twice as slow (another process took a core)
        timeline.t += 0.2
        clock.step_done()
    clock.epoch_done({})
    assert first > 500 and clock.total_steps < first
    assert timeline.horizons[-1][0] == clock.total_steps


def test_progress_ends_at_the_steps_run_when_the_seconds_run_out_first() -> None:
    timeline = Timeline()
    clock = timeline.clock(budget_s=10.0, steps_per_epoch=100_000)  # no epoch ends to fit the horizon again
    clock.begin()
    timeline.t += 1.0
    clock.step_done()
    for _ in range(CALIBRATION_STEPS):
        timeline.t += 0.01  # calibrated fast: about 900 steps would fit
        clock.step_done()
    stopped = False
    while not stopped:
        timeline.t += 0.05  # then five times slower: the seconds run out first
        stopped = clock.step_done()
    clock.end()
    assert clock.steps < clock.calibrated_total  # type: ignore[operator]
    assert timeline.reports[-1].step == timeline.reports[-1].total_steps == clock.steps


def test_progress_counts_steps_to_the_calibrated_total_with_fractional_epochs() -> None:
    timeline = Timeline()
    fit(timeline, timeline.clock(budget_s=20.0, steps_per_epoch=40), trace_s=1.0, step_s=0.05)
    last = timeline.reports[-1]
    assert last.step == last.total_steps
    assert last.epoch == pytest.approx(last.step / 40) and last.epoch != int(last.epoch)
    assert all(r.step <= r.total_steps for r in timeline.reports)


def test_explicit_epochs_train_exactly_their_steps_whatever_the_clock() -> None:
    timeline = Timeline()
    clock = timeline.clock(budget_s=None, steps_per_epoch=50, total_steps=150)
    clock.begin()
    for _ in range(150):
        timeline.t += 1.0  # far beyond any budget: without one, nothing stops
        assert clock.step_done() is False
        if clock.steps % 50 == 0:
            assert clock.epoch_done({}) is False
    assert timeline.horizons == [] and clock.total_steps == 150
    assert timeline.reports[0].step == 0 and timeline.reports[0].total_steps == 150


def test_a_budget_spent_by_tracing_and_calibration_is_a_user_error() -> None:
    timeline = Timeline()
    clock = timeline.clock(budget_s=10.0)
    clock.begin()
    timeline.t += 8.0
    clock.step_done()
    with pytest.raises(UserError, match=r"train_budget_s=10 cannot fit the calibration: .* set epochs"):
        for _ in range(CALIBRATION_STEPS):
            timeline.t += 0.5
            clock.step_done()


@pytest.mark.parametrize(
    ("tier", "budget_s", "expected"),
    [
        (hardware.AVX512_BF16, 75.0, (*AUTO_BF16[0], "mixed_bfloat16")),
        (hardware.AMX, 600.0, (*AUTO_BF16[1], "mixed_bfloat16")),
        (hardware.AVX2, 75.0, (*AUTO_FLOAT32[0], "float32")),
        (hardware.AVX2, LONG_BUDGET_S, (*AUTO_FLOAT32[1], "float32")),
        (hardware.ARM64, 75.0, (*AUTO_FLOAT32[0], "float32")),
    ],
)
def test_auto_takes_the_recipe_measured_for_the_tier_and_budget(
    tier: str, budget_s: float, expected: tuple[str, float, bool, float, str]
) -> None:
    recipe = resolve_recipe(TrainParams(train_budget_s=budget_s), tier)
    assert (recipe.architecture, recipe.dropout, recipe.mirror, recipe.label_smoothing, recipe.precision) == expected
    assert recipe.tier == tier


def test_explicit_architecture_and_precision_win_over_auto() -> None:
    params = TrainParams(architecture="small-cnn", precision="float32", epochs=3)
    recipe = resolve_recipe(params, hardware.AMX)
    assert (recipe.architecture, recipe.precision, recipe.mirror, recipe.label_smoothing) == (
        "small-cnn",
        "float32",
        False,
        0.0,
    )


@pytest.mark.parametrize(
    ("flags", "tier"),
    [
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, hardware.AMX),
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, hardware.AVX512_BF16),
        ({"avx2", "avx512f", "avx512_vnni"}, hardware.AVX512),
        ({"avx", "avx2", "fma"}, hardware.AVX2),
        ({"sse4_2", "avx"}, hardware.BASELINE),
        (set(), hardware.BASELINE),
    ],
)
def test_the_cpu_tier_is_read_from_the_flags(flags: set[str], tier: str) -> None:
    assert hardware.cpu_tier(flags) == tier


def test_onednn_is_decided_by_the_tier_and_a_value_the_user_set_wins() -> None:
    env: dict[str, str] = {}
    assert hardware.decide_onednn(env, hardware.AVX2) == "1" and env == {hardware.ONEDNN_ENV: "1"}
    env = {}
    assert hardware.decide_onednn(env, hardware.AVX512_BF16) == "1"
    env = {}
    assert hardware.decide_onednn(env, hardware.ARM64) is None and env == {}
    env = {hardware.ONEDNN_ENV: "0"}
    assert hardware.decide_onednn(env, hardware.AVX2) == "0" and env == {hardware.ONEDNN_ENV: "0"}


@pytest.mark.parametrize(
    ("flags", "enabled"),
    [
        ({"avx2", "fma"}, False),  # the AVX2-only EPYC: TensorFlow runs Eigen unless told
        ({"avx2", "avx512f"}, False),  # AVX-512 without VNNI or BF16
        ({"avx2", "avx512f", "avx512_vnni"}, True),
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, True),
        ({"avx2", "avx_vnni"}, True),  # AVX-VNNI without AVX-512 (some client CPUs)
        ({"avx2", "amx_tile", "amx_bf16", "amx_int8"}, True),
    ],
)
def test_tensorflows_own_onednn_choice_is_read_from_the_flags(flags: set[str], enabled: bool) -> None:
    assert hardware.tensorflow_enables_onednn(flags) is enabled


def test_the_value_the_avx2_emulation_sets_is_decided_over_as_tensorflows_default_is() -> None:
    env = {hardware.ONEDNN_ENV: "0", hardware.EMULATED_DEFAULT_ENV: "1"}  # scripts/as-avx2.sh
    assert hardware.decide_onednn(env, hardware.AVX2) == "1" and env[hardware.ONEDNN_ENV] == "1"
    env = {hardware.ONEDNN_ENV: "0", hardware.EMULATED_DEFAULT_ENV: "1"}
    assert hardware.decide_onednn(env, hardware.ARM64) == "0"  # not ours to decide there: TensorFlow's default
    assert hardware.onednn_in_force({hardware.ONEDNN_ENV: "true"}) is True
    assert hardware.onednn_in_force({hardware.ONEDNN_ENV: "0"}) is False


@pytest.mark.parametrize(
    ("tier", "onednn", "runs"),
    [
        (hardware.AVX2, True, False),  # oneDNN has no bfloat16 convolution below AVX-512
        (hardware.AVX2, False, True),  # TensorFlow's own kernels (slow, but they run)
        (hardware.AVX512, True, True),  # oneDNN emulates bfloat16 on AVX-512
        (hardware.AVX512_BF16, True, True),
        (hardware.AMX, True, True),
    ],
)
def test_bfloat16_runs_wherever_onednn_has_it_or_is_off(tier: str, onednn: bool, runs: bool) -> None:
    assert (hardware.bfloat16_problem(tier, onednn) is None) is runs


QUIET_IMPORT = """
import os, sys
from workflows.cli.native_log import quiet_tensorflow_import
quiet_tensorflow_import()
import tensorflow  # a stand-in package on sys.path, printing as TensorFlow does at import
print("after", file=sys.stderr)
"""

NOISY_PACKAGE = r"""
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
os.write(2, b"I0000 00:00:1796427245.045749    1959 port.cc:153] oneDNN custom operations are on.\n")
os.write(2, b"W0000 00:00:1796427245.045749    1959 cpu_feature_guard.cc:1] a warning\n")
os.write(2, b"E0000 00:00:1796427245.045749    1959 something.cc:1] an error stays\n")
os.write(2, b"a Python warning stays\n")
"""


def test_tensorflows_native_import_lines_are_dropped_and_everything_else_kept(tmp_path: Path) -> None:
    package = tmp_path / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(NOISY_PACKAGE)
    env = {"PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}"}
    done = subprocess.run([sys.executable, "-c", QUIET_IMPORT], env=env, capture_output=True, text=True, check=True)
    kept = ["E0000 00:00:1796427245.045749    1959 something.cc:1] an error stays", "a Python warning stays", "after"]
    assert done.stderr.splitlines() == kept


def test_the_nightly_cronworkflow_trains_with_the_quality_budget() -> None:
    from workflows.triggers import schedule

    arguments = schedule.manifest()["spec"]["workflowSpec"]["arguments"]["parameters"]
    passed = {argument["name"]: argument["value"] for argument in arguments}
    assert passed["train_budget_s"] == "600" == str(schedule.NIGHTLY_BUDGET_S)
    assert float(passed["train_budget_s"]) >= LONG_BUDGET_S  # so `auto` takes the long recipe
    assert TrainParams().train_budget_s < LONG_BUDGET_S  # and an on-demand run the fast one
