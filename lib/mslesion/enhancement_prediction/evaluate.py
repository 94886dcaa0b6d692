"""Evaluation of enhancement prediction on MS phantoms: the paper's cross-validation, and a shifted test that
cannot flatter.

    python -m mslesion.enhancement_prediction.evaluate [--subjects 40] [--seed 2020] [--folds 5]
           [--cohort DIR] [--out DIR] [--weights PATH]
    python -m mslesion.enhancement_prediction.evaluate --shifted --weights PATH [--subjects 6] [--seed 90000]
           [--variants 1mm 3mm_axial whole_head integer_lps] [--bootstrap 2000] [--out DIR] [--json]

Cross-validation: both visits of a subject fall in the same fold. In each fold the other subjects are split into
training and validation (epoch choice, calibration, Youden thresholds); the held-out fold is scored at the
thresholds found on validation. AUC, sensitivity, specificity, accuracy, PPV and NPV are given slice-wise and
participant-wise (a participant here is one visit, as in the paper), mean +- SD over folds; ROC curves are saved as
PNG. With ``--weights`` the given model is scored on the whole cohort instead (no training).

``--shifted``: the given weights on a test cohort that training never used: seeds 90000 and above (training seeds
stay below), randomised contrast and activity signs, and one fixed acquisition variant per group (1 mm, 3 mm axial,
whole head, integer LPS storage); ``--subjects`` subjects (2 visits each) per variant. Slice-wise and
participant-wise AUC with participant bootstrap 95% CIs (a subject's visits resampled together), sensitivity and
specificity at the stored thresholds, the Brier score against the base rate's, and a reliability curve
(``reliability.png``), pooled and per variant; ``--json`` prints the whole report as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..phantoms.randomise import TEST_SEED_FLOOR
from ..unet.pretrain import machine
from .calibration import bootstrap_auc, brier, expected_calibration_error, reliability
from .data import SHIFTED_VARIANTS, phantom_cohort, stacks
from .networks import EnhancementPredictor
from .recipe import ENHANCEMENT_PREDICTION, PredictionRecipe
from .roc import auc, figures
from .training import SliceSet, participant_logits, predict, train

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
    logits = participant_logits(model, slice_scores, device)
    real = SliceSet.of(items)
    real_scores = np.concatenate([s[np.asarray(i["slice_index"]) >= 0] for s, i in zip(slice_scores, items,
                                                                                       strict=True)])
    truth = np.array([int(i["study_truth"]) for i in items])
    participant = figures(truth, probability, float(model.participant_threshold))
    participant["auc"] = auc(truth, logits)  # ranked by the logit: the clipping of answers must not make ties
    return {
        "slice": figures(real.y.numpy(), real_scores, float(model.slice_threshold)),
        "participant": participant,
        "curves": {"slice": (real.y.numpy().tolist(), real_scores.tolist()),
                   "participant": (truth.tolist(), logits.tolist())},
        "studies": {i["id"]: round(float(p), 4) for i, p in zip(items, probability, strict=True)},
        "arrays": {"slice_truth": real.y.numpy(), "slice_score": real_scores, "slice_study": real.study,
                   "truth": truth, "probability": probability, "logit": logits},
    }


def _level(truth: np.ndarray, score: np.ndarray, groups: np.ndarray, threshold: float, bootstrap: int, seed: int,
           ranking: np.ndarray | None = None) -> dict:
    """Figures of one level at the stored threshold, the AUC (of ``ranking`` if given) with its participant
    bootstrap CI."""
    out = figures(truth, score, threshold)
    ci = bootstrap_auc(truth, score if ranking is None else ranking, groups, n=bootstrap, seed=seed)
    out.update(auc=ci["auc"], auc_ci95=[ci["lo"], ci["hi"]], bootstrap_resamples=ci["resamples"])
    return out


def shifted_figures(arrays: dict, groups: np.ndarray, slice_threshold: float, participant_threshold: float,
                    bootstrap: int = 2000, seed: int = 0) -> dict:
    """Everything the shifted test reports for one group of studies, from ``score_stacks``' arrays and each
    study's participant (``groups``, for the bootstrap): slice- and participant-wise figures with AUC CIs, Brier
    against the base rate's, reliability bins, and the extreme answers (none may be exactly 0 or 1)."""
    truth, probability = arrays["truth"], arrays["probability"]
    participant = _level(truth, probability, groups, participant_threshold, bootstrap, seed, ranking=arrays["logit"])
    bins = reliability(truth, probability)
    participant.update(brier(truth, probability), reliability=bins, ece=expected_calibration_error(bins),
                       min_probability=float(probability.min()) if probability.size else float("nan"),
                       max_probability=float(probability.max()) if probability.size else float("nan"),
                       exactly_0_or_1=int(np.sum((probability == 0) | (probability == 1))))
    slice_groups = groups[arrays["slice_study"]] if len(arrays["slice_study"]) else np.zeros(0, dtype=groups.dtype)
    return {"slice": _level(arrays["slice_truth"], arrays["slice_score"], slice_groups, slice_threshold, bootstrap,
                            seed),
            "participant": participant, "studies": int(truth.size), "enhancing_studies": int(truth.sum())}


