"""One latency/throughput harness for every msapp task, through the real server.

    PYTHONPATH=lib .venv/bin/python -m bench.latency [--tasks flair_lesion new_lesion ...] [--runs 8]
        [--device cuda|cpu] [--no-train] [--train-schedule auto|paper|cpu] [--studies DIR] [--json out.json]
    PYTHONPATH=lib .venv/bin/python -m bench.latency --compare before.json after.json

Starts ``monailabel start_server`` on phantom studies (one MS subject, two sessions, all four sequences; or a
copy of ``--studies``), and prints per task: the REST round trip (median and p95 of ``--runs`` after one
warm-up call that loads the network), the medians of the server's own stage timings (pre, infer, post, write,
total, and registration for new_lesion), the server's peak resident memory during that task's calls (VmHWM,
reset before each task), and the peak GPU memory the server reports (``gpu_peak_mb``) when it runs on CUDA.
Then saves two ground-truth FLAIR labels and times a one-epoch fine-tuning of flair_lesion through
POST /train: patches per second as the trainer reports it, with the patch size and schedule beside it.
Every figure carries the machine (CPU model, cores, GPU) and the load average it was measured under.
``--compare`` prints two saved runs side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mslesion.dev.serverproc import ServerProcess

STAGES = ("pre", "infer", "post", "write", "total")


@dataclass(frozen=True)
class TaskCase:
    """Which image a task is timed on, and the params it is sent."""

    task: str
    image: str
    params: dict = field(default_factory=dict)


SUBJECT = "sub-01"
CASES = {
    "flair_lesion": TaskCase("flair_lesion", f"{SUBJECT}_ses-01_FLAIR"),
    "new_lesion": TaskCase("new_lesion", f"{SUBJECT}_ses-02_FLAIR"),
    "enhancement": TaskCase("enhancement", f"{SUBJECT}_ses-01_ce-gadolinium_T1w"),
    # the full pipeline: flair_lesion's mask, then the slice classifier (a saved label would skip the U-Net)
    "enhancement_prediction": TaskCase("enhancement_prediction", f"{SUBJECT}_ses-01_FLAIR", {"lesion_mask": "predict"}),
}
TRAIN_LABELS = (f"{SUBJECT}_ses-01_FLAIR", f"{SUBJECT}_ses-02_FLAIR")  # one to train on, one to validate with


def machine() -> str:
    """CPU model and cores, and the GPU when there is one."""
    from mslesion.unet.pretrain import machine as describe

    return describe()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation between the few runs a benchmark makes)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def reset_peak_memory(pid: int) -> bool:
    """Resets a process's VmHWM to its current RSS (Linux >= 4.0), so the next peak is this task's own."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


SEQUENCES = {
    "flair_lesion": ("FLAIR",),
    "new_lesion": ("FLAIR",),
    "enhancement": ("ce-gadolinium_T1w", "T1w"),
    "enhancement_prediction": ("FLAIR", "T1w", "T2w"),
}


def write_phantom_studies(studies: Path, truth: Path, tasks: list[str], train: bool) -> None:
    """One MS phantom subject with the sequences the tasks read; two sessions for new_lesion and training."""
    from mslesion.phantoms import PhantomOptions, write_cohort

    wanted = {s for task in tasks for s in SEQUENCES[task]} | ({"FLAIR"} if train else set())
    sequences = tuple(s for s in ("FLAIR", "T1w", "T2w", "ce-gadolinium_T1w") if s in wanted)
    sessions = 2 if train or "new_lesion" in tasks else 1
    write_cohort(studies, cohort="ms", subjects=1, sessions=sessions, seed=101, labelled=0.0, truth_dir=truth,
                 options=PhantomOptions(sequences=sequences))


def infer(client, task: str, image: str, params: dict) -> dict:
    """One infer call; the label file the client saved is removed (only the answer's params are kept)."""
    path, answer = client.infer(task, image, params)
    if isinstance(path, str) and os.path.isfile(path):
        os.remove(path)
    return answer


