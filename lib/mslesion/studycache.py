"""A bounded in-process cache of decoded studies, so that a second request on the same image does not decompress
and decode the NIfTI again (a 1 mm brain is ~10 MB of gzip and ~0.5 s of decoding on a 2-core CPU).

Entries are keyed on the file's real path, modification time and size, so an image replaced in the datastore
(PUT /datastore/image) is read afresh; the least recently used entries go first when the decoded arrays would
exceed the byte bound. ``MSAPP_STUDY_CACHE_MB`` (or ``configure``) sets the bound; 0 turns the cache off.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, LoadImaged, MapTransform

DEFAULT_MAX_MB = 512  # ~14 decoded 1 mm brains in float32
ENV_MAX_MB = "MSAPP_STUDY_CACHE_MB"


def file_key(path: str) -> tuple[str, int, int]:
    """(real path, mtime in ns, size): changes whenever the file is replaced or rewritten."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    return real, stat.st_mtime_ns, stat.st_size


def nbytes(value: torch.Tensor) -> int:
    return value.element_size() * value.numel()


class StudyCache:
    """Least-recently-used decoded images, bounded by the bytes of their arrays; safe across request threads."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[tuple, MetaTensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> MetaTensor | None:
        """A private copy of the cached image (callers' transforms may modify what they get)."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        return MetaTensor(value.as_tensor().clone(), meta=copy.deepcopy(dict(value.meta)))

    def put(self, key: tuple, value: MetaTensor) -> None:
        size = nbytes(value)
        if size > self.max_bytes:
            return
        stored = MetaTensor(value.as_tensor().detach().cpu().clone(), meta=copy.deepcopy(dict(value.meta)))
        with self._lock:
            if key in self._entries:
                self._bytes -= nbytes(self._entries.pop(key))
            self._entries[key] = stored
            self._bytes += size
            while self._bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= nbytes(evicted)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max(0, int(max_bytes))
            while self._bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= nbytes(evicted)


def _max_bytes_from_env() -> int:
    value = os.environ.get(ENV_MAX_MB, "")
    try:
        return int(float(value) * 2**20) if value.strip() else DEFAULT_MAX_MB * 2**20
    except ValueError:
        return DEFAULT_MAX_MB * 2**20


STUDIES = StudyCache(_max_bytes_from_env())


def configure(max_mb: float | str | None) -> None:
    """Sets the bound of the shared cache (e.g. from the app's ``--conf study_cache_mb``); None keeps it."""
    if max_mb is not None and str(max_mb).strip():
        STUDIES.resize(int(float(max_mb) * 2**20))


class CachedLoadImaged(MapTransform):
    """Loads image paths like ``LoadImaged`` (nibabel, float32, MetaTensor), serving the images it decoded before
    from a ``StudyCache``."""

    def __init__(self, keys: KeysCollection, cache: StudyCache | None = None, dtype=np.float32,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.cache = STUDIES if cache is None else cache
        self.loader = LoadImage(reader="NibabelReader", dtype=dtype, image_only=True)

    def load(self, path):
        if not isinstance(path, str) or self.cache.max_bytes == 0 or not os.path.isfile(path):
            return self.loader(path)
        key = file_key(path)  # taken before reading: a file replaced meanwhile is read again next time
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        image = self.loader(path)
        if isinstance(image, MetaTensor):
            self.cache.put(key, image)
        return image

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.load(d[key])
        return d


def load_images(keys: KeysCollection, cached: bool) -> MapTransform:
    """How the pipelines read NIfTI paths (nibabel, float32): through the shared cache at inference (``cached``),
    directly where many studies are read once (training, offline extraction) and would only churn the cache."""
    return CachedLoadImaged(keys) if cached else LoadImaged(keys=keys, reader="NibabelReader", dtype=np.float32)
