"""enhancement_prediction (Narayana et al. 2020): slice geometry, networks, ROC, the task, and the shipped weights."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from mslesion import weights
from mslesion.enhancement_prediction.networks import (
    EnhancementPredictor,
    ParticipantNet,
    SliceClassifier,
    block_starts,
    load_imagenet_features,
    vgg16_features,
)
from mslesion.enhancement_prediction.pretrain import weights_metadata
from mslesion.enhancement_prediction.recipe import ENHANCEMENT_PREDICTION, PredictionRecipe
from mslesion.enhancement_prediction.roc import figures, youden_threshold
from mslesion.enhancement_prediction.slices import (
    CHANNELS,
    ENHANCING,
    HEAD_CENTRE,
    REGION,
    SliceStackd,
    dilate,
    enhancing_slices,
    most_masked_slices,
)
from mslesion.enhancement_prediction.training import balanced_batches
from mslesion.studies import StudyError

SMALL = replace(ENHANCEMENT_PREDICTION, n_slices=6, slice_size=32, fov_mm=64.0)


# --- slice geometry -------------------------------------------------------------------------------------------


def test_lesion_mask_is_dilated_by_a_ball_of_three_voxels():
    mask = np.zeros((15, 15, 15), dtype=bool)
    mask[7, 7, 7] = True
    grown = dilate(mask, 3)
    assert grown.sum() == 123  # integer points with x^2 + y^2 + z^2 <= 9
    assert grown[10, 7, 7] and grown[9, 9, 8]          # 3 voxels away; (2, 2, 1) is exactly 3
    assert not grown[11, 7, 7] and not grown[9, 9, 9]  # 4 away; (2, 2, 2) is 3.46
    edge = np.zeros((8, 8, 8), dtype=bool)
    edge[0, 0, 0] = True  # at the border: clipped, no wrap-around
    assert dilate(edge, 3).sum() == sum(1 for x in range(4) for y in range(4) for z in range(4)
                                        if x * x + y * y + z * z <= 9)


def test_a_fixed_number_of_slices_most_masked_first_zero_padded():
    region = np.zeros((4, 4, 10), dtype=bool)
    for k, count in {1: 3, 4: 8, 5: 1, 8: 5}.items():
        region.reshape(16, 10)[:count, k] = True
    assert most_masked_slices(region, 3).tolist() == [1, 4, 8]           # the 3 most masked, in slice order
    assert most_masked_slices(region, 6).tolist() == [1, 4, 5, 8, -1, -1]  # unmasked slices are never taken


def test_an_enhancing_slice_needs_a_region_of_seven_voxels():
    label = np.zeros((20, 20, 4), dtype=bool)
    label[2:4, 2:5, 0] = True                 # 6 voxels
    label[10, 10:16, 0] = True                # 6 more, apart: 12 in the slice, no region of 7
    label[2:4, 2:5, 1] = True
    label[4, 5, 1] = True                     # diagonal neighbour: one 8-connected region of 7
    label[5:12, 5, 2] = True                  # a line of 7
    assert enhancing_slices(label, 7).tolist() == [False, True, True, False]


def synthetic_study(shape=(48, 48, 30)) -> dict:
    """Channels with a distinct value per sequence, one lesion, an enhancing label on some slices."""
    d = {key: np.full((1, *shape), value, dtype=np.float32) for key, value in zip(CHANNELS, (1.0, 2.0, 3.0),
                                                                                 strict=True)}
    region = np.zeros(shape, dtype=bool)
    region[20:28, 20:28, 6:18] = True          # 1 mm slices 6..17 = 3 mm slices 2..5
    d[REGION] = region
    enhancing = np.zeros((1, *shape), dtype=np.uint8)
    enhancing[0, 21:25, 21:25, 9] = 1           # 16 voxels on 1 mm slice 9 -> 3 mm slice 3
    d[ENHANCING] = enhancing
    d[HEAD_CENTRE] = (23.5, 23.5)
    return d


def test_slice_stack_shape_masking_and_truth():
    out = SliceStackd(SMALL)(synthetic_study())
    stack = out["slices"]
    assert stack.shape == (6, 3, 32, 32) and stack.dtype == np.float32
    assert out["slab_index"].tolist() == [2, 3, 4, 5, -1, -1]
    assert out["slice_index"].tolist() == [7, 10, 13, 16, -1, -1]       # middle 1 mm slice of each 3 mm slice
    assert out["slice_truth"].tolist() == [0, 1, 0, 0, 0, 0]
    assert out["study_truth"] == 1
    assert not stack[4:].any()                                         # padding slices are zero
    for c, value in enumerate((1.0, 2.0, 3.0)):                       # channel order T1w, T2w, FLAIR
        assert stack[0, c].max() == pytest.approx(value)
    # 64 mm field of view around the head centre resized to 32 pixels: the centred 8 mm lesion box is 4x4 pixels
    inside = stack[0, 0] > 0
    assert inside.sum() == 16 and inside[14:18, 14:18].all()


def test_a_study_without_lesions_gives_an_all_zero_stack():
    d = synthetic_study()
    d[REGION] = np.zeros_like(d[REGION])
    d[ENHANCING] = np.zeros_like(d[ENHANCING])
    out = SliceStackd(SMALL)(d)
    assert not out["slices"].any() and (out["slice_index"] == -1).all() and out["study_truth"] == 0


# --- networks ---------------------------------------------------------------------------------------------------


def test_width_one_is_torchvision_vgg16_features():
    ours, reference = vgg16_features(1.0), torchvision.models.vgg16(weights=None, init_weights=False).features
    assert [type(m) for m in ours] == [type(m) for m in reference]
    assert [p.shape for p in ours.parameters()] == [p.shape for p in reference.parameters()]
    assert [(m.kernel_size, m.padding) for m in ours if isinstance(m, nn.Conv2d)] == \
        [(m.kernel_size, m.padding) for m in reference if isinstance(m, nn.Conv2d)]


def test_imagenet_weights_load_from_a_local_torchvision_file(tmp_path):
    reference = torchvision.models.vgg16(weights=None, init_weights=False).features
    path = tmp_path / "vgg16-local.pth"
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, path)
    ours = vgg16_features(1.0)
    load_imagenet_features(ours, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_small_width_scales_every_block_and_fine_tunes_the_last():
    classifier = SliceClassifier(replace(ENHANCEMENT_PREDICTION, width=1 / 16))
    convs = [m.out_channels for m in classifier.features if isinstance(m, nn.Conv2d)]
    assert convs == [4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32]
    assert len(block_starts(classifier.features)) == 5
    assert sum(isinstance(m, nn.Conv2d) for m in classifier.last_block()) == 3
    size = ENHANCEMENT_PREDICTION.slice_size
    assert classifier(torch.zeros(2, 3, size, size)).shape == (2,)


def test_participant_net_maps_slice_scores_through_four_hidden_units():
    recipe = replace(ENHANCEMENT_PREDICTION, n_slices=32)
    net = ParticipantNet(recipe).eval()
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(32, 4), (4, 1)]
    assert any(isinstance(m, nn.Dropout) for m in net.modules())
    scores = torch.rand(5, 32)
    assert net(scores).shape == (5,)
    assert torch.allclose(net(scores), net(scores[:, torch.randperm(32)]))  # slice order does not matter
    model = EnhancementPredictor(replace(SMALL, width=1 / 16)).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 6, 3, 32, 32))
    assert out["probability"].shape == (2,) and out["slice_scores"].shape == (2, 6)
    assert out["participant_threshold"].shape == (2,)


def test_minibatches_hold_as_many_enhancing_as_non_enhancing_slices():
    labels = torch.tensor([1.0] * 6 + [0.0] * 50)
    batches = balanced_batches(labels, 4, np.random.default_rng(0))
    assert all(labels[b].sum() * 2 == len(b) for b in batches)
    assert sorted(np.concatenate(batches)[labels[np.concatenate(batches)] > 0].tolist()) == list(range(6))


# --- ROC --------------------------------------------------------------------------------------------------------


def test_youden_threshold_and_figures_on_a_known_roc():
    truth = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    # J = 0.75 calling >= 0.7 positive (sens 3/4, spec 1); 0.6 calling >= 0.4 (sens 1, spec 3/5)
    threshold = youden_threshold(truth, score)
    assert threshold == pytest.approx(0.65)
    f = figures(truth, score, threshold)
    assert f["auc"] == pytest.approx(18 / 20)
    assert (f["sensitivity"], f["specificity"], f["ppv"]) == (0.75, 1.0, 1.0)
    assert f["accuracy"] == pytest.approx(8 / 9) and f["npv"] == pytest.approx(5 / 6)
    assert youden_threshold(np.ones(3), np.array([0.1, 0.2, 0.3])) == 0.5  # one class: undefined, the default


# --- the task on small synthetic files ---------------------------------------------------------------------------


def write_study(folder: Path, subject: str, session: str, enhancing: bool, lesion: bool = True,
                axcodes: str = "RAS", seed: int = 0) -> dict[str, Path]:
    """FLAIR, T1w, T2w, a saved FLAIR label and a post-contrast label of a tiny 1 mm 'head' (gzip'd NIfTI)."""
    rng = np.random.default_rng(seed)
    shape = (40, 44, 36)
    grid = np.indices(shape).astype(np.float32)
    head = ((grid[0] - 20) / 17) ** 2 + ((grid[1] - 22) / 19) ** 2 + ((grid[2] - 18) / 15) ** 2 < 1
    label = np.zeros(shape, dtype=np.uint8)
    if lesion:
        label[16:22, 18:24, 12:20] = 1
    ce = np.zeros(shape, dtype=np.uint8)
    if enhancing:
        ce[17:21, 19:23, 14:18] = 1
    images = {"FLAIR": 600 + 500 * label, "T1w": 800 - 200 * label, "T2w": 500 + 600 * label}
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-20, -22, -18]
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(axcodes))
    paths = {}

    def save(array: np.ndarray, path: Path, dtype) -> None:
        img = nib.Nifti1Image(array.astype(dtype), affine)
        img = img.as_reoriented(ornt)
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, path)

    for suffix, signal in images.items():
        noisy = np.where(head, signal, 0) + rng.normal(0, 20, shape)
        paths[suffix] = folder / f"sub-{subject}_ses-{session}_{suffix}.nii.gz"
        save(np.abs(noisy), paths[suffix], np.int16)
    paths["ce"] = folder / f"sub-{subject}_ses-{session}_ce-gadolinium_T1w.nii.gz"
    save(np.where(head, 900.0, 0.0) + rng.normal(0, 20, shape), paths["ce"], np.int16)
    paths["label"] = folder / "labels" / "final" / paths["FLAIR"].name
    save(label, paths["label"], np.uint8)
    paths["ce_label"] = folder / "labels" / "final" / paths["ce"].name
    save(ce, paths["ce_label"], np.uint8)
    return paths


