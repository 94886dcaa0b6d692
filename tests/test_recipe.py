"""The training recipe's parts: per-lesion sampling, pooled scores, thresholds, post-processing stored with the
weights, the poly curve, and a checkpointed run that resumes on the same curve."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mslesion import weights
from mslesion.metrics import count_scores, lesion_scores, pooled_scores
from mslesion.unet.evaluate import (
    THRESHOLDS,
    cropped_to_candidates,
    predicted_mask,
    score_studies_at,
    tune_postprocessing,
)
from mslesion.unet.inference import threshold_label
from mslesion.unet.networks import lesion_unet
from mslesion.unet.recipes import FLAIR_LESION, NEW_LESION, for_cpu, for_request, from_checkpoint, postprocessing
from mslesion.unet.training import SELECTION_THRESHOLDS, fit, poly_schedule, replan
from mslesion.unet.transforms import (
    IMAGE,
    LABEL,
    BrightTissueIndicesd,
    LesionBalancedIndicesd,
    ThinnedIndicesd,
    lesion_indices,
)

TINY = replace(for_cpu(FLAIR_LESION), spacing=(4.0, 4.0, 4.0), patch=(16, 16, 16), patches_per_study=2,
               batch_size=2, channels=(4, 8, 16, 32, 64), infer_roi=(64, 64, 48))


def test_every_lesion_gets_the_same_number_of_centre_candidates():
    label = torch.zeros(1, 60, 60, 60)
    label[0, 5:35, 5:35, 5:35] = 1  # 27,000 voxels
    label[0, 50, 50, 50] = 1  # one voxel
    out = LesionBalancedIndicesd(per_lesion=32)({LABEL: label, f"{LABEL}_fg_indices": np.arange(3)})
    picks = np.unravel_index(out[f"{LABEL}_fg_indices"], (60, 60, 60))
    small = (picks[0] == 50) & (picks[1] == 50) & (picks[2] == 50)
    assert small.sum() == 32 and (~small).sum() == 32  # per voxel the small one would be drawn 1 in 27,001
    assert label[0][picks].min() == 1  # every candidate is a lesion voxel


def test_a_label_without_lesions_keeps_its_indices():
    out = LesionBalancedIndicesd()({LABEL: torch.zeros(1, 8, 8, 8), f"{LABEL}_fg_indices": np.arange(0)})
    assert len(out[f"{LABEL}_fg_indices"]) == 0


def test_cached_background_indices_are_a_bounded_sample_of_background_voxels():
    label = torch.zeros(1, 64, 64, 64)
    label[0, 30:34, 30:34, 30:34] = 1
    d = {LABEL: label}
    for transform in lesion_indices():
        d = transform(d)
    background = np.asarray(d[f"{LABEL}_bg_indices"])
    assert len(background) == 50_000 and len(np.unique(background)) == 50_000
    assert not label.ravel()[background].any(), "a thinned background index points into a lesion"
    small = ThinnedIndicesd(keep=10)({f"{LABEL}_bg_indices": np.arange(5)})
    assert list(small[f"{LABEL}_bg_indices"]) == [0, 1, 2, 3, 4]


def test_hard_negative_centres_land_on_bright_tissue_that_is_not_lesion():
    image = torch.zeros(1, 40, 40, 40)  # air around a head
    image[0, 5:35, 5:35, 5:35] = 1.0  # white matter
    image[0, 5:35, 5:35, 5:8] = 1.4  # a bright cortex strip: 2,700 voxels, a tenth of the tissue
    image[0, 20:23, 20:23, 20:23] = 1.6  # a lesion, brighter still
    label = torch.zeros(1, 40, 40, 40)
    label[0, 20:23, 20:23, 20:23] = 1
    d = {IMAGE: image, LABEL: label}
    asked = for_cpu(FLAIR_LESION).with_overrides({"bright_negative_share": 0.5})  # a training request's option
    for transform in lesion_indices(asked):
        d = transform(d)
    centres = np.asarray(d[f"{LABEL}_bg_indices"])
    anywhere = 50_000  # ThinnedIndicesd's sample of the 63,973 background voxels, then as many bright ones
    assert len(centres) == 2 * anywhere
    added = centres[anywhere:]
    assert (image.ravel()[added] == 1.4).all(), "a hard-negative centre is not on the bright cortex"
    assert not label.ravel()[added].any()
    assert (image.ravel()[centres] == 1.4).float().mean() > 0.5  # without them a bright voxel is 1 centre in 23
    assert len(lesion_indices(for_cpu(FLAIR_LESION))) == len(lesion_indices()) == 3  # not asked: unchanged
    with pytest.raises(ValueError, match="bright_negative_share"):
        BrightTissueIndicesd(1.0)


def test_a_training_request_runs_the_paper_schedule_on_a_gpu_and_the_cpu_schedule_elsewhere():
    assert for_request(FLAIR_LESION, {}, "cuda") == FLAIR_LESION
    assert for_request(FLAIR_LESION, {}, "cpu") == for_cpu(FLAIR_LESION)
    assert for_request(FLAIR_LESION, {"schedule": "cpu"}, "cuda") == for_cpu(FLAIR_LESION)
    assert for_request(FLAIR_LESION, {"schedule": "paper"}, "cpu") == FLAIR_LESION
    asked = for_request(FLAIR_LESION, {"max_epochs": 7, "lr": 3e-4}, "cpu")
    assert (asked.epochs, asked.lr, asked.patch) == (7, 3e-4, for_cpu(FLAIR_LESION).patch)


def test_pooled_scores_weigh_lesions_not_studies():
    truth, empty = np.zeros((20, 20, 20)), np.zeros((20, 20, 20))
    many = truth.copy()
    for i in range(0, 20, 4):
        many[i, 0:2, 0:2] = 1  # five lesions, all found
    one = truth.copy()
    one[10:12, 10:12, 10:12] = 1  # one lesion, missed
    scores = [lesion_scores(many, many, 1), lesion_scores(one, empty, 1)]
    pooled = pooled_scores(count_scores(scores))
    assert pooled["sensitivity"] == pytest.approx(5 / 6)  # a per-study mean would say 0.5
    assert pooled["fp_per_scan"] == 0 and pooled["studies"] == 2


def test_threshold_label_is_the_softmax_probability_above_the_threshold():
    logits = torch.randn(2, 6, 7, 5)
    probability = torch.softmax(logits, dim=0)[1]
    for t in (0.3, 0.5, 0.8):
        assert torch.equal(threshold_label(logits, t)[0].bool(), probability > t)


def test_postprocessing_travels_with_the_weights(tmp_path):
    tuned = replace(FLAIR_LESION, threshold=0.7, min_lesion_voxels=12, mirror_axes=(0,))
    path = tmp_path / "w.pt"
    weights.save_state(lesion_unet(FLAIR_LESION).state_dict(), path,
                       metadata={"recipe": tuned.as_dict(), "postprocessing": postprocessing(tuned)})
    read = from_checkpoint(FLAIR_LESION, weights.load_metadata(path))
    assert (read.threshold, read.min_lesion_voxels, read.mirror_axes) == (0.7, 12, (0,))
    assert from_checkpoint(NEW_LESION, {}).min_lesion_voxels == NEW_LESION.min_lesion_voxels  # nothing stored
    older = {"postprocessing": {"threshold": 0.9, "min_lesion_voxels": 5}}  # weights from before mirroring existed
    assert from_checkpoint(FLAIR_LESION, older).mirror_axes == ()


def test_tuning_picks_a_threshold_that_removes_faint_false_positives():
    truth = torch.zeros(1, 32, 32, 32)
    truth[0, 5:10, 5:10, 5:10] = 1
    margin = torch.full((1, 32, 32, 32), -5.0)
    margin[0, 5:10, 5:10, 5:10] = 4.0  # the lesion, confidently
    margin[0, 20:25, 20:25, 20:25] = 0.2  # a faint false positive (p = 0.55)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.cat([torch.zeros_like(margin), margin])[None].expand(x.shape[0], -1, -1, -1, -1)

    studies = [{IMAGE: torch.zeros(1, 32, 32, 32), LABEL: truth}]
    best, scores = tune_postprocessing(Fixed(), studies, replace(FLAIR_LESION, infer_roi=(32, 32, 32)))
    assert best["threshold"] >= 0.6 and scores["f1"] == 1.0
    assert best["mirror_axes"] == ()  # mirroring only when it scores better (it doubles the network time)
    assert predicted_mask(margin[0], 0.5, 3).sum() > predicted_mask(margin[0], best["threshold"], 3).sum()
    # what the best-epoch pick sees: one inference, the counts at each threshold
    at = score_studies_at(Fixed(), studies, replace(FLAIR_LESION, infer_roi=(32, 32, 32)), (0.5, 0.9))
    assert pooled_scores(at[0.5])["fp_per_scan"] == 1.0 and pooled_scores(at[0.9])["f1"] == 1.0


class OneSidedArtefact(torch.nn.Module):
    """Calls lesion where the image is bright, plus a sure false positive at a fixed place of its output (the
    kind of left-right asymmetric mistake that averaging with the mirrored study cancels)."""

    def forward(self, x):
        margin = -5.0 + 9.0 * x[:, :1]
        margin[:, :, 26:30, 5:10, 5:10] = 6.0  # p = 0.9975: above every threshold of the grid
        return torch.cat([torch.zeros_like(margin), margin], dim=1)


def test_mirrored_inference_averages_the_mirrored_pass_and_tuning_keeps_it_when_it_helps():
    from mslesion.unet.inference import predict_logits

    image = torch.zeros(1, 32, 32, 32)
    image[0, 14:18, 14:18, 14:18] = 1.0  # a lesion in the middle (its own mirror image)
    recipe = replace(FLAIR_LESION, infer_roi=(32, 32, 32))
    plain = predict_logits(OneSidedArtefact(), image, recipe)
    mirrored = predict_logits(OneSidedArtefact(), image, replace(recipe, mirror_axes=(0,)))
    assert torch.allclose(mirrored, (plain + plain.flip(1)) / 2, atol=1e-5)
    assert mirrored[1, 15, 15, 15] == pytest.approx(4.0) and mirrored[1, 27, 7, 7] == pytest.approx(0.5)
    studies = [{IMAGE: image, LABEL: (image > 0).float()}]
    best, scores = tune_postprocessing(OneSidedArtefact(), studies, recipe)
    assert best["mirror_axes"] == (0,) and best["threshold"] >= 0.7 and scores["f1"] == 1.0


def test_the_tuning_grid_scores_the_same_on_the_candidate_box_as_on_the_whole_study():
    rng = np.random.default_rng(0)
    truth = np.zeros((40, 44, 36), dtype=np.uint8)
    truth[8:12, 10:15, 6:9] = 1
    truth[30:33, 30:34, 25:29] = 1
    truth[20, 20, 20] = 1  # below the scored size
    margin = torch.as_tensor(rng.normal(-8.0, 1.0, truth.shape), dtype=torch.float32)
    margin[9:13, 10:14, 6:10] = 5.0  # a lesion, slightly off
    margin[2:4, 35:40, 30:33] = 2.5  # a false positive of 30 voxels
    margin[15, 5, 5] = 3.0  # a single-voxel one
    box_truth, box_margin = cropped_to_candidates(truth, margin, min(THRESHOLDS))
    assert box_truth.size < truth.size
    for threshold in THRESHOLDS:
        for size in (3, 12, 45):
            whole = lesion_scores(truth, predicted_mask(margin, threshold, size))
            box = lesion_scores(box_truth, predicted_mask(box_margin, threshold, size))
            assert whole == box, (threshold, size)


def test_the_poly_curve_ends_at_zero_and_can_be_planned_late():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plan = {"total": 10**9}
    schedule = poly_schedule(opt, plan)
    plan["total"] = 10
    lrs = []
    for _ in range(10):
        opt.step()
        schedule.step()
        lrs.append(schedule.get_last_lr()[0])
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == 0.0 and lrs[0] == pytest.approx(0.9**0.9)


def test_a_replanned_curve_goes_on_from_where_it_was_and_ends_at_the_new_total():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plan = {"total": 100}
    schedule = poly_schedule(opt, plan)
    lrs = []
    for step in range(1, 61):
        opt.step()
        schedule.step()
        lrs.append(schedule.get_last_lr()[0])
        if step == 30:  # the machine got slower: the budget holds 30 more steps, not 70
            replan(plan, step, 60)
    assert lrs[29] == pytest.approx((1 - 0.3) ** 0.9)
    assert lrs[30] == pytest.approx((1 - (0.3 + 0.7 / 30)) ** 0.9)  # no jump: one step further on the curve
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == 0.0


@pytest.fixture(scope="module")
def tiny_items(tmp_path_factory):
    from mslesion.phantoms import PhantomOptions, write_cohort

    folder = tmp_path_factory.mktemp("tiny")
    paths = write_cohort(folder, cohort="ms", subjects=3, seed=5, labelled=1.0,
                         options=PhantomOptions(sequences=("FLAIR",), spacing=(4.0, 4.0, 4.0)))
    return [{IMAGE: str(p), LABEL: str(folder / "labels" / "final" / p.name)} for p in sorted(paths)]


@pytest.mark.slow
def test_a_stopped_run_resumes_on_the_same_curve(tiny_items, tmp_path):
    """Stopped after its first epoch (as SIGTERM does), the checkpoint holds the planned curve, the step and the
    optimiser; resumed, the run ends at the planned total with the lr at zero, not restarted."""
    recipe = replace(TINY, epochs=3)
    saved = []
    calls = {"n": 0}

    def stop_after_first_epoch() -> bool:
        calls["n"] += 1
        return bool(saved)

    torch.manual_seed(0)
    first = fit(recipe, lesion_unet(recipe), tiny_items[:2], tiny_items[2:], torch.device("cpu"), lr=1e-3,
                checkpoint=saved.append, stop=stop_after_first_epoch)
    assert first.stopped and len(saved) >= 1
    state = saved[-1]
    planned, done = state["total_steps"], state["step"]
    assert 0 < done < planned
    path = tmp_path / "checkpoint.pt"
    weights.save_atomic(state, path)
    resumed_state = torch.load(path, weights_only=False)
    history = []
    second = fit(recipe, lesion_unet(recipe), tiny_items[:2], tiny_items[2:], torch.device("cpu"), lr=1e-3,
                 resume=resumed_state, checkpoint=history.append)
    assert not second.stopped
    # the steps of the interrupted epoch count: the run ends at the planned step, one epoch row later
    assert history[-1]["step"] == planned and second.rank_steps == [planned]
    assert [row["epoch"] for row in second.history] == [1, 2]
    assert second.history[0] == first.history[0]  # the first run's epoch, carried over
    assert second.history[-1]["lr"] == 0.0
    # the best epoch is picked on F1 at the best of a few thresholds, never below F1 at the recipe's own
    for row in second.history:
        assert row["selection_threshold"] in {recipe.threshold, *SELECTION_THRESHOLDS}
        assert row["f1_selection"] >= row.get("f1", 0.0)
    json.dumps(second.history)  # the stats file can hold it


def test_a_budgeted_run_follows_a_new_plan_after_a_validation(tiny_items, monkeypatch):
    """The first plan is made from a few batches; when the machine's load changes, the next validation moves the
    end of the curve: plan_steps says how many more steps fit, and the run ends there with the lr at zero."""
    from mslesion.unet import training

    monkeypatch.setattr(training, "REPLAN_MIN_STEPS", 1)
    seen = {"step": 0, "end": None, "plans": 0}

    def plan_steps(rate: float) -> int:
        assert rate > 0
        seen["plans"] += 1
        if seen["plans"] == 2:  # after the first validation: the machine got slower, 3 more steps fit
            seen["end"] = seen["step"] + 3
        return 40 if seen["end"] is None else seen["end"] - seen["step"]

    result = fit(replace(TINY, epochs=50), lesion_unet(TINY), tiny_items[:2], tiny_items[2:], torch.device("cpu"),
                 lr=1e-3, plan_steps=plan_steps, progress=lambda u: seen.update(step=u["history"][-1]["step"]))
    assert seen["plans"] >= 2 and seen["end"] is not None
    assert result.rank_steps == [seen["end"]] and result.history[-1]["lr"] == 0.0


def test_weights_say_which_network_they_are(tmp_path):
    """Older (instance-norm) weights carry their own recipe and load into the network it describes; weights of
    another task's inputs are refused by name."""
    from mslesion.unet.recipes import ENHANCEMENT

    old = replace(FLAIR_LESION, norm="instance")
    path = tmp_path / "base.pt"
    weights.save_state(lesion_unet(old).state_dict(), path, metadata={"recipe": old.as_dict()})
    read = from_checkpoint(FLAIR_LESION, weights.load_metadata(path))
    assert read.norm == "instance" and read.channels == FLAIR_LESION.channels
    lesion_unet(read).load_state_dict(weights.load_state(path))  # strict: every tensor fits
    with pytest.raises(ValueError, match="enhancement reads"):
        from_checkpoint(ENHANCEMENT, weights.load_metadata(path))


