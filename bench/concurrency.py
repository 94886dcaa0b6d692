"""Concurrency benchmark: many clients on one real msapp server while a training runs.

    PYTHONPATH=lib .venv/bin/python -m bench.concurrency [--clients 8] [--requests 25] [--subjects 6] [--json out.json]

Writes a phantom MS cohort (FLAIR only, two subjects labelled so that training can start), starts the real server,
starts a training, then runs ``--clients`` concurrent clients, each making ``--requests`` mixed requests in a
shuffled order: infer flair_lesion on different images (MONAILabelClient, output=all as Slicer asks), save a label
(under a tag of its own, so that the last label each client saved can be checked byte for byte), next sample
(random strategy) and info. Prints the number of 5xx answers (must be 0) and of other failures, whether every saved
label is present and intact afterwards, whether the training was running throughout, latency p50/p95 per request
kind, and the machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

KINDS = ("infer", "save_label", "next_sample", "info")
WEIGHTS = {"infer": 3, "save_label": 3, "next_sample": 2, "info": 2}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


@dataclass
class Outcome:
    kind: str
    status: int  # HTTP status; 0 for a connection error
    seconds: float
    detail: str = ""


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    saved: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (image, tag) -> last label bytes sent
    lock: threading.Lock = field(default_factory=threading.Lock)


def plan(client: int, count: int, seed: int) -> list[str]:
    """A shuffled mix of request kinds in the WEIGHTS proportions (at least one save per client)."""
    rng = random.Random(seed * 1000 + client)
    pool = [k for k in KINDS for _ in range(WEIGHTS[k])]
    kinds = ["save_label"] + [rng.choice(pool) for _ in range(count - 1)]
    rng.shuffle(kinds)
    return kinds


def label_bytes(shape: tuple[int, ...], affine: np.ndarray, rng: random.Random) -> bytes:
    """A plausible correction: a few cubic lesions (value 1) on the image's own grid."""
    data = np.zeros(shape, np.uint8)
    for _ in range(rng.randint(1, 4)):
        centre = [rng.randint(s // 4, 3 * s // 4) for s in shape]
        r = rng.randint(2, 5)
        data[tuple(slice(c - r, c + r) for c in centre)] = 1
    image = nib.Nifti1Image(data, affine)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    return gzip.compress(image.to_bytes(), 1)


def status_of(error: Exception) -> tuple[int, str]:
    if isinstance(error, MONAILabelClientException):
        match = re.match(r"Status: (\d+);", str(error.msg))
        return (int(match[1]) if match else 0), str(error.msg)[:300]
    return 0, f"{type(error).__name__}: {error}"[:300]


def client_worker(url: str, index: int, kinds: list[str], images: list[str], geometry: dict, run: Run,
                  workdir: Path, seed: int) -> None:
    client = MONAILabelClient(url, tmpdir=str(workdir / f"client{index}"))
    (workdir / f"client{index}").mkdir(exist_ok=True)
    rng = random.Random(seed * 7919 + index)
    tag = f"client{index}"
    for n, kind in enumerate(kinds):
        image = images[(index + n) % len(images)]
        started = time.perf_counter()
        status, detail = 200, ""
        try:
            if kind == "infer":
                path, params = client.infer("flair_lesion", image, {})
                Path(path).unlink(missing_ok=True)
            elif kind == "save_label":
                shape, affine = geometry[image]
                content = label_bytes(shape, affine, rng)
                source = workdir / f"client{index}" / f"{image}.nii.gz"
                source.write_bytes(content)
                client.save_label(image, str(source), tag=tag)
                with run.lock:
                    run.saved[(image, tag)] = content
            elif kind == "next_sample":
                client.next_sample("random", {})
            else:
                client.info()
        except Exception as error:  # counted, never raised: the run reports every failure
            status, detail = status_of(error)
        with run.lock:
            run.outcomes.append(Outcome(kind, status, time.perf_counter() - started, detail))


def run_clients(url: str, clients: int, per_client: int, images: list[str], studies: Path, workdir: Path,
                seed: int = 0) -> Run:
    geometry = {}
    for image in images:
        img = nib.load(studies / f"{image}.nii.gz")
        geometry[image] = (tuple(img.shape), img.affine)
    run = Run()
    threads = [
        threading.Thread(target=client_worker,
                         args=(url, c, plan(c, per_client, seed), images, geometry, run, workdir, seed))
        for c in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return run


def check_saved(url: str, run: Run, workdir: Path) -> list[str]:
    """Every (image, tag) a client saved is in the index and its file is the last bytes that client sent."""
    problems = []
    objects = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    for (image, tag), content in sorted(run.saved.items()):
        if tag not in objects.get(image, {}).get("labels", {}):
            problems.append(f"{image} ({tag}) is not in the index")
            continue
        answer = requests.get(f"{url}/datastore/label", params={"label": image, "tag": tag}, timeout=60)
        if answer.status_code != 200:
            problems.append(f"{image} ({tag}) does not download: {answer.status_code}")
        elif answer.content != content:
            problems.append(f"{image} ({tag}) is not the last label saved")
    return problems


def summarize(run: Run) -> dict:
    by_kind = defaultdict(list)
    for outcome in run.outcomes:
        by_kind[outcome.kind].append(outcome)
    return {
        "requests": len(run.outcomes),
        "server_errors_5xx": sum(o.status >= 500 for o in run.outcomes),
        "other_failures": sum(o.status != 200 and o.status < 500 for o in run.outcomes),
        "failures": [f"{o.kind}: {o.status} {o.detail}" for o in run.outcomes if o.status != 200][:20],
        "latency_s": {
            kind: {
                "n": len(items),
                "p50": round(percentile([o.seconds for o in items], 0.5), 3),
                "p95": round(percentile([o.seconds for o in items], 0.95), 3),
                "max": round(max(o.seconds for o in items), 3),
            }
            for kind, items in sorted(by_kind.items())
        },
    }


def training_status(url: str) -> str | None:
    answer = requests.get(f"{url}/train/", timeout=30)
    return answer.json().get("status") if answer.ok else None


def main(argv: list[str] | None = None) -> dict:
    from mslesion.dev.serverproc import ServerProcess
    from mslesion.phantoms import PhantomOptions, write_cohort
    from mslesion.unet.pretrain import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--subjects", type=int, default=6, help="phantom subjects (FLAIR), two of them labelled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="msapp-concurrency-") as tmp:
        root = Path(tmp)
        studies = root / "studies"
        print(f"writing {args.subjects} phantom subjects ...", flush=True)
        write_cohort(studies, cohort="ms", subjects=args.subjects, seed=303, labelled=2 / args.subjects,
                     options=PhantomOptions(sequences=("FLAIR",)))
        images = sorted(p.name.removesuffix(".nii.gz") for p in studies.glob("*_FLAIR.nii.gz"))
        server = ServerProcess(studies, root / "model", root / "server.log",
                               env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
        try:
            # a long enough training to overlap the whole run; stopped at the end
            answer = requests.post(f"{server.url}/train/flair_lesion", json={"max_epochs": 50}, timeout=30)
            answer.raise_for_status()
            second = requests.post(f"{server.url}/train/flair_lesion", json={}, timeout=30)
            print(f"training started; a second training request answered {second.status_code}", flush=True)
            started = time.perf_counter()
            run = run_clients(server.url, args.clients, args.requests, images, studies, root, args.seed)
            wall = time.perf_counter() - started
            status_at_end = training_status(server.url)
            problems = check_saved(server.url, run, root)
            requests.delete(f"{server.url}/train/", timeout=60)
            result = {
                "clients": args.clients,
                "requests_per_client": args.requests,
                "wall_s": round(wall, 1),
                **summarize(run),
                "labels_saved": len(run.saved),
                "labels_missing_or_wrong": problems,
                "second_training_status": second.status_code,
                "training_status_at_end": status_at_end,
                "server_peak_memory_mb": round(server.peak_memory_mb()),
                "machine": machine(),
                "date": time.strftime("%Y-%m-%d"),
            }
        finally:
            server.stop()

    print(f"machine: {result['machine']}")
    print(f"{result['clients']} clients x {result['requests_per_client']} requests during a training "
          f"(status at the end: {result['training_status_at_end']}; second training request: "
          f"{result['second_training_status']}), {result['wall_s']} s wall")
    print(f"5xx answers: {result['server_errors_5xx']}   other failures: {result['other_failures']}")
    print(f"labels saved: {result['labels_saved']}, missing or not the last saved: {len(problems)}")
    for kind, lat in result["latency_s"].items():
        print(f"  {kind:12s} n={lat['n']:3d}  p50 {lat['p50']:7.3f} s  p95 {lat['p95']:7.3f} s  "
              f"max {lat['max']:7.3f} s")
    for failure in result["failures"]:
        print(f"  failure: {failure}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