@pytest.fixture()
def tiny_weights(tmp_path) -> Path:
    """An untrained model of the shipped recipe, saved like a checkpoint (the task reads the recipe from it)."""
    torch.manual_seed(0)
    model = EnhancementPredictor(ENHANCEMENT_PREDICTION)
    model.slice_threshold.fill_(0.0)  # every real slice predicted to enhance: the label must follow the lesion
    path = tmp_path / "weights.pt"
    weights.save_state(model.state_dict(), path, half=True, metadata=weights_metadata(ENHANCEMENT_PREDICTION, model))
    return path


def config(tmp_path: Path, weights_path: Path):
    from mslesion.tasks.enhancement_prediction import EnhancementPrediction

    task = EnhancementPrediction()
    task.init("enhancement_prediction", str(tmp_path / "model"), {"enhancement_prediction_weights": str(weights_path)},
              None)
    return task


def test_config_exposes_what_the_app_resolves(tmp_path, tiny_weights):
    task = config(tmp_path, tiny_weights)
    assert task.recipe.inputs == ("FLAIR", "T1w", "T2w") and task.recipe.task == "enhancement_prediction"
    assert task.infer().info()["inputs"] == ["FLAIR", "T1w", "T2w"]


@pytest.mark.parametrize("axcodes", ["RAS", "ILA"])
def test_infer_answers_figures_and_a_label_on_the_flairs_own_grid(tmp_path, tiny_weights, axcodes):
    paths = write_study(tmp_path / "studies", "01", "01", enhancing=True, axcodes=axcodes)
    label_path, result = config(tmp_path, tiny_weights).infer()({"image": str(paths["FLAIR"]), "device": "cpu"})
    flair, answer = nib.load(paths["FLAIR"]), nib.load(label_path)
    assert answer.shape == flair.shape and np.allclose(answer.affine, flair.affine)
    saved = np.asarray(nib.load(paths["label"]).dataobj)
    assert np.array_equal(np.asarray(answer.dataobj) > 0, saved > 0)  # all slices predicted: all lesion voxels
    assert result["lesion_mask_source"] == "saved label"
    assert 0.0 <= result["probability"] <= 1.0 and result["decision"] in ("enhancing", "not enhancing")
    rows = result["slices"]
    # lesion on 1 mm slices 12..19, dilated 9..22: the 3 mm slices 3..7, centred on 1 mm slices 10, 13, .. 22
    assert [r["index_ras_1mm"] for r in rows] == [10, 13, 16, 19, 22] and all(r["predicted"] for r in rows)
    axial_axis, depth = {"RAS": 2, "ILA": 0}[axcodes], 36
    assert {r["axis"] for r in rows} == {axial_axis}
    expected = [k if axcodes == "RAS" else depth - 1 - k for k in (10, 13, 16, 19, 22)]  # I-S axis flipped in ILA
    assert [r["index"] for r in rows] == expected
    assert 0.0 < result["probability"] < 1.0 and result["temperature"] == 1.0  # uncalibrated weights: T = 1
    assert len(result["top_slices"]) == 5 and all(r in rows for r in result["top_slices"])
    (lesion,) = result["lesions"]  # the one 6 x 6 x 8 mm lesion, in scanner mm whatever the file's axis order
    assert lesion["volume_mm3"] == 288.0 and lesion["centroid_mm"] == [-1.5, -1.5, -2.5]
    assert lesion["max_slice_score"] == max(r["score"] for r in rows)
    json.dumps(result)


