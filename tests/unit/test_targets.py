"""The rollout's targets: names, each kind's own options, and the registry-only fallback."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from conftest import free_port

from steps.errors import UserError
from steps.registry import Registry
from steps.storage import open_store
from steps.targets import KINDS, TARGETS, make_target
from steps.targets.kserve import KServeTarget


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(open_store(str(tmp_path / "store")))


def test_an_unknown_target_names_the_choices(registry: Registry) -> None:
    with pytest.raises(UserError, match=r"unknown rollout target 'seldon': choose one of local, kserve"):
        make_target("seldon", registry, {})


def test_local_without_a_server_falls_back_to_the_registry(registry: Registry) -> None:
    assert make_target("local", registry, {"server_url": f"http://127.0.0.1:{free_port()}"}) is None


def test_kserve_takes_its_own_options_out_of_every_kinds_and_the_ready_timeout(registry: Registry) -> None:
    options = {
        "namespace": "ml",
        "probe_url": "http://127.0.0.1:1/",
        "serving_runtime": "custom",
        "serving_image": "img:1",
        "server_url": "http://127.0.0.1:2",  # the local target's: not the kserve target's business
    }
    target = make_target("kserve", registry, options, ready_timeout_s=42.0)
    assert isinstance(target, KServeTarget) and target.follows_registry is False
    assert (target.namespace, target.probe_url, target.serving_image) == ("ml", "http://127.0.0.1:1", "img:1")
    assert target.restore_timeout_s == 42.0
    with pytest.raises(UserError, match="custom serving runtime needs the step image"):
        make_target("kserve", registry, {"serving_runtime": "custom", "serving_image": ""})


def test_each_option_belongs_to_one_kind_and_is_an_option_of_the_rollout_command() -> None:
    import typer

    from workflows.cli import app

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    rollout = {option.name for option in group.commands["rollout"].params}
    seen: set[str] = set()
    for kind in KINDS.values():
        names = {f.name for f in fields(kind.options)}
        assert not names & seen, names & seen
        assert names <= rollout, names - rollout
        seen |= names


def test_every_target_is_a_choice_of_the_workflow_argument() -> None:
    from workflows.pipeline import manifest

    arguments = {p["name"]: p for p in manifest()["spec"]["arguments"]["parameters"]}
    assert set(arguments["rollout_target"]["enum"]) == set(TARGETS)