def time_task(client, server: ServerProcess, case: TaskCase, runs: int, device: str | None) -> dict:
    """Round trip and stage timings of ``runs`` calls of one task, after a warm-up call."""
    params = dict(case.params, **({"device": device} if device else {}))
    infer(client, case.task, case.image, params)  # warm-up: loads the network (and CUDA)
    reset = reset_peak_memory(server.process.pid)
    totals: list[float] = []
    stages: dict[str, list[float]] = {k: [] for k in STAGES}
    registration: list[float] = []
    gpu_peaks: list[float] = []
    answered_device = None
    for _ in range(runs):
        started = time.perf_counter()
        answer = infer(client, case.task, case.image, params)
        totals.append(time.perf_counter() - started)
        for key in STAGES:
            stages[key].append(float(answer["latencies"][key]))
        if isinstance(answer.get("registration"), dict):
            registration.append(float(answer["registration"]["seconds"]))
        if answer.get("gpu_peak_mb") is not None:
            gpu_peaks.append(float(answer["gpu_peak_mb"]))
        answered_device = answer.get("device")
    out = {
        "image": case.image,
        "params": params,
        "device": answered_device,
        "runs": runs,
        "round_trip_median_s": round(statistics.median(totals), 3),
        "round_trip_p95_s": round(percentile(totals, 0.95), 3),
        "round_trip_s": [round(t, 3) for t in totals],
        "server_stage_median_s": {k: round(statistics.median(v), 3) for k, v in stages.items()},
        "server_peak_rss_mb": round(server.peak_memory_mb()),
        "peak_rss_scope": "this task's calls" if reset else "whole server lifetime (clear_refs unavailable)",
        "gpu_peak_mb": round(max(gpu_peaks)) if gpu_peaks else None,
    }
    if registration:
        out["registration_median_s"] = round(statistics.median(registration), 3)
    return out


def time_training(client, server: ServerProcess, truth: Path, schedule: str, device: str | None,
                  epochs: int, patches_per_study: int | None) -> dict:
    """Saves two ground-truth FLAIR labels, runs a short flair_lesion fine-tuning, returns its throughput."""
    for image_id in TRAIN_LABELS:
        client.save_label(image_id, str(truth / f"{image_id}.nii.gz"), tag="final")
    params: dict = {"max_epochs": epochs, "schedule": schedule}
    if patches_per_study:
        params["patches_per_study"] = patches_per_study
    if device:
        params["device"] = device
    started = time.perf_counter()
    client.train_start("flair_lesion", dict(params))  # the client adds its own keys to the dict it gets
    status = server.wait_for_training()
    seconds = time.perf_counter() - started
    stats = client.info().get("train_stats", {}).get("flair_lesion", {})
    if status.get("status") != "DONE" or stats.get("status") != "PUBLISHED":
        return {"error": f"training ended {status.get('status')}: {status.get('details', [])[-5:]}"}
    recipe = stats.get("recipe", {})
    patches = recipe.get("patches_per_study", 0) * recipe.get("augmentations", 1) * len(stats["train_studies"])
    return {
        "task": "flair_lesion",
        "params": params,
        "device": stats.get("device"),
        "patch": recipe.get("patch"),
        "batch_size": recipe.get("batch_size"),
        "patches_per_epoch": patches,
        "epochs": recipe.get("epochs"),
        "patches_per_second": stats.get("patches_per_second"),
        "trainer_seconds": stats.get("seconds"),
        "request_to_done_s": round(seconds, 1),
    }