def test_a_study_without_lesions_is_answered(tmp_path, tiny_weights):
    paths = write_study(tmp_path / "studies", "01", "01", enhancing=False, lesion=False)
    label_path, result = config(tmp_path, tiny_weights).infer()({"image": str(paths["FLAIR"]), "device": "cpu"})
    assert result["slices"] == [] and result["lesion_voxels"] == 0
    assert result["top_slices"] == [] and result["lesions"] == []
    assert not np.asarray(nib.load(label_path).dataobj).any()
    assert 0.0 <= result["probability"] <= 1.0


def test_a_missing_t2_is_a_422_naming_it(tmp_path, tiny_weights):
    paths = write_study(tmp_path / "studies", "01", "01", enhancing=False)
    paths["T2w"].unlink()
    with pytest.raises(StudyError) as error:
        config(tmp_path, tiny_weights).infer()({"image": str(paths["FLAIR"]), "device": "cpu"})
    assert error.value.status == 422 and "sub-01_ses-01_T2w" in error.value.message
    assert "PUT /datastore/image" in error.value.message


def test_asking_for_a_saved_label_that_is_not_there_is_a_422(tmp_path, tiny_weights):
    paths = write_study(tmp_path / "studies", "01", "01", enhancing=False)
    paths["label"].unlink()
    with pytest.raises(StudyError) as error:
        config(tmp_path, tiny_weights).infer()({"image": str(paths["FLAIR"]), "device": "cpu", "lesion_mask": "saved"})
    assert error.value.status == 422 and "PUT /datastore/label" in error.value.message


