"""Produces the default weights in model/ from the project's own phantom cohorts (nothing is downloaded).

    python -m mslesion.pretrain flair_lesion|new_lesion|enhancement [--subjects 4] [--epochs 12] [--schedule cpu|paper]
    torchrun --nproc_per_node=N -m mslesion.pretrain ...   (data parallel on N GPUs; docs/distributed.md)

Each default is trained on non-MS pathology, as the transfer-learning method prescribes, with the best epoch
picked on held-out studies of those same cohorts, then evaluated on MS phantoms it never saw:
flair_lesion on FLAIR hyperintensities (glioma-like infiltration, confluent leukoencephalopathy, punctate
small-vessel lesions), new_lesion on longitudinal glioma change (growth and new satellites between two visits),
enhancement on enhancing metastases with oedema. The weights are stored in fp16 next to a model card that
records how they were made and what they score.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from . import distributed, weights
from .evaluate import evaluate_on_cohort
from .networks import lesion_unet
from .phantoms import PhantomOptions, write_cohort
from .recipes import RECIPES, Recipe, for_cpu
from .studies import BASELINE, earlier_session, parse_image_id
from .training import fit
from .transforms import IMAGE, LABEL

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


def cohort_items(root: Path, cohort: str, subjects: int, seed: int, first_subject: int, recipe: Recipe) -> list[dict]:
    """Writes a phantom cohort (only the sequences the recipe reads) and returns its training items.

    A longitudinal recipe gets two sessions per subject and one item per follow-up, with its baseline.
    """
    folder = root / cohort
    options = PhantomOptions(sequences=recipe.inputs)
    paths = write_cohort(
        folder, cohort=cohort, subjects=subjects, sessions=2 if recipe.longitudinal else 1, seed=seed, labelled=1.0,
        options=options, first_subject=first_subject,
    )
    store = SimpleNamespace(list_images=lambda: [Path(p).name.split(".nii")[0] for p in paths],
                            get_image_uri=lambda image_id: str(folder / f"{image_id}.nii.gz"))
    items = []
    for path in sorted(paths):
        name = Path(path).name
        ref = parse_image_id(name)
        if ref is None or ref.suffix != recipe.inputs[0]:
            continue
        item = {IMAGE: str(path), LABEL: str(folder / "labels" / "final" / name), "id": f"{cohort}/{name}"}
        for companion in recipe.inputs[1:]:
            item[companion] = store.get_image_uri(ref.companion(companion).image_id)
        if recipe.longitudinal:
            previous = earlier_session(store, ref)
            if previous is None:
                continue
            item[BASELINE] = store.get_image_uri(previous.image_id)
        items.append(item)
    return items


def write_model_card(task: str, card: dict, path: Path) -> None:
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
    parser.add_argument("--resume", type=Path, default=None, help="continue from these weights (a longer schedule)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from another task's weights (transfer; extra input channels start at zero)")
    args = parser.parse_args(argv)
    np.set_printoptions(precision=3)
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
