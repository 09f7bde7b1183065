"""The training recipes as data: ``training/recipes.json`` read by one typed reader, checked on
reading, and what the trainer's config resolves to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spikeseg.training import config as config_mod
from spikeseg.training.config import TrainConfig
from spikeseg.training.recipes import RECIPES_FILE, read_recipes, recipes
from tests.helpers import REPO

RAW = json.loads((REPO / "training" / "recipes.json").read_text())


def test_the_shipped_file_is_the_one_read_and_every_entry_says_why_and_where() -> None:
    assert RECIPES_FILE == REPO / "training" / "recipes.json"
    shipped = recipes()
    cascade = RAW["architectures"]["cascade-me-unet"]["settings"]
    for arch in ("unet3d", "me-unet", "cascade-me-unet"):  # the cascade's ablations train as it does
        assert shipped.arch_defaults(arch) == cascade
    assert shipped.arch_defaults("unet3d-lite") == RAW["architectures"]["unet3d-lite"]["settings"]
    assert shipped.arch_defaults("useg") == {}
    for entry in (*shipped.architectures.values(), *shipped.recipes.values()):
        assert entry.why and entry.source, entry.name


def test_paper_settings_apply_where_the_command_line_is_silent() -> None:
    lite = TrainConfig.for_arch(data="d", out="o", arch="unet3d-lite", lr=None, normalisation=None)
    assert (lite.lr, lite.weight_decay, lite.normalisation) == (5e-4, 5e-4, "zscore")
    assert TrainConfig.for_arch(data="d", out="o", arch="unet3d-lite", lr=1e-2).lr == 1e-2
    assert TrainConfig.for_arch(data="d", out="o", arch="useg").lr == TrainConfig(data="d", out="o").lr


def test_an_edited_recipe_changes_the_resolved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config reads its recipe values from the file, not from constants beside it."""
    edited = json.loads(json.dumps(RAW))
    edited["recipes"]["converted-snn"]["settings"].update(lr_decay_to=0.5, init_tau_x_tau_min=3.0)
    edited["recipes"]["spiking-useg"]["settings"].update(readout_lr_scale=4.0, window_sampling="random")
    path = tmp_path / "recipes.json"
    path.write_text(json.dumps(edited))
    monkeypatch.setattr(config_mod, "recipes", lambda: read_recipes(path))
    snn = TrainConfig.of(data="d", out="o", arch="spiking-useg", init_from="twin")
    assert (snn.resolved_lr_decay_to(), snn.resolved_init_tau()) == (0.5, 3.0)
    assert (snn.resolved_readout_lr_scale(), snn.resolved_window_sampling()) == (4.0, "random")
    copied = TrainConfig.of(data="d", out="o", arch="spiking-useg", init_from="twin", convert="copy")
    assert (copied.resolved_lr_decay_to(), copied.resolved_init_tau()) == (1.0, 2.0)  # no conversion, no recipe


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(version=9), "recipes version 9"),
    (lambda r: r["architectures"].update(nonet={"settings": {}, "why": "w", "source": "s"}), "unknown architecture 'nonet'"),
    (lambda r: r["recipes"]["spiking-useg"]["settings"].update(learning_rate=1), "unknown: learning_rate"),
    (lambda r: r["recipes"]["converted-snn"].pop("why"), "needs settings, why and source"),
    (lambda r: r["recipes"].pop("converted-snn"), "converted-snn are missing"),
    (lambda r: r["recipes"]["converted-snn"]["settings"].update(reset="subtract"), "does not read from it"),
])
def test_a_bad_recipes_file_is_refused_naming_it_and_the_problem(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    raw = json.loads(json.dumps(RAW))
    edit(raw)
    path = tmp_path / "recipes.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message) as refused:
        read_recipes(path)
    assert str(path) in str(refused.value)