def datastore(folder: Path):
    from mslesion.server.datastore import ValidatingDatastore

    return ValidatingDatastore(str(folder), extensions=("*.nii.gz",), auto_reload=False)


def test_training_refuses_too_few_studies_or_one_class(tmp_path, tiny_weights):
    studies = tmp_path / "studies"
    write_study(studies, "01", "01", enhancing=True)
    trainer = config(tmp_path, tiny_weights).trainer()
    with pytest.raises(StudyError) as error:
        trainer.check_ready(datastore(studies))
    assert error.value.status == 422 and "at least 4" in error.value.message
    for subject, session in (("01", "02"), ("02", "01"), ("02", "02")):
        write_study(studies, subject, session, enhancing=True)
    with pytest.raises(StudyError) as error:
        trainer.check_ready(datastore(studies))
    assert error.value.status == 422 and "with and without enhancing" in error.value.message


def a_lesion_reader(intercept: float = -1.0):
    """A fitted-looking lesion reader: every lesion gets sigmoid(``intercept``)."""
    from mslesion.enhancement_prediction.lesion_reader import FEATURES, RELATIVE, LesionReader

    n = len(FEATURES) + len(RELATIVE)
    return LesionReader(np.zeros(n), np.ones(n), np.zeros(n), intercept, temperature=1.0, threshold=0.4)


