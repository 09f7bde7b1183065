"""The training recipes, as data: ``recipes.json`` beside this module, read here and nowhere else.

Why a file: a recipe is a set of settings with the evidence for it, not code; changing one (a
lever that measured better becomes the default) is an edit to the file, reviewed as such, and
the docs list the file's ``why`` and ``source`` rather than prose kept beside constants.

Two kinds of entry. ``architectures``: the settings an architecture's paper states, used where
the command line is silent (:meth:`TrainConfig.for_arch`). ``recipes``: what the project found
to work, consulted when a run's config is resolved (``spiking-useg`` for every Spiking U-Seg-Net
run, ``converted-snn`` for one converted from its twin with ``--init-from``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from spikeseg.snn.architectures import ARCHITECTURES

RECIPES_FILE = Path(__file__).with_name("recipes.json")
RECIPES_VERSION = 1
SPIKING = "spiking-useg"
CONVERTED = "converted-snn"
#: settings that are not a TrainConfig field: derived from one when the config is resolved
DERIVED = {"init_tau_x_tau_min": "init_tau"}
#: the settings each recipe may hold: those TrainConfig's resolution reads from it (a setting it
#: does not read would do nothing, so the file is refused rather than silently ignored)
READ = {SPIKING: {"readout_lr_scale", "window_sampling"}, CONVERTED: {"lr_decay_to", "init_tau_x_tau_min"}}


@dataclass(frozen=True)
class Recipe:
    """One entry: its settings (TrainConfig field -> value), why they are chosen, and where that
    was measured or stated."""

    name: str
    settings: Mapping[str, Any]
    why: str
    source: str


@dataclass(frozen=True)
class Recipes:
    architectures: Mapping[str, Recipe]
    recipes: Mapping[str, Recipe]

    def arch_defaults(self, arch: str) -> dict[str, Any]:
        """The paper's settings for ``arch`` ({} for an architecture whose paper states none here)."""
        recipe = self.architectures.get(arch)
        return dict(recipe.settings) if recipe else {}

    def setting(self, recipe: str, key: str, default: Any) -> Any:
        """One recipe's value for ``key``, or ``default`` where it sets none."""
        return self.recipes[recipe].settings.get(key, default)


def _recipe(name: str, entry: Mapping[str, Any], fields: set[str], where: Path) -> Recipe:
    unknown = set(entry.get("settings", {})) - fields - set(DERIVED)
    if unknown or not {"settings", "why", "source"} <= set(entry):
        raise ValueError(f"{where}: {name!r} needs settings, why and source, with TrainConfig fields only"
                         + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
    return Recipe(name, dict(entry["settings"]), str(entry["why"]), str(entry["source"]))


def read_recipes(path: Path = RECIPES_FILE) -> Recipes:
    """Read and check a recipes file: its version, architectures that exist, settings that are
    TrainConfig fields, and a ``why`` and ``source`` for each entry."""
    from spikeseg.training.config import TrainConfig

    raw = json.loads(path.read_text())
    if raw.get("version") != RECIPES_VERSION:
        raise ValueError(f"{path}: recipes version {raw.get('version')!r}; this spikeseg reads {RECIPES_VERSION}")
    fields = set(TrainConfig.flat_names())
    archs: dict[str, Recipe] = {}
    for name, entry in raw["architectures"].items():
        if name not in ARCHITECTURES:
            raise ValueError(f"{path}: unknown architecture {name!r}")
        source = raw["architectures"][entry["same_as"]] if "same_as" in entry else entry
        archs[name] = _recipe(name, source, fields, path)
    recipes = {name: _recipe(name, entry, fields, path) for name, entry in raw["recipes"].items()}
    for name, recipe in recipes.items():
        unread = set(recipe.settings) - READ.get(name, set())
        if unread:
            raise ValueError(f"{path}: the {name!r} recipe sets {', '.join(sorted(unread))}, which the training "
                             f"config does not read from it (training.config's resolved_* methods)")
    missing = {SPIKING, CONVERTED} - set(recipes)
    if missing:
        raise ValueError(f"{path}: the recipes {', '.join(sorted(missing))} are missing")
    return Recipes(archs, recipes)


@lru_cache(maxsize=1)
def recipes() -> Recipes:
    """The shipped recipes, read once."""
    return read_recipes()
