"""Default weights of enhancement_prediction, trained on MS phantoms (nothing is downloaded).

    python -m mslesion.enhancement_prediction.pretrain [--subjects 64] [--held-out 8] [--seed 2020]
           [--randomised] [--shifted-subjects N] [--schedule scratch_epochs=40 ...]
           [--cohort DIR] [--out model/] [--imagenet vgg16-397923af.pth --width 1]

Subjects 1..S of the phantom cohort train (a quarter of them validate: epoch choice, the participant probability's
calibration, Youden thresholds); the next ``--held-out`` subjects are never seen and give the model card's figures.
``--randomised``: every subject draws its own acquisition, contrast and activity signs (phantoms/activity.py).
``--shifted-subjects N``: the finished weights are also scored on the shifted test cohort (N subjects per variant,
seeds 90000+, ``evaluate --shifted``) and the card holds that table. Writes ``enhancement_prediction.pt`` (fp16
weights + metadata: recipe, thresholds, calibration, figures), ``.json`` and a model card ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from .. import weights
from ..phantoms.randomise import TEST_SEED_FLOOR
from ..unet.pretrain import machine
from .data import SHIFTED_VARIANTS, phantom_cohort, stacks
from .evaluate import DEFAULT_CACHE, format_shifted, score_stacks, shifted_evaluation, split_validation
from .lesion_reader import METADATA_KEY as READER_KEY
from .lesion_reader import PREDICTED_MASK_KEY, LesionReader, cohort_tables, fit_reader, score, summary
from .networks import PROBABILITY_CEILING, PROBABILITY_FLOOR, EnhancementPredictor, load_imagenet_features
from .recipe import ENHANCEMENT_PREDICTION, PredictionRecipe
from .training import train

TASK = ENHANCEMENT_PREDICTION.task


def weights_metadata(recipe: PredictionRecipe, model: EnhancementPredictor, extra: dict | None = None) -> dict:
    """What a checkpoint carries beside the weights: the recipe to rebuild the net, the thresholds infer uses and,
    next to them, the participant probability's calibration (temperature; 1 = none) and its clipping range."""
    return {
        "task": recipe.task,
        "recipe": recipe.as_dict(),
        "thresholds": {"slice": float(model.slice_threshold), "participant": float(model.participant_threshold)},
        "calibration": {"temperature": float(model.temperature), "probability_clip": [PROBABILITY_FLOOR,
                                                                                       PROBABILITY_CEILING]},
        **(extra or {}),
    }


def _row(figures: dict) -> str:
    return " | ".join(f"{figures[k]:.3f}" for k in ("auc", "sensitivity", "specificity", "accuracy", "ppv", "npv"))


