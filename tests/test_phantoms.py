"""Behaviour of the synthetic phantoms that later models and evaluations rely on."""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from mslesion.phantoms import COHORTS, SEQUENCES, PhantomOptions, make_subject, write_cohort
from mslesion.phantoms.__main__ import main as cli_main

# Subject 06 of seed 0 has, at its follow-up, both new and enhancing MS lesions (asserted below).
SUBJECT, SEED = "06", 0
COARSE = (3.0, 3.0, 3.0)


def data(img: nib.Nifti1Image) -> np.ndarray:
    """The stored array (no scaling is applied to phantom images)."""
    return np.asarray(img.dataobj)


def world_centroid(label: nib.Nifti1Image) -> np.ndarray:
    """Centre of mass of a label's foreground in world mm."""
    ijk = np.argwhere(data(label) > 0).mean(axis=0)
    return label.affine[:3, :3] @ ijk + label.affine[:3, 3]


def voxel_of(img: nib.Nifti1Image, point_mm: list[float]) -> tuple[int, ...]:
    """Nearest voxel index of a world point."""
    inv = np.linalg.inv(img.affine)
    return tuple(np.rint(inv[:3, :3] @ np.asarray(point_mm) + inv[:3, 3]).astype(int))


def nawm(t1: np.ndarray, flair_label: np.ndarray) -> np.ndarray:
    """Normal-appearing WM: the brightest fifth of the brain on T1w, away from any lesion."""
    brain = t1 > 0.3 * t1.max()
    return (t1 > np.percentile(t1[brain], 80)) & ~ndi.binary_dilation(flair_label > 0, iterations=3)


@pytest.fixture(scope="module")
def ms_followup():
    """Two 1 mm sessions of one MS subject (the sequences the checks need)."""
    options = PhantomOptions(sequences=("FLAIR", "T1w", "ce-gadolinium_T1w"))
    return make_subject("ms", SUBJECT, SEED, sessions=2, options=options)


def test_same_seed_is_identical_and_other_seed_differs():
    options = PhantomOptions(spacing=COARSE)
    a = make_subject("ms", "01", 3, options=options)[0]
    b = make_subject("ms", "01", 3, options=options)[0]
    c = make_subject("ms", "01", 4, options=options)[0]
    assert set(a.images) == set(SEQUENCES)
    for suffix in SEQUENCES:
        assert np.array_equal(data(a.images[suffix]), data(b.images[suffix]))
        assert not np.array_equal(data(a.images[suffix]), data(c.images[suffix]))
    for suffix in a.labels:
        assert np.array_equal(data(a.labels[suffix]), data(b.labels[suffix]))
    assert a.lesions == b.lesions and a.lesions != c.lesions


def test_labels_live_on_their_image_grid(ms_followup):
    for ses in ms_followup:
        assert set(ses.labels) == {"FLAIR", "ce-gadolinium_T1w"}
        for suffix, label in ses.labels.items():
            img = ses.images[suffix]
            assert label.shape == img.shape
            assert np.allclose(label.affine, img.affine)
            assert label.get_data_dtype() == np.uint8 and data(label).dtype == np.uint8
            assert img.get_data_dtype() == np.int16
        assert ses.filename("FLAIR") == f"sub-{SUBJECT}_ses-{ses.session}_FLAIR.nii.gz"


def test_flair_lesions_are_brighter_than_normal_white_matter(ms_followup):
    for ses in ms_followup:
        label = data(ses.labels["FLAIR"])
        flair = data(ses.images["FLAIR"]).astype(float)
        t1 = data(ses.images["T1w"]).astype(float)
        wm = nawm(t1, label)
        assert label.any() and wm.sum() > 10000
        assert flair[label > 0].mean() > 1.4 * flair[wm].mean()
        assert t1[label > 0].mean() < 0.95 * t1[wm].mean()  # T1w hypointense


def test_enhancing_label_enhances_on_post_contrast(ms_followup):
    ses = ms_followup[1]
    enhancing = data(ses.labels["ce-gadolinium_T1w"]) > 0
    assert enhancing.any(), "pick a subject with enhancing lesions at follow-up"
    assert sum(les["enhancing"] for les in ses.lesions) >= 1
    t1 = data(ses.images["T1w"]).astype(float)
    ce = data(ses.images["ce-gadolinium_T1w"]).astype(float)
    wm = nawm(t1, data(ses.labels["FLAIR"]))
    # normalised by each image's own normal WM (the sequences have different receiver gains)
    assert ce[enhancing].mean() / ce[wm].mean() > t1[enhancing].mean() / t1[wm].mean() + 0.25
    # every enhancing lesion is a lesion on FLAIR too
    assert np.all(data(ses.labels["FLAIR"])[enhancing] > 0)


