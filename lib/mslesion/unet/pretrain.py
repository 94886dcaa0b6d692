"""Produces the default weights in model/ from the project's own phantom cohorts (nothing is downloaded).

    python -m mslesion.pretrain flair_lesion|new_lesion|enhancement [--subjects 4] [--epochs 12] [--schedule cpu|paper]
    python -m mslesion.pretrain flair_lesion --budget-min 120 --run-dir runs/flair_lesion [--resume]
    torchrun --nproc_per_node=N -m mslesion.pretrain ...   (data parallel on N GPUs; docs/distributed.md)

With ``--budget-min`` the run is long, unattended and resumable: the training cohorts are domain-randomised
phantoms (every subject its own acquisition and appearance, phantoms/randomise.py) cached under the run
directory; the learning-rate curve is planned from the measured step rate and the budget; the whole training
state is checkpointed atomically after every epoch and on SIGTERM, and ``--resume`` continues the same curve
(refusing a run directory made with another recipe or data). At the end the test-time mirroring, threshold and
minimum lesion size are tuned on the validation studies and stored in the published weights with the recipe
(``--retune`` does only that, for published weights).

Each default is trained on non-MS pathology, as the transfer-learning method prescribes, with the best epoch
picked on held-out studies of those same cohorts, then evaluated on MS phantoms it never saw:
flair_lesion on FLAIR hyperintensities (glioma-like infiltration, confluent leukoencephalopathy, punctate
small-vessel lesions), new_lesion on longitudinal glioma change (growth and new satellites between two visits),
enhancement on enhancing metastases with oedema. The weights are stored in fp16 next to a model card that
records how they were made and what they score.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import distributed, weights
from .evaluate import evaluate_on_cohort
from .networks import lesion_unet
from .phantom_items import cohort_items, randomised_items
from .recipes import RECIPES, for_cpu, for_cpu_pretraining, from_checkpoint, postprocessing
from .training import FitResult, fit, state_digest

PRETRAINING_COHORTS = {
    "flair_lesion": ("glioma", "leukoencephalopathy", "small_vessel"),
    "new_lesion": ("glioma_change",),
    "enhancement": ("metastasis",),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}"


def shifted_split_table(results: dict) -> list[str]:
    """Markdown rows of a shifted-split evaluation (python -m mslesion.evaluate --json), one per variant."""
    rows = ["| acquisition | studies | true lesions | predicted | sensitivity | PPV | F1 | Dice | FP per scan |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        if isinstance(r, dict) and "f1" in r:
            rows.append(f"| {name} | {r['studies']} | {r['true_lesions']} | {r['predicted_lesions']} | "
                        f"{r['sensitivity']:.2f} | {r['ppv']:.2f} | {r['f1']:.2f} | {r['dice']:.2f} | "
                        f"{r['fp_per_scan']:.1f} |")
    return rows


def write_randomised_card(task: str, card: dict, path: Path) -> None:
    """The model card of domain-randomised (budgeted) pretraining."""
    r, val = card["recipe"], card["evaluation_ms_phantoms"]
    split = card.get("shifted_split")
    lines = [
        f"# {task}: default weights (synthetic pretraining, NOT for clinical use)",
        "",
        f"Produced by `python -m mslesion.pretrain {task} --budget-min {card['budget_min']:g} --run-dir "
        f"runs/{task}` from the project's own phantom studies; no patient data and no downloaded weights were used.",
        "Every figure below is on synthetic phantoms, not on clinical data. Fine-tune on your own corrected labels",
        "(Slicer: Submit Label, then Train) before trusting any output.",
        "",
        "## How they were made",
        "",
        f"- Training cohorts, every subject with its own acquisition and appearance (domain randomisation, "
        f"`mslesion/phantoms/randomise.py`: 1 mm / near-isotropic / low-resolution 3D, thick axial, sagittal and "
        f"coronal 2D, any axis order, integer storage with scale slopes or float, whole head or skull-stripped, "
        f"grey/white contrast, bright deep grey matter, faint to bright lesions, bias and noise): "
        f"{', '.join(card['cohorts'])}; {card['train_studies']} training and {card['val_studies']} validation "
        "studies (seeds of their own).",
        *(["- Input: the follow-up FLAIR and the follow-up minus the baseline FLAIR registered onto it (rigid + "
           "affine), two channels; label 2 (new lesion) is the target."]
          if r.get("longitudinal") and r.get("with_followup") else []),
        *([f"- Started from the `{card['initialised_from']}` weights (`--init-from`; input channels the source lacked "
           "started at zero)."] if card.get("initialised_from") else []),
        f"- Network: MONAI UNet, channels {tuple(r['channels'])}, {r['norm']} norm, 4 down / 4 up, "
        f"{card['parameters']:,} parameters, fp16 ({card['file_kb']} kB).",
        f"- Recipe: {r['loss']} (Dice on the lesion channel pooled over the batch + cross-entropy), AdamW lr "
        f"{card['lr']} with poly decay over {card['total_steps']} planned steps of {r['batch_size']} patches of "
        f"{tuple(r['patch'])}, half centred on lesions picked lesion by lesion, wide intensity augmentation; best "
        f"epoch {card['best_epoch']} by the moving average of pooled validation F1"
        + (" (finalised from the checkpoint before the planned end)." if card.get("finalised_early") else "."),
        f"- Post-processing tuned on the validation studies and stored in the weights: lesion probability > "
        f"{card['postprocessing']['threshold']}, lesions of at least {card['postprocessing']['min_lesion_voxels']} "
        f"voxels, {mirroring(card['postprocessing'])} (the server reads them back from the weights it serves).",
        f"- Took {card['seconds'] / 60:.1f} min on {card['machine']} ({card['patches_per_second']:.2f} patches/s).",
        *([f"- Note: {card['note']}."] if card.get("note") else []),
        "",
        "## Validation (randomised MS phantoms, tuned post-processing)",
        "",
        f"{val['studies']} studies, {val['true_lesions']} lesions: sensitivity {val['sensitivity']:.2f}, PPV "
        f"{val['ppv']:.2f}, F1 {val['f1']:.2f}, Dice {val['dice']:.2f}, {val['fp_per_scan']:.1f} false positives "
        "per scan. These studies chose the threshold, so they flatter; the shifted split below does not.",
        "",
    ]
    if split:
        lines += [
            "## Shifted test split (`python -m mslesion.evaluate " + task + "`)",
            "",
            "Seeds training never uses (90000+), fixed acquisition settings no training draw hits exactly, "
            "randomised contrast; lesion counts pooled per group (lesions of at least 3 voxels):",
            "",
            *shifted_split_table(split),
            "",
        ]
    lines.append(f"Generated {card['generated']}.")
    path.write_text("\n".join(lines) + "\n")


def mirroring(postprocessing: dict) -> str:
    """The test-time mirroring of stored post-processing, in words."""
    axes = postprocessing.get("mirror_axes") or ()
    names = {0: "left-right", 1: "front-back", 2: "up-down"}
    return ("logits averaged with the " + " and ".join(names[a] for a in axes) + " mirrored study") if axes else \
        "no test-time mirroring"


def write_model_card(task: str, card: dict, path: Path) -> None:
    if card.get("schedule") == "cpu-budget":
        return write_randomised_card(task, card, path)
    ms = card["evaluation_ms_phantoms"]
    lines = [
        f"# {task}: default weights (synthetic pretraining, NOT for clinical use)",
        "",
        "These weights were produced by `python -m mslesion.pretrain "
        f"{task}` from the project's own phantom studies; no patient data and no downloaded weights were used.",
        "They exist so the server works out of the box and so fine-tuning has a starting point, as the",
        "transfer-learning method of the paper prescribes. Fine-tune them on your own corrected labels before",
        "trusting any output; figures below are on synthetic phantoms, not on clinical data.",
        "",
        "## How they were made",
        "",
        f"- Pretraining cohorts (non-MS pathology, phantoms on MNI152 anatomy): {', '.join(card['cohorts'])}, "
        f"{card['train_studies']} training and {card['val_studies']} validation studies.",
        *([f"- Started from the `{card['initialised_from']}` weights (transfer; `--init-from`), input channels "
           "the source lacked starting at zero."] if card.get("initialised_from") else []),
        *([f"- Continued from `{card['resumed_from']}` (`--resume`)."] if card.get("resumed_from") else []),
        f"- Network: MONAI UNet, channels {card['recipe']['channels']}, 4 down / 4 up, "
        f"{card['parameters']:,} parameters, stored in fp16 ({card['file_kb']} kB).",
        f"- Schedule `{card['schedule']}`: {card['recipe']['epochs']} epochs, {card['recipe']['patches_per_study']} "
        f"patches of {card['recipe']['patch']} per study x {card['recipe']['augmentations']} augmented passes, "
        f"Adam lr {card['lr']}, loss {card['loss']}, best epoch {card['best_epoch']} by lesion-wise F1 on the "
        "held-out pretraining studies.",
        f"- Took {card['seconds'] / 60:.1f} min on {card['machine']} ({card['patches_per_second']:.2f} patches/s).",
        "",
        "## Evaluation on MS phantoms never seen in training (transfer without fine-tuning)",
        "",
        f"{ms['studies']} studies, lesions of at least {card['recipe']['min_lesion_voxels']} voxels:",
        "",
        "| lesion-wise sensitivity | lesion-wise PPV | lesion-wise F1 | Dice |",
        "| --- | --- | --- | --- |",
        f"| {ms['sensitivity']:.3f} | {ms['ppv']:.3f} | {ms['f1']:.3f} | {ms['dice']:.3f} |",
        "",
        "Validation on the held-out pretraining cohorts at the best epoch: "
        + ", ".join(f"{k} {v:.3f}" for k, v in card["validation"].items() if isinstance(v, float)),
        "",
        "Generated " + card["generated"] + ". Re-run the command above to reproduce (deterministic seeds).",
    ]
    path.write_text("\n".join(lines) + "\n")


def pretrain(task: str, subjects: int, epochs: int | None, schedule: str, seed: int, out_dir: Path,
             eval_subjects: int, loss: str, resume: Path | None = None, init_from: Path | None = None) -> dict:
    recipe = RECIPES[task]
    recipe = recipe if schedule == "paper" else for_cpu(recipe)
    if epochs:
        recipe = replace(recipe, epochs=epochs)
    world = distributed.current()  # under torchrun: this rank; every rank writes the same cohorts (same seeds)
    device = world.device
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f"pretrain-{task}-") as tmp:
        root = Path(tmp)
        train_items, val_items = [], []
        cohorts = PRETRAINING_COHORTS[task]
        n_val = max(1, 3 // len(cohorts))  # about three held-out studies to pick the best epoch on
        for i, cohort in enumerate(cohorts):
            items = cohort_items(root, cohort, subjects + n_val, seed + 100 * i, 1, recipe)
            train_items += items[:-n_val]
            val_items += items[-n_val:]
        network = lesion_unet(recipe)
        if resume:
            network.load_state_dict(weights.load_state(resume))
        elif init_from:  # transfer from another task's weights (e.g. flair_lesion's for enhancement)
            network.load_state_dict(weights.transfer_state(weights.load_state(init_from), network.state_dict()))
        result = fit(recipe, network, train_items, val_items, device, lr=recipe.pretrain_lr, loss=loss,
                     progress=lambda u: print(json.dumps(u["history"][-1]), flush=True), seed=seed)
        if not world.is_main:  # rank 0 evaluates, saves and writes the card
            return {}
        network.load_state_dict(result.state)
        ms_items = cohort_items(root, "ms", eval_subjects, seed + 999, 1, recipe)
        ms_scores = evaluate_on_cohort(network, ms_items, recipe, device)

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{task}.pt"
    weights.save_state(result.state, target, half=True, metadata={"task": task, "source": "mslesion.pretrain"})
    card = {
        "task": task,
        "cohorts": list(PRETRAINING_COHORTS[task]),
        "train_studies": len(train_items),
        "val_studies": len(val_items),
        "recipe": {k: v for k, v in recipe.as_dict().items() if k != "extra"},
        "schedule": schedule,
        "lr": recipe.pretrain_lr,
        "loss": loss,
        "best_epoch": result.best_epoch,
        "validation": result.validation,
        "history": result.history,
        "evaluation_ms_phantoms": ms_scores,
        "parameters": sum(p.numel() for p in network.parameters()),
        "file_kb": round(target.stat().st_size / 1024),
        "seconds": round(time.time() - started, 1),
        "patches_per_second": result.patches_per_second,
        "world_size": result.world_size,
        "rank_steps": result.rank_steps,
        "machine": machine() + (f", {result.world_size} processes" if result.world_size > 1 else ""),
        "generated": time.strftime("%Y-%m-%d"),
        "seed": seed,
        "resumed_from": Path(resume).name if resume else None,
        "initialised_from": Path(init_from).name if init_from else None,
    }
    (out_dir / f"{task}.json").write_text(json.dumps(card, indent=1) + "\n")
    write_model_card(task, card, out_dir / f"{task}.md")
    return card


#: Training and validation cohorts of the budgeted (domain-randomised) pretraining: subjects per cohort. MS
#: phantoms dominate; non-MS hyperintensities keep the disease-invariant part of the transfer method.
RANDOMISED_COHORTS = {
    "flair_lesion": {"ms": 60, "small_vessel": 4, "leukoencephalopathy": 4},
    "new_lesion": {"ms_relapse": 30, "glioma_change": 6},
    "enhancement": {"ms_active": 30, "metastasis": 8, "healthy": 8},
}
#: 8 validation studies were noisy (val F1 jumped 0.22-0.51 between epochs); 12 cost ~5 % more time.
VALIDATION_SUBJECTS = 12
VALIDATION_SHARE = 0.15
#: Sessions per subject: MS follow-ups bring new lesions, most of them enhancing (enhancement needs them).
RANDOMISED_SESSIONS = {"flair_lesion": 1, "new_lesion": 3, "enhancement": 2}


class StopFlag:
    """Set by SIGTERM/SIGINT: the training checkpoints at the next step and exits (resume with --resume)."""

    def __init__(self):
        self.set = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, *_):
        self.set = True

    def __call__(self) -> bool:
        return self.set


def _resumed(state_path: Path, resume: bool, recipe_dict: dict, manifest: dict) -> dict | None:
    """The checkpoint to resume from (with --resume), refused when another recipe or other data made it."""
    previous = None
    if resume and state_path.exists():
        previous = torch.load(state_path, map_location="cpu", weights_only=False)
        for name, mine, theirs in (("recipe", recipe_dict, previous["recipe"]),
                                   ("data manifest", manifest, previous["manifest"])):
            if json.dumps(mine, sort_keys=True, default=str) != json.dumps(theirs, sort_keys=True, default=str):
                raise SystemExit(f"--resume refused: the {name} of {state_path} differs from this run's; "
                                 "start a new --run-dir or check out the code that made it")
    return previous


def _finalised(previous: dict | None, run_dir: Path) -> FitResult:
    """A stopped run's best weights as the result of a finished fit (--finalise)."""
    if previous is None:
        raise SystemExit(f"--finalise needs a checkpoint in {run_dir}; there is none")
    result = FitResult(state=previous["best_state"], best_epoch=previous["best_epoch"],
                       validation=previous["best"], history=previous["history"],
                       patches_per_second=previous["patches"] / max(1e-9, previous["train_seconds"]),
                       rank_steps=[previous["step"]])
    print(json.dumps({"finalised_at_step": previous["step"], "of_planned": previous["total_steps"]}), flush=True)
    return result