def test_with_a_lesion_reader_a_study_without_lesions_is_answered_by_it(tmp_path, tiny_weights):
    from mslesion.enhancement_prediction.lesion_reader import attach

    attach(tiny_weights, a_lesion_reader())
    paths = write_study(tmp_path / "studies", "01", "01", enhancing=False, lesion=False)
    _, result = config(tmp_path, tiny_weights).infer()({"image": str(paths["FLAIR"]), "device": "cpu"})
    assert result["answered_by"] == "lesion_reader" and result["lesion_reader"] == {"lesions_read": 0, "lesions": []}
    assert result["probability"] == 0.005 and result["decision"] == "not enhancing"  # the clip, never exactly 0
    assert 0 <= result["participant_net"]["probability"] <= 1


def test_training_from_saved_labels_publishes_weights_with_thresholds(tmp_path, tiny_weights):
    """... and keeps the lesion reader of the weights it started from (the reader does not read the CNN)."""
    from mslesion.enhancement_prediction.lesion_reader import attach, reader_in

    studies = tmp_path / "studies"
    for i, (subject, session) in enumerate((("01", "01"), ("01", "02"), ("02", "01"), ("02", "02"))):
        write_study(studies, subject, session, enhancing=session == "01", seed=i)
    attach(tiny_weights, a_lesion_reader(intercept=-0.3))
    task = config(tmp_path, tiny_weights)
    stats = task.trainer()({"device": "cpu", "finetune_epochs": 1, "participant_epochs": 5}, datastore(studies))
    assert stats["status"] == "PUBLISHED"
    published = weights.published_weights(tmp_path / "model", "enhancement_prediction")
    assert Path(stats["published"]) == published and published.exists()
    meta = weights.load_metadata(published)
    assert set(meta["thresholds"]) == {"slice", "participant"} and meta["recipe"]["task"] == "enhancement_prediction"
    assert task.infer().get_path() == str(published)
    assert reader_in(meta).intercept == -0.3


# --- the shipped default weights ---------------------------------------------------------------------------------

HELD_OUT_SEED = 4242  # the shipped weights were trained on seed 2020 phantoms: these subjects were never seen
# baseline visits of seed 4242: subjects 01, 03, 08 have enhancing lesions, 02, 06, 07 have none
HELD_OUT_SUBJECTS = ("01", "02", "03", "06", "07", "08")