def test_new_lesions_are_labelled_2_exactly(ms_followup):
    baseline, followup = ms_followup
    assert 2 not in data(baseline.labels["FLAIR"])
    assert not any(les["new"] for les in baseline.lesions)
    label = data(followup.labels["FLAIR"])
    new = [les for les in followup.lesions if les["new"]]
    assert new, "pick a subject with new lesions at follow-up"
    for les in followup.lesions:
        if les["volume_ml"] > 0:
            assert label[voxel_of(followup.labels["FLAIR"], les["centre_mm"])] == (2 if les["new"] else 1)
    # label 2 is nothing but the new lesions: its volume is theirs, and it sits around their centres
    voxel_ml = float(np.prod(followup.labels["FLAIR"].header.get_zooms())) / 1000
    assert np.isclose((label == 2).sum() * voxel_ml, sum(les["volume_ml"] for les in new), atol=1e-6)
    ijk = np.argwhere(label == 2)
    world = ijk @ followup.labels["FLAIR"].affine[:3, :3].T + followup.labels["FLAIR"].affine[:3, 3]
    reach = [max(les["radii_mm"]) + 1.5 for les in new]
    dist = np.stack([np.linalg.norm(world - np.asarray(les["centre_mm"]), axis=1) for les in new])
    assert np.all(np.any(dist <= np.asarray(reach)[:, None], axis=0))


def test_followup_is_misregistered_to_baseline(ms_followup):
    baseline, followup = ms_followup
    old = {les["id"]: les for les in baseline.lesions}
    shifts = [np.linalg.norm(np.subtract(les["centre_mm"], old[les["id"]]["centre_mm"]))
              for les in followup.lesions if les["id"] in old]
    assert 0.3 < np.median(shifts) < 10.0


@pytest.mark.parametrize("orientation", ["LPS", "PSR"])
def test_orientation_keeps_world_coordinates(orientation):
    ras = make_subject("ms", SUBJECT, SEED, options=PhantomOptions(spacing=COARSE, sequences=("FLAIR",)))[0]
    other = make_subject("ms", SUBJECT, SEED, options=PhantomOptions(spacing=COARSE, sequences=("FLAIR",),
                                                                     orientation=orientation))[0]
    img, label = other.images["FLAIR"], other.labels["FLAIR"]
    assert nib.aff2axcodes(img.affine) == tuple(orientation)
    assert np.allclose(world_centroid(label), world_centroid(ras.labels["FLAIR"]), atol=1e-6)
    # every voxel holds what the RAS voxel at the same world position holds
    to_ras = np.linalg.inv(ras.images["FLAIR"].affine) @ img.affine
    ijk = np.argwhere(np.ones(img.shape, dtype=bool))
    ras_ijk = np.rint(ijk @ to_ras[:3, :3].T + to_ras[:3, 3]).astype(int)
    assert np.array_equal(data(img)[tuple(ijk.T)], data(ras.images["FLAIR"])[tuple(ras_ijk.T)])
    assert other.lesions == ras.lesions


def test_thick_axial_slices():
    options = PhantomOptions(spacing=(2.0, 2.0, 1.0), slice_thickness=3.0, sequences=("FLAIR",))
    thick = make_subject("ms", SUBJECT, SEED, options=options)[0]
    thin = make_subject("ms", SUBJECT, SEED, options=PhantomOptions(spacing=(2.0, 2.0, 1.0),
                                                                    sequences=("FLAIR",)))[0]
    img = thick.images["FLAIR"]
    assert img.header.get_zooms() == pytest.approx((2.0, 2.0, 3.0))
    assert np.allclose(img.affine[:3, :3], np.diag([2.0, 2.0, 3.0]))
    assert thick.labels["FLAIR"].shape == img.shape
    # slice k is the average of thin slices 3k..3k+2, so its centre is the middle one's
    thin_img = thin.images["FLAIR"]
    assert np.allclose(img.affine[:3, 3], thin_img.affine[:3, :3] @ [0, 0, 1] + thin_img.affine[:3, 3])
    assert img.shape[2] * 3 == thin_img.shape[2]
    assert np.allclose(world_centroid(thick.labels["FLAIR"]), world_centroid(thin.labels["FLAIR"]), atol=1.5)
    averaged = data(thin_img).astype(float).reshape(*img.shape[:2], -1, 3).mean(axis=3)
    brain = averaged > 200
    assert np.corrcoef(averaged[brain], data(img)[brain])[0, 1] > 0.9