def concatenate_arrays(parts: list[dict]) -> dict:
    """``score_stacks`` arrays of several groups as one (study indices shifted)."""
    offsets = np.cumsum([0] + [len(p["truth"]) for p in parts[:-1]])
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "slice_study"}
    out["slice_study"] = np.concatenate([p["slice_study"] + o for p, o in zip(parts, offsets, strict=True)])
    return out


def plot_reliability(report: dict, path: Path) -> None:
    """Reliability curves (pooled and per variant) and the participant-wise ROC of the pooled test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, group in report["groups"].items():
        rows = group["participant"]["reliability"]
        pooled = name == "pooled"
        label = (f"{name} (n={group['studies']}, Brier {group['participant']['brier']:.3f}"
                 f" vs {group['participant']['brier_base_rate']:.3f})")
        ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o",
                linewidth=2.5 if pooled else 1, markersize=5 if pooled else 3, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability (bin mean)", ylabel="observed frequency",
           title="Reliability, shifted test cohort (synthetic)")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def shifted_evaluation(model: EnhancementPredictor, recipe: PredictionRecipe, root: Path, subjects: int, seed: int,
                       variants: list[str], device: torch.device, bootstrap: int = 2000, log=print) -> dict:
    """The weights on the shifted test cohort under ``root`` (written where missing): per variant and pooled."""
    parts, groups, report = [], [], {"variants": variants, "subjects_per_variant": subjects, "seed": seed,
                                     "thresholds": {"slice": float(model.slice_threshold),
                                                    "participant": float(model.participant_threshold)},
                                     "temperature": float(model.temperature), "groups": {}}
    for variant in variants:
        folder = root / f"shifted-{variant}-seed{seed}"
        items = stacks(phantom_cohort(folder, subjects, seed, variant=variant), recipe, folder / "stacks")
        arrays = score_stacks(model, items, device)["arrays"]
        names = np.array([f"{variant}/{i['subject']}" for i in items])
        report["groups"][variant] = shifted_figures(arrays, names, float(model.slice_threshold),
                                                    float(model.participant_threshold), bootstrap, seed)
        parts.append(arrays)
        groups.append(names)
        g = report["groups"][variant]
        log(f"{variant}: {g['studies']} studies ({g['enhancing_studies']} enhancing), participant AUC "
            f"{g['participant']['auc']:.3f}, slice AUC {g['slice']['auc']:.3f}")
    report["groups"]["pooled"] = shifted_figures(concatenate_arrays(parts), np.concatenate(groups),
                                                 float(model.slice_threshold), float(model.participant_threshold),
                                                 bootstrap, seed)
    return report


def format_shifted(report: dict) -> str:
    lines = [f"{'group':12s} {'n':>4s} {'enh':>4s} {'participant AUC (95% CI)':>26s} {'sens':>6s} {'spec':>6s} "
             f"{'Brier':>6s} {'base':>6s} {'slice AUC (95% CI)':>22s} {'sens':>6s} {'spec':>6s}"]
    for name, g in report["groups"].items():
        p, s = g["participant"], g["slice"]
        lines.append(f"{name:12s} {g['studies']:4d} {g['enhancing_studies']:4d} "
                     f"{p['auc']:8.3f} ({p['auc_ci95'][0]:.3f}-{p['auc_ci95'][1]:.3f}) {p['sensitivity']:6.3f} "
                     f"{p['specificity']:6.3f} {p['brier']:6.3f} {p['brier_base_rate']:6.3f} "
                     f"{s['auc']:6.3f} ({s['auc_ci95'][0]:.3f}-{s['auc_ci95'][1]:.3f}) {s['sensitivity']:6.3f} "
                     f"{s['specificity']:6.3f}")
    return "\n".join(lines)


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


def load_model(path: Path, device: torch.device) -> tuple[EnhancementPredictor, PredictionRecipe]:
    """Weights and the recipe stored with them (temperature 1 where they carry no calibration)."""
    from .. import weights

    recipe = PredictionRecipe.from_dict(weights.load_metadata(path).get("recipe", {}))
    model = EnhancementPredictor(recipe)
    model.load_state_dict(weights.load_state(path))
    return model.to(device).eval(), recipe


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=None,
                        help="MS phantom subjects, 2 visits each (default 40; --shifted: 6 per variant)")
    parser.add_argument("--first-subject", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None,
                        help=f"phantom seed, the training seed follows it (default 2020; --shifted: {TEST_SEED_FLOOR})")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--randomised", action="store_true",
                        help="cross-validate on a randomised cohort (acquisition, contrast and activity signs)")
    parser.add_argument("--previous-session", action="store_true",
                        help="cross-validate the recipe with the FLAIR-change channel (weights carry their own recipe)")
    parser.add_argument("--cohort", type=Path, default=None, help="phantom cohort folder (made if missing)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default enhancement_prediction_cv, "
                                                                "--shifted: enhancement_prediction_shifted)")
    parser.add_argument("--weights", type=Path, default=None, help="score these weights on the cohort, no training")
    parser.add_argument("--shifted", action="store_true", help="score --weights on the shifted test cohort")
    parser.add_argument("--variants", nargs="+", default=list(SHIFTED_VARIANTS), choices=list(SHIFTED_VARIANTS))
    parser.add_argument("--bootstrap", type=int, default=2000, help="participant bootstrap resamples (--shifted)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    args = parser.parse_args(argv)
    if args.shifted and not args.weights:
        parser.error("--shifted scores given weights: add --weights PATH (e.g. model/enhancement_prediction.pt)")
    seed = args.seed if args.seed is not None else (TEST_SEED_FLOOR if args.shifted else 2020)
    if args.shifted and seed < TEST_SEED_FLOOR:
        parser.error(f"--shifted needs a seed of {TEST_SEED_FLOOR} or more (training seeds stay below)")
    subjects = args.subjects if args.subjects is not None else (6 if args.shifted else 40)
    out_dir = args.out or Path("enhancement_prediction_shifted" if args.shifted else "enhancement_prediction_cv")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        stream=sys.stderr if args.json else None)
    log = (lambda text: print(text, file=sys.stderr)) if args.json else print  # noqa: E731
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.time()
    recipe = replace(ENHANCEMENT_PREDICTION, previous_session=args.previous_session)
    model = None
    if args.weights:
        model, recipe = load_model(args.weights, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(["python -m mslesion.enhancement_prediction.evaluate", *(argv or sys.argv[1:])]),
        "seed": seed, "subjects": subjects, "machine": machine(), "threads": args.threads,
        "recipe": recipe.as_dict(),
    }
    if args.shifted:
        root = args.cohort or DEFAULT_CACHE
        report.update(weights=str(args.weights), cohort=str(root),
                      **shifted_evaluation(model, recipe, root, subjects, seed, args.variants, device,
                                           args.bootstrap, log=log))
        plot_reliability(report, out_dir / "reliability.png")
        log(format_shifted(report))
    else:
        kind = "ms-randomised" if args.randomised else "ms"
        cohort = args.cohort or DEFAULT_CACHE / f"{kind}-seed{seed}"
        studies = phantom_cohort(cohort, subjects, seed, args.first_subject, randomised=args.randomised)
        items = stacks(studies, recipe, cohort / "stacks")
        report.update(cohort=str(cohort), first_subject=args.first_subject, randomised=args.randomised,
                      studies=len(items), enhancing_studies=int(sum(int(i["study_truth"]) for i in items)),
                      preparation_seconds=round(time.time() - started, 1))
        if model is not None:
            scores = score_stacks(model, items, device)
            report.update(weights=str(args.weights), slice=scores["slice"], participant=scores["participant"],
                          study_probabilities=scores["studies"])
            plot_roc([scores], out_dir / "roc.png")
            log(json.dumps({k: report[k] for k in ("slice", "participant")}, indent=1))
        else:
            per_fold = cross_validate(items, recipe, args.folds, seed, device, log=log)
            summary = summarise(per_fold)
            plot_roc(per_fold, out_dir / "roc.png")
            report.update(folds=args.folds, summary=summary,
                          per_fold=[{k: v for k, v in f.items() if k not in ("curves", "arrays")} for f in per_fold])
            log(format_summary(summary))
    report["seconds"] = round(time.time() - started, 1)
    (out_dir / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.json:
        print(json.dumps(report, indent=1))
    log(f"results: {out_dir / 'results.json'}, plots in {out_dir}")
    return report


if __name__ == "__main__":
    main()
