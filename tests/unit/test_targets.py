"""The rollout's target factory: names, options, and the registry-only fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import free_port

from steps.errors import UserError
from steps.registry import Registry
from steps.storage import open_store
from steps.targets import TARGETS, TargetOptions, make_target
from steps.targets.kserve import KServeTarget


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(open_store(str(tmp_path / "store")))


def test_an_unknown_target_names_the_choices(registry: Registry) -> None:
    with pytest.raises(UserError, match=r"unknown rollout target 'seldon': choose one of local, kserve"):
        make_target("seldon", registry, TargetOptions())


def test_local_without_a_server_falls_back_to_the_registry(registry: Registry) -> None:
    options = TargetOptions(server_url=f"http://127.0.0.1:{free_port()}")
    assert make_target("local", registry, options) is None


def test_kserve_gets_its_options(registry: Registry) -> None:
    options = TargetOptions(
        namespace="ml", probe_url="http://127.0.0.1:1/", serving_runtime="custom", serving_image="img:1"
    )
    target = make_target("kserve", registry, options)
    assert isinstance(target, KServeTarget) and target.follows_registry is False
    assert (target.namespace, target.probe_url, target.serving_image) == ("ml", "http://127.0.0.1:1", "img:1")
    with pytest.raises(UserError, match="custom serving runtime needs the step image"):
        make_target("kserve", registry, TargetOptions(serving_runtime="custom"))


def test_every_target_is_a_choice_of_the_workflow_argument() -> None:
    from workflows.pipeline import manifest

    arguments = {p["name"]: p for p in manifest()["spec"]["arguments"]["parameters"]}
    assert set(arguments["rollout_target"]["enum"]) == set(TARGETS)
