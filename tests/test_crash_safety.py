"""Crash safety: kill -9 never leaves a partial label, a partial index or a partial model where they are read.

Two kinds of test:
- kill loops without a server: a forked process publishes weights (or saves labels through the datastore) over
  and over and is killed with SIGKILL at random moments; after every kill the file loads and is the old or the
  new one. A control loop with a plain in-place ``torch.save`` shows that the same kills do break a file that is
  not written atomically, so the loop does reach the middle of writes.
- the real server, killed with ``kill -9`` (with its training subprocess) while a training runs and a label upload
  is in flight, then restarted on the same studies and model folders (tests/test_concurrency.py drives the same
  server kind with concurrent clients).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import select
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from mslesion import weights
from mslesion.dev.serverproc import ServerProcess
from mslesion.server.datastore import TMP_SUFFIX, ValidatingDatastore

# -- kill loops -------------------------------------------------------------------------------------------------------


def kill_loop(work, rounds: int, check, min_writes: int = 1, max_delay: float = 0.3, seed: int = 0):
    """Fork ``work(notify)`` (which loops forever, calling notify() after each completed write), SIGKILL it at a
    random moment after ``min_writes`` writes, call ``check(round)``; repeat. Returns check's answers."""
    rng = random.Random(seed)
    answers = []
    for round_ in range(rounds):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns into pytest
            os.close(read_end)
            try:
                work(lambda fd=write_end: os.write(fd, b"."))
            finally:
                os._exit(0)
        os.close(write_end)
        seen, deadline = 0, time.time() + 60
        while seen < min_writes and time.time() < deadline:
            ready, _, _ = select.select([read_end], [], [], 1)
            if ready:
                seen += len(os.read(read_end, 64))
        assert seen >= min_writes, "the child never finished a write"
        time.sleep(rng.uniform(0, max_delay))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        answers.append(check(round_))
    return answers


def big_state(value: float) -> dict:
    return {"w": torch.full((4_000_000,), float(value)), "b": torch.full((8,), float(value))}


@pytest.mark.slow
def test_publish_is_atomic_under_kill_9(tmp_path):
    """weights.publish killed at random moments: model.pt (and previous.pt) always load, each whole."""
    states = [big_state(v) for v in (1, 2, 3)]
    weights.publish(states[0], tmp_path, "t")
    target, previous = weights.published_weights(tmp_path, "t"), weights.previous_weights(tmp_path, "t")

    def work(notify):
        i = 0
        while True:
            i += 1
            weights.publish(states[i % 3], tmp_path, "t")
            notify()

    def check(_):
        mid_write = any(p.name.endswith(".tmp") or p.name.endswith(".copy") for p in target.parent.iterdir())
        for path in (target, previous):
            loaded = weights.load_state(path)  # raises on a partial file
            value = float(loaded["w"][0])
            assert value in (1.0, 2.0, 3.0) and bool((loaded["w"] == value).all())
        for leftover in target.parent.glob(".*"):
            leftover.unlink()
        return mid_write

    hits = kill_loop(work, rounds=10, check=check, max_delay=0.4)
    assert any(hits), "no kill landed during a write; the loop proved nothing"


@pytest.mark.slow
def test_control_an_in_place_save_is_broken_by_the_same_kills(tmp_path):
    """The same kill loop against a plain torch.save into model.pt: some kill leaves a file that does not load."""
    target = tmp_path / "model.pt"
    state = big_state(1)
    torch.save({"model": state}, target)

    def work(notify):
        while True:
            torch.save({"model": state}, target)
            notify()

    def check(_):
        try:
            weights.load_state(target)
            return False
        except Exception:
            torch.save({"model": state}, target)
            return True

    broken = []
    for seed in range(4):
        broken += kill_loop(work, rounds=10, check=check, max_delay=0.4, seed=seed)
        if any(broken):
            break
    assert any(broken), "40 kills never broke an in-place save: the kill loop is not reaching writes"


def label_nii(shape, seed) -> bytes:
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) < 0.3).astype(np.uint8)
    return nib.Nifti1Image(data, np.eye(4)).to_bytes()


