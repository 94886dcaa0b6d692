"""Five-fold cross-validation of enhancement prediction on an MS phantom cohort, as the paper evaluated it.

    python -m mslesion.enhancement_prediction.evaluate [--subjects 40] [--seed 2020] [--folds 5]
           [--cohort DIR] [--out DIR] [--weights PATH]

Both visits of a subject fall in the same fold. In each fold the other subjects are split into training and
validation (epoch choice, Youden thresholds); the held-out fold is scored at the thresholds found on validation.
AUC, sensitivity, specificity, accuracy, PPV and NPV are given slice-wise and participant-wise (a participant
here is one visit, as in the paper), mean +- SD over folds; ROC curves are saved as PNG. With ``--weights`` the
given model is scored on the whole cohort instead (no training): held-out evaluation of shipped weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..unet.pretrain import machine
from .data import phantom_cohort, stacks
from .networks import EnhancementPredictor
from .recipe import ENHANCEMENT_PREDICTION, PredictionRecipe
from .roc import figures
from .training import SliceSet, predict, train

logger = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("MSAPP_CACHE", Path.home() / ".cache" / "msapp")) / "enhancement_prediction"
FIGURES = ("auc", "sensitivity", "specificity", "accuracy", "ppv", "npv")


def subject_folds(subjects: list[str], folds: int, seed: int) -> list[list[str]]:
    """Subjects shuffled (seeded) and dealt into ``folds`` groups; a subject's visits stay together."""
    order = list(np.random.default_rng(seed).permutation(sorted(set(subjects))))
    return [sorted(order[i::folds]) for i in range(folds)]


def split_validation(subjects: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, validation) subjects; validation gets ``fraction`` of them, at least one."""
    order = list(np.random.default_rng(seed).permutation(sorted(subjects)))
    n_val = max(1, round(len(order) * fraction))
    return sorted(order[n_val:]), sorted(order[:n_val])


def score_stacks(model: EnhancementPredictor, items: list[dict], device: torch.device) -> dict:
    """Truth and scores, slice-wise and participant-wise, of held-out stacks; figures at the model's thresholds."""
    probability, slice_scores = predict(model, items, device)
    real = SliceSet.of(items)
    real_scores = np.concatenate([s[np.asarray(i["slice_index"]) >= 0] for s, i in zip(slice_scores, items,
                                                                                       strict=True)])
    truth = np.array([int(i["study_truth"]) for i in items])
    return {
        "slice": figures(real.y.numpy(), real_scores, float(model.slice_threshold)),
        "participant": figures(truth, probability, float(model.participant_threshold)),
        "curves": {"slice": (real.y.numpy().tolist(), real_scores.tolist()),
                   "participant": (truth.tolist(), probability.tolist())},
        "studies": {i["id"]: round(float(p), 4) for i, p in zip(items, probability, strict=True)},
    }


