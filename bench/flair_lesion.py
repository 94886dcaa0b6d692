"""flair_lesion benchmark: REST latency through a real server, and accuracy before/after fine-tuning.

    PYTHONPATH=lib .venv/bin/python -m bench.flair_lesion [--runs 8] [--finetune-subjects 4] [--json out.json]

Prints the REST round trip of flair_lesion on a 1 mm whole-brain phantom FLAIR (median and p95 of --runs
after one warm-up call), the server's own stage timings and peak memory, all measured by bench.latency (the
harness that times every task), and the lesion-wise sensitivity/PPV/F1 of the default weights and of a model
fine-tuned on labelled MS phantoms, both on held-out MS phantoms. Target on a 2-core CPU: round trip <= 4 s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.latency import run_benchmark
from mslesion import weights
from mslesion.phantoms import PhantomOptions, write_cohort
from mslesion.unet.evaluate import evaluate_on_cohort
from mslesion.unet.networks import lesion_unet
from mslesion.unet.pretrain import machine
from mslesion.unet.recipes import FLAIR_LESION, for_cpu, from_checkpoint
from mslesion.unet.training import fit
from mslesion.unet.transforms import IMAGE, LABEL

FLAIR_ONLY = PhantomOptions(sequences=("FLAIR",))


def latency(root: Path, runs: int) -> dict:
    """flair_lesion's REST round trip and stage timings, measured by the shared harness (bench.latency)."""
    return run_benchmark(root, ["flair_lesion"], runs, train=False)["tasks"]["flair_lesion"]


def items(folder: Path, subjects: int, seed: int, first_subject: int) -> list[dict]:
    write_cohort(folder, cohort="ms", subjects=subjects, seed=seed, labelled=1.0, options=FLAIR_ONLY,
                 first_subject=first_subject)
    flairs = sorted(folder.glob("*_FLAIR.nii.gz"))
    return [{IMAGE: str(p), LABEL: str(folder / "labels" / "final" / p.name)} for p in flairs]


def accuracy(root: Path, finetune_subjects: int, held_out: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    defaults = weights.default_weights("flair_lesion")
    recipe = for_cpu(FLAIR_LESION) if device.type == "cpu" else FLAIR_LESION
    recipe = from_checkpoint(recipe, weights.load_metadata(defaults))  # the network and post-processing served
    test_items = items(root / "held_out", held_out, seed=202, first_subject=50)
    network = lesion_unet(recipe)
    network.load_state_dict(weights.load_state(defaults))
    out = {"default": evaluate_on_cohort(network, test_items, recipe, device)}
    if finetune_subjects >= 2:
        tune = items(root / "finetune", finetune_subjects, seed=303, first_subject=1)
        started = time.time()
        result = fit(recipe, network, tune[:-1], tune[-1:], device, lr=recipe.lr)  # the server's fine-tuning
        network.load_state_dict(result.state)
        out["fine_tuned"] = evaluate_on_cohort(network, test_items, recipe, device)
        out["fine_tuning"] = {
            "studies": len(tune) - 1, "epochs": recipe.epochs, "seconds": round(time.time() - started),
            "patches_per_second": round(result.patches_per_second, 3), "lr": recipe.lr,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--finetune-subjects", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="bench-flair-") as tmp:
        report["latency"] = latency(Path(tmp), args.runs)
        print(json.dumps(report, indent=1), flush=True)
        report["accuracy"] = accuracy(Path(tmp), args.finetune_subjects, args.held_out)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