def run_benchmark(root: Path, tasks: list[str], runs: int, device: str | None = None, train: bool = True,
                  schedule: str = "auto", epochs: int = 1, patches_per_study: int | None = None,
                  studies: Path | None = None, truth: Path | None = None, conf: dict | None = None,
                  env: dict | None = None) -> dict:
    """Serve a copy of the studies, time each task, then (optionally) a short fine-tuning."""
    served = root / "studies"
    if studies:
        shutil.copytree(studies, served)
    else:
        truth = root / "truth"
        write_phantom_studies(served, truth, tasks, train)
    where = machine()
    report: dict = {"machine": where, "date": time.strftime("%Y-%m-%d %H:%M"), "runs": runs, "tasks": {}}
    server = ServerProcess(served, root / "model", root / "server.log", conf=conf,
                           env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false", **(env or {})})
    try:
        from monailabel.client import MONAILabelClient

        client = MONAILabelClient(server.url)
        for task in tasks:
            load = load_average()
            result = time_task(client, server, CASES[task], runs, device)
            report["tasks"][task] = {**result, "machine": where, "load_average_before": load,
                                     "load_average_after": load_average()}
            print(f"{task}: {summary_line(report['tasks'][task])}", flush=True)
        if train and truth is not None:
            load = load_average()
            report["training"] = {**time_training(client, server, truth, schedule, device, epochs, patches_per_study),
                                  "machine": where, "load_average_before": load, "load_average_after": load_average()}
            print(f"training: {json.dumps(report['training'])}", flush=True)
    finally:
        server.stop()
    return report


def summary_line(entry: dict) -> str:
    stages = entry["server_stage_median_s"]
    gpu = f", GPU peak {entry['gpu_peak_mb']} MB" if entry.get("gpu_peak_mb") is not None else ""
    return (f"round trip median {entry['round_trip_median_s']} s, p95 {entry['round_trip_p95_s']} s; server "
            + " ".join(f"{k} {stages[k]}" for k in STAGES)
            + f"; peak RSS {entry['server_peak_rss_mb']} MB{gpu} ({entry['device']}, {entry['runs']} runs)")


def compare(before: dict, after: dict) -> str:
    """Two saved runs side by side: per task round trip and stage medians, and training throughput."""
    lines = [f"A: {before.get('machine')} ({before.get('date')})", f"B: {after.get('machine')} ({after.get('date')})",
             f"{'task':<24}{'figure':<18}{'A':>10}{'B':>10}{'B/A':>8}"]

    def row(task: str, name: str, a, b) -> None:
        ratio = f"{b / a:.2f}" if isinstance(a, int | float) and isinstance(b, int | float) and a else "-"
        lines.append(f"{task:<24}{name:<18}{str(a):>10}{str(b):>10}{ratio:>8}")

    for task in sorted(set(before.get("tasks", {})) | set(after.get("tasks", {}))):
        a, b = before.get("tasks", {}).get(task, {}), after.get("tasks", {}).get(task, {})
        row(task, "round trip med", a.get("round_trip_median_s"), b.get("round_trip_median_s"))
        row(task, "round trip p95", a.get("round_trip_p95_s"), b.get("round_trip_p95_s"))
        for stage in STAGES:
            a_stage, b_stage = a.get("server_stage_median_s", {}), b.get("server_stage_median_s", {})
            row(task, stage, a_stage.get(stage), b_stage.get(stage))
        row(task, "peak RSS MB", a.get("server_peak_rss_mb"), b.get("server_peak_rss_mb"))
        if a.get("gpu_peak_mb") is not None or b.get("gpu_peak_mb") is not None:
            row(task, "GPU peak MB", a.get("gpu_peak_mb"), b.get("gpu_peak_mb"))
    a, b = before.get("training", {}), after.get("training", {})
    if a or b:
        row("training", "patches/s", a.get("patches_per_second"), b.get("patches_per_second"))
    return "\n".join(lines)


@contextlib.contextmanager
def working_directory(keep: Path | None, prefix: str):
    """``keep`` (created, left in place) or a temporary directory removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--device", default=None, help="infer/train device sent to the server (default: its own)")
    parser.add_argument("--no-train", action="store_true", help="skip the fine-tuning throughput run")
    parser.add_argument("--train-schedule", default="auto", choices=("auto", "paper", "cpu"))
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--train-patches", type=int, default=None, help="patches_per_study (default: the schedule's)")
    parser.add_argument("--studies", type=Path, default=None,
                        help="serve a copy of this folder (images named as in CASES) instead of fresh phantoms")
    parser.add_argument("--truth", type=Path, default=None,
                        help="with --studies: the FLAIR labels to save before the fine-tuning run (else no training)")
    parser.add_argument("--write-studies", type=Path, metavar="DIR",
                        help="only write the phantom studies (DIR/studies, DIR/truth) for later --studies/--truth runs")
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="server --conf option, e.g. --conf models flair_lesion")
    parser.add_argument("--env", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="server environment variable, e.g. --env MSAPP_STUDY_CACHE_MB 0")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep studies and server log here")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A_JSON", "B_JSON"))
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(*(json.loads(p.read_text()) for p in args.compare)))
        return
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.write_studies:
        write_phantom_studies(args.write_studies / "studies", args.write_studies / "truth", list(CASES), train=True)
        return
    with working_directory(args.workdir, "bench-latency-") as root:
        report = run_benchmark(root, args.tasks, args.runs, device=args.device, train=not args.no_train,
                               schedule=args.train_schedule, epochs=args.train_epochs,
                               patches_per_study=args.train_patches, studies=args.studies, truth=args.truth,
                               conf=dict(args.conf),
                               env=dict(args.env))
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
