"""New-site benchmark: does fine-tuning from a few corrected studies adapt flair_lesion to a scanner it never saw?

    PYTHONPATH=lib .venv/bin/python -m bench.site_adaptation [--subjects 10] [--corrected 4] [--json out.json]

A cohort of a named site whose appearance lies outside the training ranges (phantoms.randomise.SITES: failed CSF
suppression, bright grey matter, strong bias, more noise) is served by the real msapp server. Through REST, as
Slicer does it: flair_lesion answers every study (default weights); the truth of ``--corrected`` subjects is saved
as final labels; ``POST /train/flair_lesion`` fine-tunes; the rest of the site is answered again with the published
weights. Pooled lesion-wise scores before and after are printed, with the training time, and the shifted test
split's 1 mm group scored offline with the published weights (no collapse on the original data).

With ``--ceiling`` the same round is also run offline on the *scored* studies themselves (the defaults fine-tuned on
the studies they are then scored on, as the server's round would, last one for validation): no round trained on
other studies of the site should beat that, so it bounds what fine-tuning can gain here. The report gives the
headroom (ceiling minus default F1) and the share of it the real round gained: a small gain on a site with no
headroom says the site is hard for this network, not that fine-tuning is broken.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from mslesion import weights
from mslesion.dev.serverproc import ServerProcess
from mslesion.metrics import count_scores, lesion_scores, pooled_scores
from mslesion.phantoms import PhantomOptions, write_cohort
from mslesion.unet.evaluate import evaluate_on_cohort
from mslesion.unet.networks import lesion_unet
from mslesion.unet.phantom_items import variant_items
from mslesion.unet.pretrain import machine
from mslesion.unet.recipes import FLAIR_LESION, for_request, from_checkpoint
from mslesion.unet.training import fit

SITE = "site_b"


def site_scores(client, studies: Path, truth: Path, ids: list[str]) -> dict:
    """Pooled lesion-wise scores of the server's answers on these images."""
    scores = []
    for image_id in ids:
        label_path, _ = client.infer("flair_lesion", image_id, {})
        predicted = np.asarray(nib.load(label_path).dataobj) > 0
        scores.append(lesion_scores(np.asarray(nib.load(truth / f"{image_id}.nii.gz").dataobj) > 0, predicted))
    return pooled_scores(count_scores(scores))


def ceiling(studies: Path, truth: Path, ids: list[str], train_request: dict) -> dict:
    """The server's CPU round run offline on the scored studies themselves (see the module docstring)."""
    default = weights.default_weights("flair_lesion")
    recipe = from_checkpoint(for_request(FLAIR_LESION, train_request, "cpu"), weights.load_metadata(default))
    network = lesion_unet(recipe)
    network.load_state_dict(weights.load_state(default))
    items = [{"image": str(studies / f"{i}.nii.gz"), "label": str(truth / f"{i}.nii.gz"), "id": i} for i in ids]
    started = time.time()
    result = fit(recipe, network, items, items[-1:], torch.device("cpu"), lr=recipe.lr)
    network.load_state_dict(result.state)
    return {**evaluate_on_cohort(network, items, recipe, torch.device("cpu")),
            "training_seconds": round(time.time() - started, 1), "best_epoch": result.best_epoch}


def run(root: Path, subjects: int, corrected: int, train_request: dict, with_ceiling: bool = False) -> dict:
    from monailabel.client import MONAILabelClient

    studies, truth = root / "studies", root / "truth"
    write_cohort(studies, cohort="ms", subjects=subjects, seed=77, labelled=0.0, truth_dir=truth,
                 options=PhantomOptions(sequences=("FLAIR",), site=SITE))
    ids = sorted(p.name.split(".nii")[0] for p in studies.glob("*_FLAIR.nii.gz"))
    tune_ids, test_ids = ids[:corrected], ids[corrected:]
    server = ServerProcess(studies, root / "model", root / "server.log")
    try:
        client = MONAILabelClient(server.url)
        out = {"site": SITE, "corrected": tune_ids, "scored": test_ids}
        out["default"] = site_scores(client, studies, truth, test_ids)
        print("default", json.dumps(out["default"]), flush=True)
        for image_id in tune_ids:
            client.save_label(image_id, str(truth / f"{image_id}.nii.gz"), tag="final")
        started = time.time()
        client.train_start("flair_lesion", train_request)
        status = server.wait_for_training(timeout=1800)
        out["training"] = {"seconds": round(time.time() - started, 1), "status": status.get("status"),
                           "request": train_request,
                           "stats": {k: v for k, v in client.info()["train_stats"]["flair_lesion"].items()
                                     if k in ("best_epoch", "best_validation", "patches_per_second", "seconds")}}
        out["fine_tuned"] = site_scores(client, studies, truth, test_ids)
        print("fine_tuned", json.dumps(out["fine_tuned"]), flush=True)
        published = weights.published_weights(root / "model", "flair_lesion")
    finally:
        server.stop()
    recipe = from_checkpoint(FLAIR_LESION, weights.load_metadata(published))
    network = lesion_unet(recipe)
    original = variant_items(root / "original", "1mm", recipe, 3, 90210)
    for name, path in (("default", weights.default_weights("flair_lesion")), ("fine_tuned", published)):
        network.load_state_dict(weights.load_state(path))
        out[f"original_split_{name}"] = evaluate_on_cohort(network, original, from_checkpoint(
            FLAIR_LESION, weights.load_metadata(path)), torch.device("cpu"))
    if with_ceiling:
        out["ceiling"] = ceiling(studies, truth, test_ids, train_request)
        headroom = out["ceiling"]["f1"] - out["default"]["f1"]
        gain = out["fine_tuned"]["f1"] - out["default"]["f1"]
        out["headroom_f1"] = round(headroom, 4)
        out["share_of_headroom"] = round(gain / headroom, 3) if headroom > 0 else None
        print("ceiling", json.dumps(out["ceiling"]), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--corrected", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=16, help="fine-tuning epochs (16: ~200 steps, 5-9 min here)")
    parser.add_argument("--ceiling", action="store_true",
                        help="also fine-tune offline on the scored studies themselves: the most a round can gain")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    request = {"max_epochs": args.epochs, "val_fraction": 0.25}
    with tempfile.TemporaryDirectory(prefix="bench-site-") as tmp:
        report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                  **run(Path(tmp), args.subjects, args.corrected, request, args.ceiling)}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
