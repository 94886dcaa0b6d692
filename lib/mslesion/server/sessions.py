"""Volumes a Slicer user loaded from a local file (MONAI Label sessions), placed among the datastore's studies.

Slicer's MONAI Label module runs a model on a volume it did not get from Next Sample by uploading it as a session
(``PUT /session/``) and asking ``/infer/<model>?image=<volume's node name>&session_id=...``. The node name is the
file name without extension, so a copy of a datastore image, or a file named like one (BIDS), says which subject,
session and sequence it is: its companions (T1w beside a post-contrast T1, T1w and T2w beside a FLAIR) and its
baseline come from the datastore. A volume that says nothing runs only where it is enough on its own, and the others
answer a 422 naming what to load or rename; the sequence check applies either way.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from ..studies import BASELINE, StudyError, parse_image_id, resolve_baseline

GEOMETRY_TOLERANCE_MM = 1e-2


def sequence_of_name(name: str) -> str | None:
    """The sequence a volume's name says: a BIDS suffix, or a series description ("7: AX FLAIR", "t1_mprage")."""
    ref = parse_image_id(name)
    if ref is not None:
        return ref.suffix
    from ..dicom.catalogue import DEFAULT_PATTERNS, match_sequence

    return match_sequence(name, DEFAULT_PATTERNS)


def same_geometry(path_a: str, path_b: str) -> bool:
    """Same voxel grid (shape and affine), read from the headers only."""
    try:
        a, b = nib.load(path_a), nib.load(path_b)
    except Exception:
        return False
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and bool(
        np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max() <= GEOMETRY_TOLERANCE_MM
    )


def rename_hint(primary: str) -> str:
    return (
        f"In Slicer, rename the volume (Data module: double-click its name) to the study's name on this server, "
        f"sub-<subject>_ses-<session>_{primary} (GET /datastore/ lists them), or open the study with Next Sample"
    )


def place(store, model: str, inputs: list[str], longitudinal: bool, name: str, session_path: str,
          params: dict) -> dict:
    """Request entries for running ``model`` on a session volume named ``name``: ``{"image": <datastore id>}`` when
    it is a datastore image, else ``{"image": <session file>, "sequences": {...}}`` with the companions (and baseline)
    found in the datastore. StudyError (422) when it is the wrong sequence or its companions cannot be found."""
    primary, companions = inputs[0], list(inputs[1:])
    ids = set(store.list_images())
    if name in ids:
        if same_geometry(session_path, store.get_image_uri(name)):
            return {"image": name}
        raise StudyError(
            422,
            f"The volume you run {model} on is named '{name}' like the server's image, but its voxel grid differs: "
            f"it is another volume. {rename_hint(primary)}; or give it a name of its own to run "
            f"{'on it alone' if not companions and not longitudinal else 'once its companions are on the server'}.",
        )
    sequence = sequence_of_name(name)
    if sequence is not None and sequence != primary:
        raise StudyError(
            422,
            f"{model} needs a {primary} image, but the volume '{name}' you loaded is a {sequence} (by its name). "
            f"Select the {primary} volume as the input (or rename this one if its name is wrong).",
        )
    needs = companions + (["an earlier visit's " + primary] if longitudinal else [])
    if not needs:
        return {"image": session_path}
    ref = parse_image_id(name)
    if ref is None:
        raise StudyError(
            422,
            f"{model} needs {', '.join(needs)} beside this {primary}, which the server takes from its datastore by the "
            f"study's name, and the volume's name '{name}' does not say which subject and session it is. "
            f"{rename_hint(primary)}.",
        )
    sequences = {primary: session_path}
    missing = []
    for suffix in companions:
        other = ref.companion(suffix).image_id
        if other in ids:
            sequences[suffix] = store.get_image_uri(other)
        else:
            missing.append(other)
    if missing:
        raise StudyError(
            422,
            f"{model} needs {', '.join(missing)} beside '{name}' (same subject and session), and the server does not "
            f"have {'it' if len(missing) == 1 else 'them'}. Ask for the file(s) to be put into the server's studies "
            "folder as <name>.nii.gz, or open the study from the server with Next Sample.",
        )
    if longitudinal:
        sequences[BASELINE] = resolve_baseline(
            store, name, model, params.get("baseline") or None,
            force=str(params.get("force_baseline", False)).lower() in ("true", "1", "yes"),
        )
    return {"image": session_path, "sequences": sequences}