def _shifted_lines(shifted: dict | None) -> list[str]:
    """The model card's table of the shifted test cohort (evaluate --shifted), if it was run."""
    if not shifted:
        return []
    lines = [f"## Shifted test cohort (seeds {shifted['seed']}+, never used in training)", "",
             f"{shifted['subjects_per_variant']} subjects x 2 visits per acquisition variant, randomised contrast and"
             " activity signs; AUC with participant bootstrap 95% CI, figures at the stored thresholds:", "",
             "| group | studies (enhancing) | participant AUC | sens | spec | Brier (base rate) | slice AUC |"
             " sens | spec |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, g in shifted["groups"].items():
        p, s = g["participant"], g["slice"]
        lines.append(f"| {name} | {g['studies']} ({g['enhancing_studies']}) | {p['auc']:.3f}"
                     f" ({p['auc_ci95'][0]:.2f}-{p['auc_ci95'][1]:.2f}) | {p['sensitivity']:.3f} |"
                     f" {p['specificity']:.3f} | {p['brier']:.3f} ({p['brier_base_rate']:.3f}) | {s['auc']:.3f}"
                     f" ({s['auc_ci95'][0]:.2f}-{s['auc_ci95'][1]:.2f}) | {s['sensitivity']:.3f} |"
                     f" {s['specificity']:.3f} |")
    return [*lines, ""]


def flair_lesion_segmenter():
    """The server's flair_lesion mask step with the shipped weights (what answers without a saved label)."""
    from ..tasks.enhancement_prediction import FlairLesionSegmenter

    return FlairLesionSegmenter(str(weights.REPO_MODEL_DIR / "no-published-weights"),
                                weights.default_weights("flair_lesion"))


def lesion_readers_of(cohort: Path, train_subjects: list[str], val_subjects: list[str],
                      shifted_subjects: int) -> tuple[dict[str, LesionReader], dict]:
    """The lesion readers, one per mask source (READER_KEYS: drawn labels, flair_lesion's masks), each fitted on the
    training subjects' lesions (temperature and threshold on the validation subjects'), and their card entry: the
    fitted values and, where the shifted cohort was scored, the figures there (each reader on its own masks)."""
    readers, entry = {}, {}
    for key, segmenter in ((READER_KEY, None), (PREDICTED_MASK_KEY, flair_lesion_segmenter())):
        tables = cohort_tables(cohort, segmenter)
        reader = fit_reader([t for t in tables if t["subject"] in train_subjects],
                            [t for t in tables if t["subject"] in val_subjects])
        readers[key] = reader
        entry[key] = {"masks": "drawn labels" if segmenter is None else
                      f"flair_lesion's predictions ({weights.default_weights('flair_lesion').name}, "
                      f"{segmenter.cache_tag})", "temperature": reader.temperature, "threshold": reader.threshold,
                      "shifted": {}}
        if shifted_subjects:
            pooled = []
            for variant in SHIFTED_VARIANTS:
                test = [t for t in cohort_tables(cohort.parent / f"shifted-{variant}-seed{TEST_SEED_FLOOR}", segmenter)
                        if int(t["subject"]) <= shifted_subjects]
                entry[key]["shifted"][variant] = summary(score(reader, test))
                pooled += [{**t, "subject": f"{variant}/{t['subject']}"} for t in test]
            entry[key]["shifted"]["pooled"] = summary(score(reader, pooled))
    return readers, entry


def _reader_lines(entry: dict | None) -> list[str]:
    """The model card's section on the lesion readers (what answers the headline probability)."""
    if not entry:
        return []
    lines = ["## Lesion readers (the headline answer)", "",
             "A logistic regression on measured features of each lesion (contrast, halo, margin, size;"
             " `enhancement_prediction/lesion_reader.py`), fitted on the training subjects' lesions; a study is called"
             " by a noisy-OR of its lesions, with a temperature and threshold fitted on the validation subjects. One"
             " reader per lesion mask source: a saved label is read by the one fitted on drawn labels, flair_lesion's"
             " mask by the one fitted on its masks. The participant net's answer stays beside it (`participant_net`).",
             ""]
    for key, reader in entry.items():
        lines += [f"### `{key}`: fitted on {reader['masks']}; T = {reader['temperature']:.3f}, threshold p >="
                  f" {reader['threshold']:.3f}", ""]
        if reader.get("shifted"):
            lines += ["| shifted group | studies (enhancing) | lesion AUC | participant AUC (95% CI) | sensitivity |"
                      " specificity | Brier (base rate) |", "| --- | --- | --- | --- | --- | --- | --- |"]
            for name, g in reader["shifted"].items():
                lo, hi = g["participant_auc_ci"]
                lines.append(f"| {name} | {g['studies']} ({g['enhancing_studies']}) | {g['lesion_auc']:.3f} |"
                             f" {g['participant_auc']:.3f} ({lo:.2f}-{hi:.2f})"
                             f" | {g['sensitivity']:.2f} | {g['specificity']:.2f} | {g['brier']:.3f}"
                             f" ({g['brier_base_rate']:.3f}) |")
            lines.append("")
    return lines


def write_model_card(card: dict, path: Path) -> None:
    held, recipe = card["held_out"], card["recipe"]
    signature = (
        ["MS phantoms (docs/phantoms.md); no patient data and no downloaded weights were used. Every phantom subject",
         "drew its own acquisition, contrast and non-contrast signs of activity (phantoms/activity.py: T2/FLAIR",
         "brightening, oedema halo, T1 iso-intensity, ill-defined margins, each present or not and of random strength,",
         "some enhancing lesions with no sign, some inactive lesions mimicking them); these weights learned *those*",
         "synthetic signs. Whether real enhancing lesions can be told apart"]
        if card.get("randomised") else
        ["MS phantoms (docs/phantoms.md); no patient data and no downloaded weights were used. Phantom lesions that",
         "enhance carry a fixed, synthetic non-contrast signature (brighter FLAIR/T2, milder T1 hypointensity, a 2 mm",
         "oedema halo); these weights learned *that* signature. Whether real enhancing lesions can be told apart"])
    calibration = card.get("validation", {}).get("calibration") or {}
    lines = [
        f"# {TASK}: default weights (synthetic MS phantoms, NOT for clinical use)",
        "",
        "These weights were produced by `python -m mslesion.enhancement_prediction.pretrain` from the project's own",
        *signature,
        "without contrast is what the paper studied on patients; nothing here is evidence of it. Retrain on your own",
        "labelled studies (POST /train/enhancement_prediction) before looking at any output, and never use it to",
        "decide whether a patient gets gadolinium.",
        "",
        "## How they were made",
        "",
        f"- Phantom cohort `ms`{' (randomised)' if card.get('randomised') else ''}, seed {card['seed']}: subjects"
        f" {card['train_subjects'][0]}..{card['train_subjects'][-1]}"
        f" minus validation, 2 visits each: {card['train_studies']} training studies, {card['val_studies']} validation"
        f" studies (subjects {', '.join(card['val_subjects'])}).",
        f"- Input: T1w, T2w, FLAIR on the FLAIR's 1 mm RAS grid, z-scored over the head, masked by the phantom's"
        f" ground-truth FLAIR lesion label dilated by {recipe['dilation']} voxels; {recipe['slab_slices']} mm axial"
        f" slices, the {recipe['n_slices']} most masked per study, {recipe['fov_mm']:.0f} mm field of view resized to"
        f" {recipe['slice_size']}x{recipe['slice_size']}.",
        f"- Slice classifier: torchvision VGG16 (configuration D) at width {recipe['width']} (channels"
        f" {card['vgg_channels']}), dense head {recipe['head_hidden']} units; participant net"
        f" {recipe['n_slices']} sorted slice scores -> {recipe['participant_hidden']} -> 1."
        f" {card['parameters']:,} parameters, fp16 file of {card['file_kb']} kB.",
        f"- Schedule: stage 0 (not in the paper: no ImageNet base at this width) whole network from scratch,"
        f" Adam lr {recipe['scratch_lr']}, {recipe['scratch_epochs']} epochs; stage 1 dense head on frozen bottleneck"
        f" features, Adam lr {recipe['head_lr']}, {recipe['head_epochs']} epochs; stage 2 last convolutional block +"
        f" head, SGD lr {recipe['finetune_lr']} momentum {recipe['finetune_momentum']}, {recipe['finetune_epochs']}"
        f" epochs; minibatches 1:1 enhancing / non-enhancing; participant net Adam lr {recipe['participant_lr']},"
        f" dropout {recipe['participant_dropout']}, {recipe['participant_epochs']} full-batch steps, on"
        + (f" out-of-fold slice scores ({recipe['participant_folds']} slice classifiers on subject folds of the"
           " training studies, each scoring the studies it never saw; not in the paper)."
           if recipe.get("participant_folds", 0) >= 2 else " the training studies' own slice scores (the paper's)."),
        f"- Youden-optimal thresholds on the validation studies: slice-wise {card['thresholds']['slice']:.3f},"
        f" participant-wise {card['thresholds']['participant']:.3f} (inference uses them).",
        f"- Calibration: temperature scaling of the participant logit fitted on the validation studies, T ="
        f" {card.get('temperature', 1.0):.3f}"
        + (f" (log-loss {calibration['log_loss_before']:.3f} -> {calibration['log_loss_after']:.3f})"
           if calibration else "") + "; every answer is clipped into [0.005, 0.995].",
        f"- Training took {card['train_seconds'] / 60:.1f} min on {card['machine']} ({card['threads']} thread(s),"
        f" {card['slices_per_second']:.0f} slices/s), after {card['preparation_seconds'] / 60:.1f} min making or"
        " reading the phantoms and their slice stacks.",
        "",
        f"## Held-out phantoms (subjects {card['held_out_subjects'][0]}..{card['held_out_subjects'][-1]}, never seen)",
        "",
        f"{held['participant']['positives']} enhancing and {held['participant']['negatives']} non-enhancing studies;"
        f" {held['slice']['positives']} enhancing and {held['slice']['negatives']} non-enhancing slices. Figures at"
        " the stored thresholds:",
        "",
        "| level | AUC | sensitivity | specificity | accuracy | PPV | NPV |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| slice-wise | {_row(held['slice'])} |",
        f"| participant-wise | {_row(held['participant'])} |",
        "",
        *_shifted_lines(card.get("shifted")),
        *_reader_lines(card.get("lesion_readers")),
        "Five-fold cross-validation of the same recipe: see docs/enhancement_prediction.md.",
        "",
        "At inference without a saved FLAIR label the lesion mask comes from flair_lesion's U-Net, whose phantom",
        "defaults under-call MS lesions; these figures assume a correct lesion mask (a saved label).",
        "",
        f"Generated {card['generated']}. Re-run the command above to reproduce (deterministic seeds; timing varies).",
    ]
    path.write_text("\n".join(lines) + "\n")


def pretrain(subjects: int, held_out: int, seed: int, cohort: Path, out_dir: Path, threads: int,
             imagenet: Path | None = None, width: float | None = None, randomised: bool = False,
             shifted_subjects: int = 0, schedule: dict | None = None, previous_session: bool = False) -> dict:
    started = time.time()
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe = ENHANCEMENT_PREDICTION if width is None else replace(ENHANCEMENT_PREDICTION, width=width)
    recipe = replace(recipe.with_overrides(schedule or {}), previous_session=previous_session)
    model = EnhancementPredictor(recipe)
    if imagenet:
        load_imagenet_features(model.slice_classifier.features, imagenet)
    items = stacks(phantom_cohort(cohort, subjects, seed, randomised=randomised), recipe, cohort / "stacks")
    held_items = stacks(phantom_cohort(cohort, held_out, seed, first_subject=subjects + 1, randomised=randomised),
                        recipe, cohort / "stacks")
    prepared = time.time() - started
    train_subjects, val_subjects = split_validation(sorted({i["subject"] for i in items}), recipe.val_fraction, seed)
    train_items = [i for i in items if i["subject"] in train_subjects]
    val_items = [i for i in items if i["subject"] in val_subjects]
    result = train(recipe, train_items, val_items, device, seed=seed, model=model, from_scratch=imagenet is None,
                   progress=lambda u: print(json.dumps(u["history"][-1]), flush=True))
    model = result.model
    held = score_stacks(model, held_items, device)
    shifted = None
    if shifted_subjects:
        shifted = shifted_evaluation(model, recipe, cohort.parent, shifted_subjects, TEST_SEED_FLOOR,
                                     list(SHIFTED_VARIANTS), device)
        print(format_shifted(shifted), flush=True)
    readers, reader_card = lesion_readers_of(cohort, train_subjects, val_subjects, shifted_subjects)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = {
        "task": TASK,
        "source": "mslesion.enhancement_prediction.pretrain",
        "synthetic": True,
        "clinical_use": False,
        "seed": seed,
        "randomised": randomised,
        "previous_session": previous_session,
        "temperature": float(model.temperature),
        "shifted": shifted,
        "lesion_readers": reader_card,
        "imagenet": str(imagenet) if imagenet else None,
        "recipe": recipe.as_dict(),
        "train_subjects": [f"{n:02d}" for n in range(1, subjects + 1)],
        "val_subjects": val_subjects,
        "held_out_subjects": [f"{n:02d}" for n in range(subjects + 1, subjects + held_out + 1)],
        "train_studies": len(train_items),
        "val_studies": len(val_items),
        "thresholds": {"slice": float(model.slice_threshold), "participant": float(model.participant_threshold)},
        "validation": result.validation,
        "held_out": {"slice": held["slice"], "participant": held["participant"],
                     "study_probabilities": held["studies"]},
        "history": result.history,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vgg_channels": sorted({m.out_channels for m in model.slice_classifier.features if hasattr(m, "out_channels")}),
        "train_seconds": round(result.seconds, 1),
        "preparation_seconds": round(prepared, 1),
        "slices_per_second": round(result.slices_per_second, 1),
        "threads": threads,
        "machine": machine(),
        "generated": time.strftime("%Y-%m-%d"),
    }
    target = out_dir / f"{TASK}.pt"
    meta = weights_metadata(recipe, model, {"source": card["source"], "synthetic": True, "randomised": randomised,
                                            "held_out": card["held_out"], "validation": result.validation,
                                            **{key: r.as_dict() for key, r in readers.items()}})
    weights.save_state(model.state_dict(), target, half=True, metadata=meta)
    card["file_kb"] = round(target.stat().st_size / 1024)
    (out_dir / f"{TASK}.json").write_text(json.dumps(card, indent=1) + "\n")
    write_model_card(card, out_dir / f"{TASK}.md")
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=64, help="phantom subjects to train and validate on")
    parser.add_argument("--held-out", type=int, default=8, help="further subjects for the model card's figures")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--cohort", type=Path, default=None, help="phantom cohort folder (made if missing)")
    parser.add_argument("--out", type=Path, default=weights.REPO_MODEL_DIR)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="torch threads (1 was 4x faster than 2 on a shared 2-core CPU)")
    parser.add_argument("--imagenet", type=Path, default=None,
                        help="local torchvision vgg16 ImageNet weights (needs --width 1): skips the from-scratch stage")
    parser.add_argument("--width", type=float, default=None, help="VGG16 channel multiplier (default: the recipe's)")
    parser.add_argument("--randomised", action="store_true",
                        help="randomised cohorts: acquisition, contrast and activity signs drawn per subject")
    parser.add_argument("--shifted-subjects", type=int, default=0,
                        help="also score the weights on the shifted test cohort, N subjects per variant (0: no)")
    parser.add_argument("--previous-session", action="store_true",
                        help="add the FLAIR change since the previous session as a 4th input channel (default off)")
    parser.add_argument("--schedule", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="schedule overrides, e.g. scratch_epochs=20 participant_epochs=500 (a smoke test)")
    args = parser.parse_args(argv)
    try:
        schedule = dict(item.split("=", 1) for item in args.schedule)
    except ValueError:
        parser.error("--schedule takes FIELD=VALUE pairs")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.imagenet and (args.width or ENHANCEMENT_PREDICTION.width) != 1:
        parser.error("--imagenet needs --width 1 (ImageNet weights exist only for the full-width VGG16)")
    cohort = args.cohort or DEFAULT_CACHE / f"ms{'-randomised' if args.randomised else ''}-seed{args.seed}"
    card = pretrain(args.subjects, args.held_out, args.seed, cohort, args.out, args.threads, args.imagenet, args.width,
                    randomised=args.randomised, shifted_subjects=args.shifted_subjects, schedule=schedule,
                    previous_session=args.previous_session)
    print(json.dumps({k: card[k] for k in ("thresholds", "temperature", "held_out", "train_seconds", "file_kb")},
                     indent=1))


if __name__ == "__main__":
    main()