def test_write_cohort_layout_and_byte_identical(tmp_path):
    options = PhantomOptions(spacing=(4.0, 4.0, 4.0), sequences=("FLAIR", "T1w", "ce-gadolinium_T1w"))
    kwargs = dict(cohort="ms", subjects=2, sessions=2, seed=1, labelled=0.5, options=options, first_subject=3)
    paths = write_cohort(tmp_path / "a", truth_dir=tmp_path / "truth", **kwargs)
    names = sorted(p.name for p in paths)
    assert names == sorted(f"sub-{s}_ses-{t}_{q}.nii.gz" for s in ("03", "04") for t in ("01", "02")
                           for q in options.sequences)
    assert all(p.exists() for p in paths)
    final = sorted(p.name for p in (tmp_path / "a" / "labels" / "final").iterdir())
    assert final == sorted(f"sub-03_ses-{t}_{q}.nii.gz" for t in ("01", "02") for q in ("FLAIR", "ce-gadolinium_T1w"))
    truth = sorted(p.name for p in (tmp_path / "truth").glob("*.nii.gz"))
    assert truth == sorted(f"sub-{s}_ses-{t}_{q}.nii.gz" for s in ("03", "04") for t in ("01", "02")
                           for q in ("FLAIR", "ce-gadolinium_T1w"))
    meta = json.loads((tmp_path / "truth" / "lesions.json").read_text())
    assert set(meta) == {f"sub-{s}_ses-{t}" for s in ("03", "04") for t in ("01", "02")}
    assert all({"kind", "location", "centre_mm", "volume_ml", "enhancing", "new"} <= set(les)
               for entry in meta.values() for les in entry["lesions"])
    label = nib.load(tmp_path / "a" / "labels" / "final" / "sub-03_ses-01_FLAIR.nii.gz")
    image = nib.load(tmp_path / "a" / "sub-03_ses-01_FLAIR.nii.gz")
    assert label.shape == image.shape and np.allclose(label.affine, image.affine)
    again = write_cohort(tmp_path / "b", **kwargs)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


@pytest.mark.parametrize("cohort", [c for c in COHORTS if c != "healthy"])
def test_every_cohort_has_a_label(cohort):
    options = PhantomOptions(spacing=(2.0, 2.0, 2.0), sequences=("FLAIR", "ce-gadolinium_T1w"))
    sessions = make_subject(cohort, "01", 0, options=options)
    assert len(sessions) == (2 if cohort == "glioma_change" else 1)
    last = sessions[-1]
    flair = data(last.labels["FLAIR"])
    assert (flair > 0).sum() > 0
    assert last.lesions and all(les["kind"] for les in last.lesions)
    if cohort == "metastasis":
        assert data(last.labels["ce-gadolinium_T1w"]).any()
    if cohort == "glioma_change":
        assert (flair == 2).any() and 2 not in data(sessions[0].labels["FLAIR"])
    if cohort in ("glioma", "leukoencephalopathy", "metastasis"):
        assert (flair > 0).sum() * 8 / 1000 > 2.0  # large regions, in mL


def test_the_healthy_cohort_has_empty_labels_and_no_lesions():
    options = PhantomOptions(spacing=(2.0, 2.0, 2.0), sequences=("FLAIR", "ce-gadolinium_T1w"))
    (session,) = make_subject("healthy", "01", 0, options=options)
    assert not data(session.labels["FLAIR"]).any() and not data(session.labels["ce-gadolinium_T1w"]).any()
    assert session.lesions == [] and data(session.images["FLAIR"]).max() > 0


def test_randomised_acquisitions_vary_and_keep_world_geometry(tmp_path):
    """Domain randomisation draws different acquisitions, and each written image still puts the lesions where the
    truth says: a sagittal thick-slice, scaled-integer, whole-head study's label sits on its own lesions."""
    from mslesion.phantoms.randomise import random_options

    drawn = [random_options(np.random.default_rng([1, i]), ("FLAIR",)) for i in range(40)]
    assert len({variant for _, variant in drawn}) >= 5
    assert {o.storage for o, _ in drawn} == {"int16", "scaled_uint16", "float32"}
    assert {o.whole_head for o, _ in drawn} == {True, False}
    options = PhantomOptions(spacing=(2.0, 2.0, 2.0), slice_thickness=4.0, slice_axis="R", storage="scaled_uint16",
                             whole_head=True, randomised=True, orientation="LPS", sequences=("FLAIR",))
    (study,) = make_subject("ms", SUBJECT, SEED, options=options)
    nib.save(study.images["FLAIR"], tmp_path / "flair.nii.gz")
    image, label = nib.load(tmp_path / "flair.nii.gz"), study.labels["FLAIR"]  # as a reader meets it on disk
    assert image.get_data_dtype() == np.uint16 and image.dataobj.slope != 1.0
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert np.allclose(sorted(image.header.get_zooms()), [2.0, 2.0, 4.0], atol=0.05)
    values = image.get_fdata()
    inside = data(label) > 0
    assert inside.any() and values[inside].mean() > np.median(values[values > 0.1 * values.max()])
    # whole head: signal beyond the brain (scalp, fat) where a skull-stripped study is background
    stripped = make_subject("ms", SUBJECT, SEED, options=replace(options, whole_head=False))[0].images["FLAIR"]
    outside = stripped.get_fdata() < 0.05 * stripped.get_fdata().max()
    assert (values[outside] > 0.3 * values.max()).mean() > 0.05