def test_retune_rewrites_only_the_post_processing_of_published_weights(tiny_items, tmp_path, monkeypatch):
    """``pretrain --retune``: the stored mirroring, threshold and minimum size are tuned again on the validation
    studies and written back with the weights and their card; the weights themselves are unchanged."""
    from mslesion.unet import pretrain

    torch.manual_seed(0)
    state = lesion_unet(FLAIR_LESION).state_dict()
    target = tmp_path / "flair_lesion.pt"
    before = {"threshold": 0.3, "min_lesion_voxels": 45}
    weights.save_state(state, target, half=True, metadata={"recipe": FLAIR_LESION.as_dict(), "postprocessing": before})
    (tmp_path / "flair_lesion.json").write_text(json.dumps({"postprocessing": before,
                                                            "evaluation_ms_phantoms": {"f1": 0.0}}))
    monkeypatch.setattr(pretrain, "validation_items", lambda *args: tiny_items[:1])
    monkeypatch.setattr(pretrain, "write_model_card", lambda *args: None)
    card = pretrain.retune_published("flair_lesion", tmp_path / "run", 7, tmp_path)
    meta = weights.load_metadata(target)
    assert set(meta["postprocessing"]) == {"threshold", "min_lesion_voxels", "mirror_axes"}
    served = from_checkpoint(FLAIR_LESION, meta)
    assert postprocessing(served) == meta["postprocessing"] == json.loads(json.dumps(card["postprocessing"]))
    assert (served.threshold, served.min_lesion_voxels) != (0.3, 45) and meta["validation"]["studies"] == 1
    assert "--retune" in card["note"] and "before p > 0.3, >= 45 voxels, no test-time mirroring" in card["note"]
    reloaded = {k: v.float() for k, v in weights.load_state(target).items()}
    halved = {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}
    assert all(torch.equal(reloaded[k].to(halved[k].dtype), halved[k]) for k in halved)


def test_a_resumed_run_refuses_another_peak_learning_rate(tmp_path):
    """``--lr`` is part of the recipe a checkpoint was made with: resuming with another peak lr would graft a new
    curve onto the old one, so it is refused by name (and the same lr resumes)."""
    from mslesion.unet.pretrain import _resumed

    manifest = {"cohorts": {"ms": 2}, "seed": 7}
    made_with = replace(FLAIR_LESION, pretrain_lr=3e-4).as_dict()
    path = tmp_path / "checkpoint.pt"
    torch.save({"recipe": made_with, "manifest": manifest}, path)
    assert _resumed(path, True, made_with, manifest)["recipe"]["pretrain_lr"] == 3e-4
    with pytest.raises(SystemExit, match="--resume refused: the recipe"):
        _resumed(path, True, FLAIR_LESION.as_dict(), manifest)