@pytest.fixture(scope="module")
def held_out_stacks(tmp_path_factory) -> list[dict]:
    """Slice stacks of 6 held-out MS phantom visits, made in memory and written uncompressed (fast)."""
    from mslesion.enhancement_prediction.data import PHANTOM_SEQUENCES
    from mslesion.enhancement_prediction.slices import LESION, extract_study
    from mslesion.phantoms import PhantomOptions, make_subject
    from mslesion.unet.transforms import IMAGE

    recipe = weights_recipe(weights.default_weights("enhancement_prediction"))
    folder = tmp_path_factory.mktemp("held_out")
    names = {IMAGE: "FLAIR", "T1w": "T1w", "T2w": "T2w", LESION: "FLAIR_label", ENHANCING: "ce-gadolinium_T1w_label"}
    items = []
    for subject in HELD_OUT_SUBJECTS:
        (session,) = make_subject("ms", subject, HELD_OUT_SEED, options=PhantomOptions(sequences=PHANTOM_SEQUENCES))
        stem = f"sub-{subject}_ses-{session.session}"
        for suffix, image in [*session.images.items(), *((f"{s}_label", i) for s, i in session.labels.items())]:
            nib.save(image, folder / f"{stem}_{suffix}.nii")
        stack = extract_study({k: str(folder / f"{stem}_{v}.nii") for k, v in names.items()}, recipe)
        items.append({**stack, "id": stem, "subject": subject})
    return items


def weights_recipe(path: Path) -> PredictionRecipe:
    return PredictionRecipe.from_dict(weights.load_metadata(path)["recipe"])


def held_out_auc(model: EnhancementPredictor, items: list[dict]) -> tuple[float, float]:
    from mslesion.enhancement_prediction.evaluate import score_stacks

    scores = score_stacks(model.eval(), items, torch.device("cpu"))
    return scores["slice"]["auc"], scores["participant"]["auc"]


# Measured with the shipped weights (randomised-signs pretraining, 2026-12-06) on the fixture's 6 visits, whose
# active lesions carry the fixed signature: slice-wise AUC 0.828 (19 enhancing, 130 non-enhancing slices),
# participant-wise AUC 0.778 (7 of 9 pairs ranked right). Ten random initialisations of the same network:
# slice-wise AUC 0.26-0.815 (the best of them 0.667 participant-wise), participant-wise 0.22-1.0, and none reaches
# both floors (the test below checks that). The previous weights scored 0.874 / 0.778 here.
SLICE_AUC_FLOOR, PARTICIPANT_AUC_FLOOR = 0.82, 0.75


@pytest.mark.slow
def test_shipped_weights_score_above_the_measured_floor_on_unseen_phantoms(held_out_stacks):
    path = weights.default_weights("enhancement_prediction")
    model = EnhancementPredictor(weights_recipe(path))
    model.load_state_dict(weights.load_state(path))
    slice_auc, participant_auc = held_out_auc(model, held_out_stacks)
    assert slice_auc >= SLICE_AUC_FLOOR and participant_auc >= PARTICIPANT_AUC_FLOOR, (slice_auc, participant_auc)


@pytest.mark.slow
def test_random_weights_fail_that_floor(held_out_stacks):
    recipe = weights_recipe(weights.default_weights("enhancement_prediction"))
    for seed in range(10):
        torch.manual_seed(seed)
        slice_auc, participant_auc = held_out_auc(EnhancementPredictor(recipe), held_out_stacks)
        assert not (slice_auc >= SLICE_AUC_FLOOR and participant_auc >= PARTICIPANT_AUC_FLOOR), seed


def test_shipped_weights_are_small_fp16_and_carry_their_recipe_and_thresholds():
    path = weights.default_weights("enhancement_prediction")
    assert path.stat().st_size < 1_000_000
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in payload["model"].values() if v.is_floating_point())
    card = json.loads(path.with_suffix(".json").read_text())
    meta = payload["meta"]
    assert meta["thresholds"] == card["thresholds"]
    assert float(payload["model"]["participant_threshold"]) == card["thresholds"]["participant"]
    assert float(payload["model"]["slice_threshold"]) == card["thresholds"]["slice"]
    assert PredictionRecipe.from_dict(meta["recipe"]) == ENHANCEMENT_PREDICTION
    assert "NOT for clinical use" in path.with_suffix(".md").read_text()


