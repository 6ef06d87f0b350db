"""Work folders: a resumed reproduction signs at the recorded time, refuses another configuration and
damaged stages in one line, and is not fooled by a recipe option added after the folder was made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deepserial.errors import ConfigError
from deepserial.experiments import workdir
from deepserial.experiments.wrt_attacks import SUITE
from deepserial.schemes.dsn import DSNConfig


def test_the_first_invocation_records_the_signing_time_and_later_ones_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    assert workdir.start(tmp_path / "w", {"a": 1}, "test") == "1790000000"
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert workdir.start(tmp_path / "w", {"a": 1}, "test") == "1790000000"
    with pytest.raises(ConfigError, match="another configuration"):
        workdir.start(tmp_path / "w", {"a": 2}, "test")
    (tmp_path / "w" / "run.json").write_text("[1]")
    with pytest.raises(ConfigError, match="not a test work record"):
        workdir.start(tmp_path / "w", {"a": 1}, "test")


def test_a_stage_is_computed_once_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    calls = []
    for _ in range(2):
        assert workdir.stage(tmp_path, "0.1/fine-pruning 60%", lambda: calls.append(1) or {"x": 1}) == {"x": 1}
    assert calls == [1] and workdir.stage_path(tmp_path, "0.1/fine-pruning 60%").name == "fine-pruning-60.json"
    workdir.stage_path(tmp_path, "0.1/fine-pruning 60%").write_text("{")
    with pytest.raises(ConfigError, match="damaged"):
        workdir.stage(tmp_path, "0.1/fine-pruning 60%", dict)
    assert workdir.stage(None, "anything", lambda: {"y": 2}) == {"y": 2}  # no folder: computed


def test_every_wrt_column_has_its_own_stage_file(tmp_path: Path) -> None:
    paths = {workdir.stage_path(tmp_path, f"0.1/{a.label}") for a in SUITE}
    assert len(paths) == len(SUITE) and all(p.parent == tmp_path / "0.1" for p in paths)
    # a number in a label is kept whole (not taken for a file suffix), so labels that differ only there differ
    assert workdir.stage_path(tmp_path, "0.1/Gaussian smoothing 0.5").name == "gaussian-smoothing-0.5.json"
    assert workdir.stage_path(tmp_path, "rate 0.6") != workdir.stage_path(tmp_path, "rate 0.9")


def test_a_recipe_option_added_later_at_its_default_is_the_same_recipe() -> None:
    recipe = DSNConfig.default().model_dump()
    older = {k: v for k, v in recipe.items() if k != "mix_scaled"}  # recorded before the option existed
    assert workdir.same_config({"seed": 0, "recipe": older}, {"seed": 0, "recipe": recipe})
    assert not workdir.same_config({"seed": 0, "recipe": older}, {"seed": 1, "recipe": recipe})
    changed = recipe | {"mix_scaled": 0.1}
    assert not workdir.same_config({"recipe": recipe}, {"recipe": changed})
    assert not workdir.same_config({"recipe": recipe | {"no_such_option": 1}}, {"recipe": recipe})
    assert not workdir.same_config({"recipe": recipe}, {})


def test_a_research_recipe_that_became_the_default_is_the_same_recipe_as_the_default() -> None:
    """The overrides a recipe was reached by are not compared beside the resolved recipe; the recipe is."""
    amp = {"amplitude": DSNConfig.default().amplitude}  # an override equal to the shipped value
    research = {"seed": 0, "dsn": amp, "recipe": DSNConfig.default(**amp).model_dump()}
    shipped = {"seed": 0, "dsn": {}, "recipe": DSNConfig.default().model_dump()}
    assert workdir.same_config(research, shipped)
    other = {"seed": 0, "dsn": {"amplitude": 0}, "recipe": DSNConfig.default(amplitude=0).model_dump()}
    assert not workdir.same_config(other, shipped)
    assert not workdir.same_config({"seed": 0, "dsn": amp}, {"seed": 0, "dsn": {}})  # no recipe: overrides count


def test_a_re_created_model_with_other_weights_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    workdir.same_weights(tmp_path, "victim", net)
    workdir.same_weights(tmp_path, "victim", net)  # the same weights: accepted
    assert json.loads((tmp_path / "weights" / "victim.json").read_text())["sha256"] == workdir.weights_digest(net)
    with torch.no_grad():
        net.bias += 1e-6
    with pytest.raises(ConfigError, match="other weights"):
        workdir.same_weights(tmp_path, "victim", net)