def _tuned_choice(network: torch.nn.Module, states: list[dict], val_items: list[dict], recipe, device):
    """Of candidate weights, those whose tuned post-processing scores the best pooled validation F1: (weights,
    post-processing, scores). The post-processing of each is tuned on the validation studies."""
    from monai.data import CacheDataset
    from monai.transforms import Compose

    from .evaluate import tune_postprocessing
    from .transforms import preprocess

    val_studies = CacheDataset(val_items, transform=Compose(preprocess(recipe, True, device)), progress=False)
    best = None
    for index, state in enumerate(states):
        network.load_state_dict(state)
        network.eval()
        tuned, scores = tune_postprocessing(network, val_studies, recipe)
        print(json.dumps({"candidate": index, "tuned": tuned, "f1": round(scores["f1"], 4)}), flush=True)
        if best is None or scores["f1"] > best[2]["f1"]:
            best = (state, tuned, scores)
    return best


def validation_items(task: str, data: Path, seed: int, recipe) -> list[dict]:
    """The budgeted pretraining's validation studies (MS phantoms of seeds of their own, cached under ``data``)."""
    return randomised_items(data, "ms", VALIDATION_SUBJECTS, seed + 5000, recipe, RANDOMISED_SESSIONS[task])


def retune_published(task: str, run_dir: Path, seed: int, out_dir: Path) -> dict:
    """Re-tunes the stored post-processing (test-time mirroring, threshold, minimum lesion size) of published
    weights on their pretraining's validation studies, without training (``--retune``: after the tuning grid
    grows). The weights are rewritten with it, and their card's post-processing and validation figures."""
    target = out_dir / f"{task}.pt"
    meta = weights.load_metadata(target)
    recipe = from_checkpoint(RECIPES[task], meta)
    recipe = recipe if torch.cuda.is_available() else for_cpu_pretraining(recipe)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = lesion_unet(recipe)
    state = weights.load_state(target)
    _, tuned, scores = _tuned_choice(network, [state], validation_items(task, run_dir / "data", seed, recipe),
                                     recipe, device)
    recipe = replace(recipe, **tuned)
    weights.save_state(state, target, half=True, metadata={**meta, "recipe": recipe.as_dict(),
                                                           "postprocessing": postprocessing(recipe),
                                                           "validation": scores})
    card_path = out_dir / f"{task}.json"
    card = json.loads(card_path.read_text())
    before = card["postprocessing"]
    note = (f"post-processing re-tuned on the same validation studies on {time.strftime('%Y-%m-%d')} (`--retune`, "
            f"weights unchanged): before p > {before['threshold']}, >= {before['min_lesion_voxels']} voxels, "
            f"{mirroring(before)}, validation F1 {card['evaluation_ms_phantoms']['f1']:.3f}; now "
            f"{scores['f1']:.3f}")
    card.update({"postprocessing": tuned, "evaluation_ms_phantoms": scores,
                 "recipe": {k: v for k, v in recipe.as_dict().items() if k != "extra"},
                 "note": "; ".join(n for n in (card.get("note"), note) if n)})
    card_path.write_text(json.dumps(card, indent=1, default=str) + "\n")
    write_model_card(task, card, out_dir / f"{task}.md")
    return card