@pytest.mark.slow
def test_label_save_is_atomic_under_kill_9(tmp_path):
    """ValidatingDatastore.save_label killed at random moments: after a restart the index parses, lists only labels
    that exist and load, and the label is exactly the old or the new one (temp files never count as labels)."""
    studies = tmp_path / "studies"
    studies.mkdir()
    shape = (160, 160, 120)
    image = np.random.default_rng(0).integers(1, 1000, size=shape).astype(np.int16)
    nib.save(nib.Nifti1Image(image, np.eye(4)), studies / "sub-01_ses-01_FLAIR.nii.gz")
    versions = [label_nii(shape, seed) for seed in (1, 2)]
    sources = []
    for i, raw in enumerate(versions):
        sources.append(tmp_path / f"v{i}.nii")  # uncompressed: the datastore gzips it while writing
        sources[-1].write_bytes(raw)
    store = ValidatingDatastore(str(studies), extensions=["*.nii.gz", "*.nii"], auto_reload=False)
    store.save_label("sub-01_ses-01_FLAIR", str(sources[0]), "final", {})
    label_file = studies / "labels" / "final" / "sub-01_ses-01_FLAIR.nii.gz"

    def work(notify):
        child = ValidatingDatastore(str(studies), extensions=["*.nii.gz", "*.nii"], auto_reload=False)
        i = 0
        while True:
            i += 1
            child.save_label("sub-01_ses-01_FLAIR", str(sources[i % 2]), "final", {"round": i})
            notify()

    def check(_):
        temps = [p for p in studies.rglob(f"*{TMP_SUFFIX}")]
        restarted = ValidatingDatastore(str(studies), extensions=["*.nii.gz", "*.nii"], auto_reload=False)
        assert restarted.inconsistencies() == []
        assert restarted.get_labeled_images() == ["sub-01_ses-01_FLAIR"]
        assert not list(studies.rglob(f"*{TMP_SUFFIX}")), "stale temp files were not removed at start-up"
        assert not list(studies.glob("datastore_v2.json.unreadable-*")), "the index was written partially"
        assert gzip.decompress(label_file.read_bytes()) in versions
        assert sorted(p.name for p in label_file.parent.iterdir()) == [label_file.name]
        return bool(temps)

    hits = kill_loop(work, rounds=8, check=check, max_delay=0.4)
    print(f"{sum(hits)} of {len(hits)} kills landed during a label write")


def test_an_unreadable_index_is_set_aside_and_rebuilt_from_the_files(tmp_path):
    """An index a stock server left half-written does not stop the server: labels are found again from files."""
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    data = np.random.default_rng(0).integers(1, 100, size=(16, 16, 16)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), studies / "sub-01_ses-01_FLAIR.nii.gz")
    nib.save(nib.Nifti1Image((data > 50).astype(np.uint8), np.eye(4)),
             studies / "labels" / "final" / "sub-01_ses-01_FLAIR.nii.gz")
    (studies / "datastore_v2.json").write_text('{"name": "new-dataset", "objects": {"sub-01_ses-01_FL')
    store = ValidatingDatastore(str(studies), extensions=["*.nii.gz", "*.nii"], auto_reload=False)
    assert store.get_labeled_images() == ["sub-01_ses-01_FLAIR"] and store.inconsistencies() == []
    assert len(list(studies.glob("datastore_v2.json.unreadable-*"))) == 1


# -- the real server: concurrent clients during a training, then kill -9 and restart --------------------------------


@dataclass
class Scenario:
    work: Path
    studies: Path
    model_dir: Path
    server: ServerProcess
    old_weights: bytes
    saved: dict = field(default_factory=dict)  # label file path -> bytes, to compare after the restart
    env: dict = field(default_factory=lambda: {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})


@pytest.fixture(scope="module")
def scenario(phantom_root, tmp_path_factory):
    """The real server on a copy of the phantoms, with published weights (the "old" ones), two labelled studies
    and a training running."""
    work = tmp_path_factory.mktemp("crash")
    studies, model_dir = work / "studies", work / "model"
    shutil.copytree(phantom_root / "studies", studies)
    old = weights.publish(weights.load_state(weights.default_weights("flair_lesion")), model_dir, "flair_lesion")
    s = Scenario(work, studies, model_dir, None, old.read_bytes())
    s.server = ServerProcess(studies, model_dir, work / "server-1.log", env=s.env)
    try:
        with (phantom_root / "truth" / "sub-02_ses-01_FLAIR.nii.gz").open("rb") as f:
            answer = requests.put(f"{s.server.url}/datastore/label", params={"image": "sub-02_ses-01_FLAIR"},
                                  files={"label": ("l.nii.gz", f)}, timeout=120)
        assert answer.status_code == 200, answer.text
        answer = requests.post(f"{s.server.url}/train/flair_lesion", json={"max_epochs": 3, "patches_per_study": 2},
                               timeout=30)
        assert answer.status_code == 200, answer.text
        yield s
    finally:
        s.server.stop()


