"""Files written so that a reader sees either the old content or all of the new one, never half a file.

The one write-to-temp-then-rename of the project: the temp file lives in the destination's folder (``os.replace``
is atomic only within one file system), is fsynced before the rename, the folder is fsynced after it, and the temp
file is removed when anything fails. Callers choose the temp name (``prefix``/``suffix``) so that their own
clean-up of leftovers (datastore start-up, weights publishing) recognises it.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

PathLike = str | os.PathLike


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_with(dest: PathLike, write: Callable[[str], Any], prefix: str | None = None, suffix: str = ".tmp",
               mode: int | None = None, parents: bool = False) -> None:
    """``write(temp_path)`` fills a temp file beside ``dest``, which then replaces ``dest`` (fsync, rename, fsync).

    ``prefix`` defaults to ``.<dest name>.``; ``mode`` is applied before the rename; without one the file keeps the
    mode of the one it replaces, and a new file is 0644 (mkstemp creates 0600, which a server run by another user
    cannot read); ``parents`` creates dest's folder first."""
    dest = os.fspath(dest)
    folder = os.path.dirname(dest) or "."
    if parents:
        os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(dest)}." if prefix is None else prefix,
                               suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        _fsync_path(tmp)
        if mode is None:
            mode = os.stat(dest).st_mode & 0o777 if os.path.exists(dest) else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(dest: PathLike, data: bytes, **naming) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            out.write(data)

    write_with(dest, write, **naming)


def write_text(dest: PathLike, text: str, **naming) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as out:
            out.write(text)

    write_with(dest, write, **naming)


def copy_file(src: PathLike, dest: PathLike, compress: bool = False, **naming) -> None:
    """``src`` copied to ``dest`` (gzip-compressed, level 6, reproducible, when ``compress``)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as out, open(src, "rb") as source:
            if compress:
                with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as zipped:
                    shutil.copyfileobj(source, zipped, 1 << 20)
            else:
                shutil.copyfileobj(source, out, 1 << 20)

    write_with(dest, write, **naming)


def save_torch(dest: PathLike, payload: Any, **naming) -> None:
    """``torch.save(payload)`` to ``dest``."""
    import torch

    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            torch.save(payload, out)

    write_with(dest, write, **naming)


def save_nifti(dest: PathLike, image, **naming) -> None:
    """A nibabel image saved to ``dest``; the temp name keeps dest's extension so nibabel picks the same format."""
    import nibabel as nib

    name = os.fspath(dest)
    naming.setdefault("suffix", ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1])
    write_with(dest, lambda tmp: nib.save(image, tmp), **naming)