def pretrain_budgeted(task: str, budget_min: float, run_dir: Path, resume: bool, seed: int, out_dir: Path,
                      init_from: Path | None = None, finalise: bool = False, lr: float | None = None) -> dict:
    """Domain-randomised pretraining within a wall-clock budget, checkpointed and resumable (module docstring).

    ``lr`` replaces the recipe's peak learning rate (the start of the poly curve). A run that continues good
    weights on new data wants less than the from-scratch 1e-3: restarting at 1e-3 threw the enhancement U-Net far
    off its weights (2026-12-07: validation F1 0.94 after epoch 1, never regained in 65 minutes)."""
    recipe = RECIPES[task]
    recipe = recipe if torch.cuda.is_available() else for_cpu_pretraining(recipe)
    if lr is not None:
        recipe = replace(recipe, pretrain_lr=lr)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    data = run_dir / "data"
    train_items, val_items = [], []
    for i, (cohort, subjects) in enumerate(RANDOMISED_COHORTS[task].items()):
        train_items += randomised_items(data, cohort, subjects, seed + 10 * i, recipe, RANDOMISED_SESSIONS[task])
    val_items = validation_items(task, data, seed, recipe)
    manifest = {"cohorts": RANDOMISED_COHORTS[task], "seed": seed, "validation": VALIDATION_SUBJECTS,
                "train": len(train_items), "val": len(val_items)}
    recipe_dict = recipe.as_dict()
    state_path = run_dir / "checkpoint.pt"
    previous = _resumed(state_path, resume, recipe_dict, manifest)
    network = lesion_unet(recipe)
    if init_from and previous is None:
        network.load_state_dict(weights.transfer_state(weights.load_state(init_from), network.state_dict()))
    def plan(rate: float) -> int:
        """Steps that still fit the budget at the measured rate, VALIDATION_SHARE of the time left to validation."""
        remaining_s = budget_min * 60 - (time.time() - started)
        total = max(1, int((1 - VALIDATION_SHARE) * remaining_s * rate))
        print(json.dumps({"planned_steps": total, "steps_per_second": round(rate, 3)}), flush=True)
        return total

    def checkpoint(snapshot: dict) -> None:
        weights.save_atomic({**snapshot, "recipe": recipe_dict, "manifest": manifest}, state_path)

    if finalise:  # publish the best weights of a stopped run as they are (the rest of the curve is not run)
        result = _finalised(previous, run_dir)
    else:
        result = fit(recipe, network, train_items, val_items, device, lr=recipe.pretrain_lr, seed=seed,
                     plan_steps=plan, validation_share=VALIDATION_SHARE, resume=previous, checkpoint=checkpoint,
                     stop=StopFlag(),
                     progress=lambda u: print(json.dumps(u["history"][-1]), flush=True))
    if result.stopped:
        print(json.dumps({"stopped": True, "checkpoint": str(state_path), "resume": "--resume"}), flush=True)
        return {}
    # the last weights compete with the best epoch's: the best is picked on an EMA of F1 at a few fixed thresholds,
    # where a network late on its curve may still look worse than it is once its own post-processing is tuned
    # (2026-12-07: new_lesion's EMA-best, picked at p 0.5, lost to its last weights after tuning, 0.566 vs 0.596)
    last = (previous.get("model") if previous else None) if finalise else copy.deepcopy(network.state_dict())
    candidates = [result.state]
    if last and state_digest(last) != state_digest(result.state):  # the best epoch may be the last one
        candidates.append(last)
    result.state, tuned, tuned_scores = _tuned_choice(network, candidates, val_items, recipe, device)
    recipe = replace(recipe, **tuned)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{task}.pt"
    weights.save_state(result.state, target, half=True, metadata={
        "task": task, "source": "mslesion.pretrain --budget-min", "recipe": recipe.as_dict(),
        "postprocessing": postprocessing(recipe), "validation": tuned_scores})
    card = {
        "task": task, "cohorts": [f"{c} x{n} (randomised)" for c, n in RANDOMISED_COHORTS[task].items()],
        "train_studies": len(train_items), "val_studies": len(val_items),
        "recipe": {k: v for k, v in recipe.as_dict().items() if k != "extra"}, "schedule": "cpu-budget",
        "lr": recipe.pretrain_lr, "loss": recipe.loss, "best_epoch": result.best_epoch,
        "validation": result.validation, "history": result.history, "postprocessing": tuned,
        "evaluation_ms_phantoms": tuned_scores, "parameters": sum(p.numel() for p in network.parameters()),
        "file_kb": round(target.stat().st_size / 1024), "seconds": round(time.time() - started, 1),
        "patches_per_second": result.patches_per_second, "total_steps": sum(result.rank_steps),
        "budget_min": budget_min, "finalised_early": finalise,
        "world_size": result.world_size, "rank_steps": result.rank_steps, "machine": machine(),
        "generated": time.strftime("%Y-%m-%d"), "seed": seed, "resumed_from": None,
        "initialised_from": Path(init_from).name if init_from else None,
    }
    (out_dir / f"{task}.json").write_text(json.dumps(card, indent=1, default=str) + "\n")
    write_model_card(task, card, out_dir / f"{task}.md")
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(PRETRAINING_COHORTS))
    parser.add_argument("--subjects", type=int, default=4, help="training subjects per pretraining cohort")
    parser.add_argument("--eval-subjects", type=int, default=4, help="MS phantom subjects for the model card")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--schedule", choices=["cpu", "paper"], default="paper" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--loss", choices=["ce", "dice_ce"], default="dice_ce")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=weights.REPO_MODEL_DIR)
    parser.add_argument("--resume", nargs="?", type=Path, default=None, const=Path("checkpoint"),
                        help="continue from these weights (a longer schedule); with --run-dir, from its checkpoint")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from another task's weights (transfer; extra input channels start at zero)")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="domain-randomised pretraining planned to fit this many minutes from now (needs "
                        "--run-dir); re-planned after validations as the step rate changes; with --resume, the "
                        "minutes the resumed run may take")
    parser.add_argument("--run-dir", type=Path, default=None, help="cached cohorts and checkpoints of a budgeted run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy box)")
    parser.add_argument("--finalise", action="store_true",
                        help="publish the best weights of a stopped budgeted run from its checkpoint, as they are")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate of a budgeted run (default: the recipe's); less, e.g. 3e-4, when "
                        "--init-from weights that are already good")
    parser.add_argument("--retune", action="store_true",
                        help="re-tune the post-processing stored in --out's TASK weights on the validation studies "
                        "of --run-dir (no training)")
    args = parser.parse_args(argv)
    np.set_printoptions(precision=3)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.retune:
        if args.run_dir is None:
            parser.error("--retune needs --run-dir (where the validation studies are cached)")
        card = retune_published(args.task, args.run_dir, args.seed, args.out)
        print(json.dumps({k: card[k] for k in ("task", "postprocessing", "evaluation_ms_phantoms")}, default=str))
        return
    if args.budget_min:
        if args.run_dir is None:
            parser.error("--budget-min needs --run-dir (where the cohorts and checkpoints live)")
        resume = args.resume is not None or args.finalise or (args.run_dir / "checkpoint.pt").exists()
        card = pretrain_budgeted(args.task, args.budget_min, args.run_dir, resume, args.seed, args.out,
                                 args.init_from, args.finalise, args.lr)
        if card:
            print(json.dumps({k: card[k] for k in ("task", "best_epoch", "postprocessing", "evaluation_ms_phantoms",
                                                   "seconds")}, indent=1, default=str))
        return
    world = distributed.init_from_env()
    if world.distributed:
        distributed.rank_logging(world.rank, world.world_size)
    try:
        card = pretrain(args.task, args.subjects, args.epochs, args.schedule, args.seed, args.out, args.eval_subjects,
                        args.loss, args.resume, args.init_from)
    finally:
        distributed.teardown()
    if not card:
        return
    print(json.dumps({k: card[k] for k in ("task", "best_epoch", "validation", "evaluation_ms_phantoms", "seconds")},
                     indent=1))


if __name__ == "__main__":
    main()