def summarise(per_fold: list[dict]) -> dict:
    """Mean and SD over folds of each figure, slice-wise and participant-wise (NaN folds left out)."""
    out = {}
    for level in ("slice", "participant"):
        out[level] = {}
        for name in FIGURES:
            values = np.array([f[level][name] for f in per_fold], dtype=np.float64)
            values = values[np.isfinite(values)]
            out[level][name] = {"mean": float(values.mean()) if values.size else float("nan"),
                                "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0}
    return out


def plot_roc(per_fold: list[dict], path: Path) -> None:
    """Slice-wise and participant-wise ROC curves, one line per fold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, level in zip(axes, ("slice", "participant"), strict=True):
        for k, fold in enumerate(per_fold, start=1):
            truth, score = fold["curves"][level]
            if 0 < sum(truth) < len(truth):
                fpr, tpr, _ = roc_curve(truth, score)
                ax.plot(fpr, tpr, label=f"fold {k} (AUC {fold[level]['auc']:.2f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set(title=f"{level}-wise", xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Gadolinium-free enhancement prediction, MS phantoms (synthetic)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cross_validate(items: list[dict], recipe: PredictionRecipe, folds: int, seed: int, device: torch.device,
                   log=print) -> list[dict]:
    """Per-fold results of the whole training schedule, each fold's subjects held out."""
    results = []
    for k, test_subjects in enumerate(subject_folds([i["subject"] for i in items], folds, seed), start=1):
        rest = sorted({i["subject"] for i in items} - set(test_subjects))
        train_subjects, val_subjects = split_validation(rest, recipe.val_fraction, seed + k)
        pick = lambda names: [i for i in items if i["subject"] in names]  # noqa: E731
        started = time.time()
        result = train(recipe, pick(train_subjects), pick(val_subjects), device, seed=seed + k)
        scores = score_stacks(result.model, pick(test_subjects), device)
        scores.update(fold=k, test_subjects=test_subjects, val_subjects=val_subjects,
                      seconds=round(time.time() - started, 1), validation=result.validation)
        results.append(scores)
        log(f"fold {k}: slice AUC {scores['slice']['auc']:.3f}, participant AUC {scores['participant']['auc']:.3f} "
            f"({scores['seconds']:.0f} s)")
    return results


def format_summary(summary: dict) -> str:
    lines = [f"{'':12s} " + " ".join(f"{n:>13s}" for n in FIGURES)]
    for level, values in summary.items():
        lines.append(f"{level:12s} " + " ".join(f"{values[n]['mean']:6.3f}+-{values[n]['sd']:5.3f}" for n in FIGURES))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=40, help="MS phantom subjects (2 visits each)")
    parser.add_argument("--first-subject", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2020, help="phantom seed (the training seed follows it)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cohort", type=Path, default=None, help="phantom cohort folder (made if missing)")
    parser.add_argument("--out", type=Path, default=Path("enhancement_prediction_cv"))
    parser.add_argument("--weights", type=Path, default=None, help="score these weights on the cohort, no training")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cohort = args.cohort or DEFAULT_CACHE / f"ms-seed{args.seed}"
    started = time.time()
    recipe = ENHANCEMENT_PREDICTION
    model = None
    if args.weights:
        from .. import weights

        meta = weights.load_metadata(args.weights)
        recipe = PredictionRecipe.from_dict(meta.get("recipe", {}))
        model = EnhancementPredictor(recipe)
        model.load_state_dict(weights.load_state(args.weights))
        model.to(device).eval()
    studies = phantom_cohort(cohort, args.subjects, args.seed, args.first_subject)
    items = stacks(studies, recipe, cohort / "stacks")
    prepared = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(["python -m mslesion.enhancement_prediction.evaluate", *(argv or sys.argv[1:])]),
        "cohort": str(cohort), "subjects": args.subjects, "first_subject": args.first_subject, "seed": args.seed,
        "studies": len(items), "enhancing_studies": int(sum(int(i["study_truth"]) for i in items)),
        "machine": machine(), "threads": args.threads, "recipe": recipe.as_dict(),
        "preparation_seconds": round(prepared, 1),
    }
    if model is not None:
        scores = score_stacks(model, items, device)
        report.update(weights=str(args.weights), slice=scores["slice"], participant=scores["participant"],
                      study_probabilities=scores["studies"])
        plot_roc([scores], args.out / "roc.png")
        print(json.dumps({k: report[k] for k in ("slice", "participant")}, indent=1))
    else:
        per_fold = cross_validate(items, recipe, args.folds, args.seed, device)
        summary = summarise(per_fold)
        plot_roc(per_fold, args.out / "roc.png")
        report.update(folds=args.folds, summary=summary,
                      per_fold=[{k: v for k, v in f.items() if k != "curves"} for f in per_fold])
        print(format_summary(summary))
    report["seconds"] = round(time.time() - started, 1)
    (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"results: {args.out / 'results.json'}, ROC curves: {args.out / 'roc.png'}")
    return report


if __name__ == "__main__":
    main()
