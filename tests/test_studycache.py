"""The bounded cache of decoded studies: same images as a fresh read, private copies, invalidation, the bound."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImaged

from mslesion.studycache import CachedLoadImaged, StudyCache, configure, file_key


def write_volume(path, seed: int, shape=(12, 10, 8)) -> str:
    data = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(np.int16)
    affine = np.diag([1.0, 1.2, 1.5, 1.0])
    affine[:3, 3] = (-5, 3, 7)
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


def size_of(shape=(12, 10, 8)) -> int:
    return 4 * int(np.prod(shape))  # float32


def test_cached_image_equals_a_fresh_read(tmp_path):
    path = write_volume(tmp_path / "a.nii.gz", 0)
    load = CachedLoadImaged(keys="image", cache=StudyCache(10 * size_of()))
    fresh = LoadImaged(keys="image", reader="NibabelReader", dtype=np.float32)({"image": path})["image"]
    first, second = load({"image": path})["image"], load({"image": path})["image"]
    assert load.cache.misses == 1 and load.cache.hits == 1
    for image in (first, second):
        assert torch.equal(image.as_tensor(), fresh.as_tensor())
        assert torch.allclose(image.affine, fresh.affine)
        assert image.meta["filename_or_obj"] == fresh.meta["filename_or_obj"]
        assert np.array_equal(image.meta["original_affine"], fresh.meta["original_affine"])


def test_callers_get_private_copies(tmp_path):
    path = write_volume(tmp_path / "a.nii.gz", 0)
    load = CachedLoadImaged(keys="image", cache=StudyCache(10 * size_of()))
    first = load({"image": path})["image"]
    expected = first.clone()
    first.mul_(0)
    first.meta["spatial_shape"] = "changed"
    again = load({"image": path})["image"]
    assert torch.equal(again.as_tensor(), expected.as_tensor())
    assert not isinstance(again.meta["spatial_shape"], str)


def test_a_replaced_file_is_read_again(tmp_path):
    path = write_volume(tmp_path / "a.nii.gz", 0)
    load = CachedLoadImaged(keys="image", cache=StudyCache(10 * size_of()))
    before = load({"image": path})["image"]
    key = file_key(path)
    write_volume(tmp_path / "a.nii.gz", 1)
    os.utime(path, ns=(key[1] + 10**9, key[1] + 10**9))  # a new mtime even on a coarse clock
    after = load({"image": path})["image"]
    fresh = LoadImaged(keys="image", reader="NibabelReader", dtype=np.float32)({"image": path})["image"]
    assert load.cache.misses == 2
    assert torch.equal(after.as_tensor(), fresh.as_tensor()) and not torch.equal(after.as_tensor(), before.as_tensor())


def test_bound_evicts_least_recently_used(tmp_path):
    paths = [write_volume(tmp_path / f"{i}.nii.gz", i) for i in range(3)]
    cache = StudyCache(2 * size_of())
    load = CachedLoadImaged(keys="image", cache=cache)
    load({"image": paths[0]})
    load({"image": paths[1]})
    load({"image": paths[0]})  # 0 is now the most recent
    load({"image": paths[2]})  # evicts 1
    assert len(cache) == 2 and cache.size_bytes == 2 * size_of()
    hits = cache.hits
    load({"image": paths[0]})
    assert cache.hits == hits + 1
    load({"image": paths[1]})
    assert cache.hits == hits + 1  # 1 was evicted: read again


def test_zero_bound_turns_the_cache_off(tmp_path):
    path = write_volume(tmp_path / "a.nii.gz", 0)
    cache = StudyCache(0)
    load = CachedLoadImaged(keys="image", cache=cache)
    load({"image": path})
    load({"image": path})
    assert len(cache) == 0 and cache.hits == 0


def test_an_image_larger_than_the_bound_is_not_kept(tmp_path):
    path = write_volume(tmp_path / "a.nii.gz", 0)
    cache = StudyCache(size_of() - 1)
    CachedLoadImaged(keys="image", cache=cache)({"image": path})
    assert len(cache) == 0


def test_configure_resizes_the_shared_cache():
    from mslesion import studycache

    before = studycache.STUDIES.max_bytes
    try:
        configure("1.5")
        assert studycache.STUDIES.max_bytes == int(1.5 * 2**20)
        configure(None)
        assert studycache.STUDIES.max_bytes == int(1.5 * 2**20)
    finally:
        studycache.STUDIES.resize(before)


def test_missing_file_is_the_loader_error(tmp_path):
    load = CachedLoadImaged(keys="image", cache=StudyCache(10 * size_of()))
    with pytest.raises(Exception, match="missing"):
        load({"image": str(tmp_path / "missing.nii.gz")})