@pytest.mark.server
@pytest.mark.slow
def test_concurrent_clients_during_a_training(scenario):
    """4 clients x 5 mixed requests (infer, save label, next sample, info) while a training runs: no 5xx, no
    failure at all, and every label a client saved is in the index and is the last one it sent."""
    from bench.concurrency import check_saved, run_clients, summarize, training_status

    url = scenario.server.url
    assert training_status(url) in ("SUBMITTED", "RUNNING")
    images = sorted(p.name.removesuffix(".nii.gz") for p in scenario.studies.glob("*_FLAIR.nii.gz"))
    run = run_clients(url, clients=4, per_client=5, images=images, studies=scenario.studies,
                      workdir=scenario.work, seed=1)
    summary = summarize(run)
    print(json.dumps(summary["latency_s"]))
    assert summary["server_errors_5xx"] == 0 and summary["other_failures"] == 0, summary["failures"]
    assert {o.kind for o in run.outcomes} == {"infer", "save_label", "next_sample", "info"}
    assert run.saved and check_saved(url, run, scenario.work) == []
    assert training_status(url) == "RUNNING", "the training ended before the clients did: no overlap was tested"
    for path in (scenario.studies / "labels").rglob("*.nii.gz"):
        scenario.saved[path] = path.read_bytes()


@pytest.mark.server
@pytest.mark.slow
def test_kill_9_during_training_and_a_label_upload_then_restart(scenario, phantom_root):
    s = scenario
    stats = s.model_dir / "flair_lesion" / "train_stats.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (stats.exists() and "RUNNING" in stats.read_text()):
        time.sleep(0.5)
    assert stats.exists(), "training never started"
    labels = s.studies / "labels" / "final"
    if not s.saved:  # run on its own
        s.saved = {p: p.read_bytes() for p in (s.studies / "labels").rglob("*.nii.gz")}
    assert {"sub-01_ses-01_FLAIR.nii.gz", "sub-02_ses-01_FLAIR.nii.gz"} <= {p.name for p in labels.iterdir()}

    # a label upload in flight when the power goes
    sent = (phantom_root / "truth" / "sub-03_ses-01_FLAIR.nii.gz").read_bytes()

    def upload():
        try:
            requests.put(f"{s.server.url}/datastore/label", params={"image": "sub-03_ses-01_FLAIR"},
                         files={"label": ("l.nii.gz", sent)}, timeout=120)
        except requests.RequestException:
            pass

    thread = threading.Thread(target=upload)
    thread.start()
    time.sleep(random.Random(7).uniform(0.05, 0.5))
    s.server.kill()
    thread.join(timeout=60)

    restarted = ServerProcess(s.studies, s.model_dir, s.work / "server-2.log", env=s.env)
    try:
        url = restarted.url
        index = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
        listed = {(k, tag) for k, v in index.items() for tag in v["labels"]}
        on_disk = {(p.name.removesuffix(".nii.gz"), p.parent.name) for p in (s.studies / "labels").rglob("*")
                   if p.is_file()}
        assert listed == on_disk, "the index and the label files disagree"
        assert not [p for p in s.studies.rglob("*") if p.name.endswith(TMP_SUFFIX)], "temp files left after restart"
        for path, content in s.saved.items():
            assert path.read_bytes() == content, f"{path.name} ({path.parent.name}) changed"
        if (labels / "sub-03_ses-01_FLAIR.nii.gz").exists():  # the upload finished before the kill: then it is whole
            assert (labels / "sub-03_ses-01_FLAIR.nii.gz").read_bytes() == sent
        for image_id, tag in sorted(listed):  # every listed label downloads and loads on its image's grid
            answer = requests.get(f"{url}/datastore/label", params={"label": image_id, "tag": tag}, timeout=60)
            assert answer.status_code == 200
            path = s.work / f"download-{image_id}-{tag}.nii.gz"
            path.write_bytes(answer.content)
            assert nib.load(path).get_fdata().shape == nib.load(s.studies / f"{image_id}.nii.gz").shape

        published = s.model_dir / "flair_lesion" / "model.pt"
        weights.load_state(published)  # old or new, never partial
        assert published.read_bytes() == s.old_weights or "best_epoch" in weights.load_metadata(published)
        assert requests.get(f"{url}/train/", timeout=30).status_code == 404, "the killed training came back"
        answer = requests.post(f"{url}/infer/flair_lesion", params={"image": "sub-03_ses-01_FLAIR", "output": "json"},
                               timeout=300)
        assert answer.status_code == 200 and answer.json()["weights"] == "model.pt"
    finally:
        restarted.stop()