def test_previous_session_adds_a_flair_change_channel(tmp_path):
    """recipe.previous_session (default off): a 4th channel, FLAIR minus the registered previous FLAIR; zeros for a
    first visit. The network then reads 4 channels."""
    from mslesion.enhancement_prediction.data import LabelledStudy, previous_session_path, stacks

    studies = tmp_path / "studies"
    base = write_study(studies, "01", "01", enhancing=False, lesion=False, seed=1)  # no lesion at the first visit
    follow = write_study(studies, "01", "02", enhancing=True, seed=2)               # a new, enhancing lesion
    assert previous_session_path(follow["FLAIR"]) == str(base["FLAIR"])
    assert previous_session_path(base["FLAIR"]) is None
    assert not ENHANCEMENT_PREDICTION.previous_session
    recipe = replace(SMALL, previous_session=True)
    labels = studies / "labels" / "final"
    first, second = stacks([LabelledStudy.from_folder(f"sub-01_ses-{s}", studies, labels) for s in ("01", "02")],
                           recipe, cache_dir=None)
    assert first["slices"].shape[1] == second["slices"].shape[1] == 4
    assert not np.any(first["slices"][:, 3])                   # no previous session: zeros
    real = second["slice_index"] >= 0
    change, flair = second["slices"][real, 3].astype(np.float32), second["slices"][real, 2].astype(np.float32)
    assert change.max() > 1.0 and np.corrcoef(change.ravel(), flair.ravel())[0, 1] > 0.5  # the new lesion shows
    model = EnhancementPredictor(recipe)
    out = model(torch.from_numpy(second["slices"].astype(np.float32))[None])
    assert out["slice_scores"].shape == (1, recipe.n_slices)


def test_weights_with_the_previous_session_channel_are_served(tmp_path):
    recipe = replace(ENHANCEMENT_PREDICTION, previous_session=True)
    torch.manual_seed(0)
    model = EnhancementPredictor(recipe)
    path = tmp_path / "weights.pt"
    weights.save_state(model.state_dict(), path, half=True, metadata=weights_metadata(recipe, model))
    studies = tmp_path / "studies"
    write_study(studies, "01", "01", enhancing=False, lesion=False, seed=1)
    follow = write_study(studies, "01", "02", enhancing=True, seed=2)
    task = config(tmp_path, path)
    assert task.recipe.previous_session
    _, result = task.infer()({"image": str(follow["FLAIR"]), "device": "cpu"})
    assert 0.0 < result["probability"] < 1.0 and len(result["slices"]) == 5


def test_out_of_fold_participant_scores_come_from_classifiers_that_never_saw_the_study():
    """Slices of pure noise with random study labels: a slice classifier memorises its training studies (their
    scores rank the labels perfectly), so a participant net fit on those scores learns nothing that transfers.
    With ``participant_folds`` (an option) it is fit on out-of-fold scores instead: at chance here, as they should."""
    from sklearn.metrics import roc_auc_score

    from mslesion.enhancement_prediction.training import out_of_fold_scores, study_scores, train

    recipe = replace(SMALL, scratch_epochs=40, head_epochs=0, finetune_epochs=0, participant_epochs=5,
                     participant_folds=4)
    rng = np.random.default_rng(0)
    truth = rng.permutation([0, 1] * 12)
    stacks = [{"id": f"s{i}", "subject": f"{i:02d}", "slices": rng.normal(size=(6, 3, 32, 32)).astype(np.float16),
               "slice_truth": np.full(6, t), "slice_index": np.arange(6), "study_truth": int(t)}
              for i, t in enumerate(truth)]
    torch.manual_seed(0)
    model = EnhancementPredictor(recipe)
    initial = copy.deepcopy(model.state_dict())
    trained = train(recipe, stacks, [], torch.device("cpu"), seed=0, model=model, stages=("scratch",)).model
    in_sample = study_scores(trained, stacks, torch.device("cpu")).mean(1)
    out_of_fold = out_of_fold_scores(recipe, stacks, initial, torch.device("cpu"), 0, True, ("scratch",))
    assert roc_auc_score(truth, in_sample) >= 0.95
    assert out_of_fold.shape == (24, 6)
    assert roc_auc_score(truth, out_of_fold.mean(1)) <= 0.75
    assert out_of_fold_scores(recipe, stacks[:1], initial, torch.device("cpu"), 0, True, ("scratch",)) is None
