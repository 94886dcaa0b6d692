"""Phantom cohorts as training and evaluation items of the U-Net tasks, written once and cached on disk.

Three kinds of cohort:
- ``cohort_items``: one cohort at one fixed acquisition (the older defaults, the tests);
- ``randomised_items``: every subject draws its own acquisition and appearance (phantoms/randomise.py), the
  training data of the defaults;
- ``variant_items``: the shifted test split, one fixed acquisition variant per group, seeds that training never
  uses (the training seeds stay below 90000), randomised contrast.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .. import atomic
from ..phantoms import PhantomOptions, write_cohort
from ..phantoms.randomise import SHIFTED_ACQUISITIONS, random_options, require_test_seed, require_training_seed
from ..studies import BASELINE, earlier_session, parse_image_id
from .recipes import Recipe
from .transforms import IMAGE, LABEL

#: Acquisition variants of the U-Net tasks' shifted test split (all of them; the seed offset is the position here).
VARIANTS: dict[str, dict] = dict(SHIFTED_ACQUISITIONS)


def generator_version(sessions: int) -> int:
    """Version of the phantom generator's output for cached cohorts: 2 since randomised follow-ups drift (a first
    session is unchanged, so single-session cohorts keep version 1 and their caches)."""
    return 2 if sessions > 1 else 1


def _items(folder: Path, paths: list[Path], recipe: Recipe, tag: str) -> list[dict]:
    """Training items (channel paths, label, baseline) of the images of a written folder."""
    store = SimpleNamespace(list_images=lambda: [Path(p).name.split(".nii")[0] for p in paths],
                            get_image_uri=lambda image_id: str(folder / f"{image_id}.nii.gz"))
    items = []
    for path in sorted(paths):
        name = Path(path).name
        ref = parse_image_id(name)
        if ref is None or ref.suffix != recipe.inputs[0]:
            continue
        item = {IMAGE: str(path), LABEL: str(folder / "labels" / "final" / name), "id": f"{tag}/{name}"}
        for companion in recipe.inputs[1:]:
            item[companion] = store.get_image_uri(ref.companion(companion).image_id)
        if recipe.longitudinal:
            previous = earlier_session(store, ref)
            if previous is None:
                continue
            item[BASELINE] = store.get_image_uri(previous.image_id)
        items.append(item)
    return items


def cohort_items(root: Path, cohort: str, subjects: int, seed: int, first_subject: int, recipe: Recipe,
                 options: PhantomOptions | None = None) -> list[dict]:
    """Writes a phantom cohort (only the sequences the recipe reads) and returns its training items.

    A longitudinal recipe gets two sessions per subject and one item per follow-up, with its baseline.
    """
    folder = root / cohort
    options = replace(options or PhantomOptions(), sequences=recipe.inputs)
    paths = write_cohort(folder, cohort=cohort, subjects=subjects, sessions=2 if recipe.longitudinal else 1,
                         seed=seed, labelled=1.0, options=options, first_subject=first_subject)
    return _items(folder, paths, recipe, cohort)


def _cached(folder: Path, manifest: dict, write) -> list[Path]:
    """Images of a folder written by ``write()`` once for this manifest (re-used when the manifest matches)."""
    stamp = folder / "manifest.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("manifest") == manifest:
        return [Path(p) for p in json.loads(stamp.read_text())["paths"]]
    paths = write()
    atomic.write_text(stamp, json.dumps({"manifest": manifest, "paths": [str(p) for p in paths]}))
    return paths


def randomised_items(root: Path, cohort: str, subjects: int, seed: int, recipe: Recipe,
                     sessions: int = 1) -> list[dict]:
    """A cohort whose every subject draws its own acquisition (domain randomisation), cached under ``root``.
    A longitudinal recipe always gets two sessions per subject (one item per follow-up)."""
    sessions = max(sessions, 2 if recipe.longitudinal else 1)
    require_training_seed(seed)
    folder = root / f"{cohort}-randomised-{seed}"
    manifest = {"cohort": cohort, "subjects": subjects, "seed": seed, "inputs": list(recipe.inputs),
                "longitudinal": recipe.longitudinal, "sessions": sessions, "generator": generator_version(sessions)}

    def write() -> list[Path]:
        paths = []
        for i in range(subjects):
            options, _ = random_options(np.random.default_rng([seed, i]), recipe.inputs)
            paths += write_cohort(folder, cohort=cohort, subjects=1, sessions=sessions,
                                  seed=seed, labelled=1.0, options=options, first_subject=i + 1)
        return paths

    return _items(folder, _cached(folder, manifest, write), recipe, folder.name)


def variant_items(root: Path, variant: str, recipe: Recipe, subjects: int, seed: int) -> list[dict]:
    """The shifted test split's studies of one acquisition variant."""
    require_test_seed(seed)
    options = PhantomOptions(sequences=recipe.inputs, randomised=True, **VARIANTS[variant])
    cohort = "healthy" if variant == "lesion_free" else "ms"
    folder = root / f"test-{variant}-{seed}"
    manifest = {"variant": variant, "subjects": subjects, "seed": seed, "inputs": list(recipe.inputs),
                "longitudinal": recipe.longitudinal, "generator": generator_version(2 if recipe.longitudinal else 1)}

    def write() -> list[Path]:
        return write_cohort(folder, cohort=cohort, subjects=subjects, sessions=2 if recipe.longitudinal else 1,
                            seed=seed + list(VARIANTS).index(variant), labelled=1.0, options=options)

    return _items(folder, _cached(folder, manifest, write), recipe, folder.name)