def test_options_are_validated():
    with pytest.raises(ValueError):
        PhantomOptions(orientation="RRS")
    with pytest.raises(ValueError):
        PhantomOptions(sequences=("DWI",))
    with pytest.raises(ValueError):
        make_subject("stroke", "01", 0)


def test_cli_writes_and_reports(tmp_path, capsys):
    rc = cli_main(["--out", str(tmp_path), "--cohort", "small_vessel", "--subjects", "1", "--labelled", "0",
                   "--spacing", "4", "4", "4", "--orientation", "LPS", "--sequences", "FLAIR", "T2w"])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == ["sub-01_ses-01_FLAIR.nii.gz",
                                                                 "sub-01_ses-01_T2w.nii.gz"]
    assert not (tmp_path / "labels").exists()
    assert nib.aff2axcodes(nib.load(tmp_path / "sub-01_ses-01_FLAIR.nii.gz").affine) == ("L", "P", "S")
    assert "wrote 2 images" in capsys.readouterr().out


def test_every_cohort_has_a_maker_in_the_registry():
    from mslesion.phantoms.cohorts import COHORT_MAKERS

    assert set(COHORT_MAKERS) == set(COHORTS)
    with pytest.raises(ValueError, match="unknown cohort"):
        make_subject("lymphoma", "01", 0)


def test_the_ms_active_cohort_shows_many_more_enhancing_lesions():
    """The enhancement U-Net's training cohort: every session has enhancing lesions, about a quarter of them (the
    natural course gives ~1 per session and many sessions none), and non-enhancing lesions stay to learn from."""
    from mslesion.phantoms.anatomy import load_anatomy
    from mslesion.phantoms.cohorts import cohort_sessions
    from mslesion.phantoms.deformation import random_warp

    anat, counts = load_anatomy(), {}
    for cohort in ("ms", "ms_active"):
        counts[cohort] = []
        for seed in range(4):
            warp = random_warp(np.random.default_rng(100 + seed))
            _, sessions = cohort_sessions(cohort, np.random.default_rng(seed), anat, warp, 2, np.random.default_rng(7))
            for session in sessions:
                records = [b.record for b in session.blobs if b.record and b.record["kind"] == "ms"]
                counts[cohort].append((sum(r["enhancing"] for r in records), len(records)))
    active = counts["ms_active"]
    assert all(enhancing >= 1 for enhancing, _ in active)
    assert all(enhancing < lesions for enhancing, lesions in active)
    assert sum(e for e, _ in active) >= 3 * sum(e for e, _ in counts["ms"])


def test_the_ms_relapse_cohort_brings_several_new_and_enlarging_lesions_at_every_follow_up():
    """The new-lesion U-Net's training cohort: every follow-up has 3-8 new lesions (the natural course gives 0-4,
    often none) and more enlarging old ones, the look-alikes that must stay label 1."""
    from mslesion.phantoms.anatomy import load_anatomy
    from mslesion.phantoms.cohorts import cohort_sessions
    from mslesion.phantoms.deformation import random_warp
    from mslesion.phantoms.ms import RELAPSE_NEW_LESIONS

    anat, counts = load_anatomy(), {}
    for cohort in ("ms", "ms_relapse"):
        counts[cohort] = []
        for seed in range(4):
            warp = random_warp(np.random.default_rng(100 + seed))
            _, sessions = cohort_sessions(cohort, np.random.default_rng(seed), anat, warp, 3, np.random.default_rng(7))
            for session in sessions[1:]:
                records = [b.record for b in session.blobs if b.record and b.record["kind"] == "ms"]
                counts[cohort].append((sum(r["new"] for r in records), sum(r["enlarging"] for r in records)))
    relapse = counts["ms_relapse"]
    assert all(RELAPSE_NEW_LESIONS[0] <= new <= RELAPSE_NEW_LESIONS[1] for new, _ in relapse)
    assert sum(new for new, _ in relapse) >= 2 * sum(new for new, _ in counts["ms"])
    assert sum(grown for _, grown in relapse) > sum(grown for _, grown in counts["ms"])
