"""The shifted evaluation of enhancement_prediction: bootstrap CIs, Brier, reliability bins on synthetic arrays; the
test-cohort seed rules; one tiny end-to-end run (a 4 mm phantom subject, an untrained small model)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mslesion.enhancement_prediction import calibration, data, evaluate
from mslesion.enhancement_prediction.networks import EnhancementPredictor
from mslesion.enhancement_prediction.recipe import ENHANCEMENT_PREDICTION


def test_bootstrap_ci_brackets_the_auc_and_resamples_participants():
    rng = np.random.default_rng(0)
    truth = np.repeat(rng.random(60) < 0.5, 2)           # 60 participants, 2 visits each, same truth
    score = truth + rng.normal(0, 0.8, truth.size)
    groups = np.repeat(np.arange(60), 2)
    ci = calibration.bootstrap_auc(truth, score, groups, n=400, seed=1)
    assert ci["lo"] < ci["auc"] < ci["hi"] and ci["resamples"] == 400
    assert 0.1 < ci["hi"] - ci["lo"] < 0.4
    perfect = calibration.bootstrap_auc(truth, truth.astype(float), groups, n=100)
    assert perfect["lo"] == perfect["hi"] == perfect["auc"] == 1.0
    one_class = calibration.bootstrap_auc(np.ones(4), np.arange(4.0), np.arange(4), n=10)
    assert one_class["resamples"] == 0 and np.isnan(one_class["lo"])
    # fewer participants (visits grouped) give a wider interval than treating every visit as independent
    alone = calibration.bootstrap_auc(truth, score, np.arange(truth.size), n=400, seed=1)
    assert (ci["hi"] - ci["lo"]) >= (alone["hi"] - alone["lo"]) * 0.9


def test_brier_against_the_base_rate():
    truth = np.array([1, 1, 1, 0])
    assert calibration.brier(truth, np.full(4, 0.75)) == {"brier": pytest.approx(0.1875), "base_rate": 0.75,
                                                           "brier_base_rate": pytest.approx(0.1875)}
    assert calibration.brier(truth, np.array([0.9, 0.9, 0.9, 0.1]))["brier"] == pytest.approx(0.01)


def test_reliability_bins():
    p = np.array([0.05, 0.15, 0.12, 0.95, 1.0, 0.55])
    y = np.array([0, 1, 0, 1, 1, 0])
    rows = calibration.reliability(y, p, bins=10)
    assert [(r["lo"], r["count"]) for r in rows] == [(0.0, 1), (0.1, 2), (0.5, 1), (0.9, 2)]
    assert rows[1]["predicted"] == pytest.approx(0.135) and rows[1]["observed"] == 0.5
    assert rows[3]["observed"] == 1.0  # 1.0 falls in the last bin
    ece = calibration.expected_calibration_error(rows)
    assert ece == pytest.approx((0.05 + 2 * 0.365 + 0.55 + 2 * 0.025) / 6)


def test_shifted_figures_pool_groups_and_report_extremes(tmp_path):
    rng = np.random.default_rng(2)

    def arrays(n: int) -> dict:
        truth = (rng.random(n) < 0.5).astype(int)
        logit = 2 * truth - 1 + rng.normal(0, 1, n)
        slices = np.repeat(np.arange(n), 3)
        return {"truth": truth, "logit": logit, "probability": calibration.calibrated(logit, 1.0),
                "slice_truth": np.repeat(truth, 3) * (rng.random(3 * n) < 0.6), "slice_score": rng.random(3 * n),
                "slice_study": slices}

    parts = [arrays(10), arrays(12)]
    pooled = evaluate.concatenate_arrays(parts)
    assert pooled["slice_study"].max() == 21 and len(pooled["truth"]) == 22
    groups = np.array([f"a/{i // 2}" for i in range(10)] + [f"b/{i // 2}" for i in range(12)])
    figures = evaluate.shifted_figures(pooled, groups, 0.5, 0.5, bootstrap=50)
    p = figures["participant"]
    assert figures["studies"] == 22 and p["exactly_0_or_1"] == 0 and 0 < p["min_probability"]
    assert {"brier", "brier_base_rate", "reliability", "ece", "auc_ci95", "sensitivity", "specificity"} <= set(p)
    assert set(figures["slice"]) >= {"auc", "auc_ci95", "sensitivity", "specificity"}
    evaluate.plot_reliability({"groups": {"a": figures, "pooled": figures}}, tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 1000


def test_test_and_training_seeds_never_meet(tmp_path):
    with pytest.raises(ValueError, match="90000"):
        data.phantom_cohort(tmp_path / "a", 1, 2020, variant="1mm")
    with pytest.raises(ValueError, match="90000"):
        data.phantom_cohort(tmp_path / "b", 1, 90001, randomised=True)
    with pytest.raises(SystemExit):
        evaluate.main(["--shifted", "--weights", "w.pt", "--seed", "5", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        evaluate.main(["--shifted", "--out", str(tmp_path / "o")])


def test_a_tiny_shifted_run_end_to_end(tmp_path, monkeypatch, capsys):
    from mslesion import weights
    from mslesion.enhancement_prediction.pretrain import weights_metadata

    monkeypatch.setattr(data, "SHIFTED_VARIANTS", {"tiny_lps": {"spacing": (4.0, 4.0, 4.0), "orientation": "LPS"}})
    monkeypatch.setattr(evaluate, "SHIFTED_VARIANTS", data.SHIFTED_VARIANTS)
    recipe = replace(ENHANCEMENT_PREDICTION, n_slices=4, slice_size=32)
    torch.manual_seed(0)
    model = EnhancementPredictor(recipe)
    path = tmp_path / "w.pt"
    weights.save_state(model.state_dict(), path, half=True, metadata=weights_metadata(recipe, model))
    report = evaluate.main(["--shifted", "--weights", str(path), "--subjects", "1", "--bootstrap", "20", "--json",
                            "--cohort", str(tmp_path / "cohort"), "--out", str(tmp_path / "out"), "--threads", "1"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["groups"]["pooled"]["studies"] == 2 == report["groups"]["tiny_lps"]["studies"]
    assert report["seed"] == 90000 and report["temperature"] == 1.0
    assert (tmp_path / "out" / "reliability.png").exists() and (tmp_path / "out" / "results.json").exists()
    assert json.loads((tmp_path / "cohort" / "shifted-tiny_lps-seed90000" / "cohort.json").read_text())["variant"] \
        == "tiny_lps"
    from mslesion.enhancement_prediction.pretrain import _shifted_lines

    table = "\n".join(_shifted_lines(report))  # what the model card holds
    assert "| pooled | 2 (" in table and "| tiny_lps |" in table


@pytest.mark.slow
def test_randomised_pretraining_smoke(tmp_path, monkeypatch):
    """pretrain --randomised end to end on 3 + 1 tiny subjects (4 mm phantoms, one epoch per stage): it writes
    calibrated weights, a card and metadata. About 40 s on a 2-core CPU."""
    from mslesion import weights
    from mslesion.enhancement_prediction import pretrain
    from mslesion.phantoms import PhantomOptions

    drawn = []

    def tiny(rng, sequences):
        drawn.append(rng.random())
        return PhantomOptions(spacing=(4.0, 4.0, 4.0), sequences=sequences, randomised=True), "tiny"

    monkeypatch.setattr(data, "random_options", tiny)
    pretrain.main(["--subjects", "3", "--held-out", "1", "--seed", "7", "--randomised", "--threads", "1",
                   "--cohort", str(tmp_path / "cohort"), "--out", str(tmp_path / "model"), "--schedule",
                   "scratch_epochs=1", "head_epochs=1", "finetune_epochs=1", "participant_epochs=5"])
    path = tmp_path / "model" / "enhancement_prediction.pt"
    meta = weights.load_metadata(path)
    assert meta["randomised"] and meta["calibration"]["temperature"] == 1.0  # 2 validation studies: too few to fit
    assert meta["recipe"]["scratch_epochs"] == 1 and len(drawn) == 4
    card = (tmp_path / "model" / "enhancement_prediction.md").read_text()
    assert "(randomised)" in card and "Calibration: temperature scaling" in card
