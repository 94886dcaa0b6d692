"""Shared fixtures: phantom datastores and a real MONAI Label server driven over HTTP."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mslesion.dev.serverproc import ServerProcess


def tree_digest(folder: Path, skip=("datastore_v2.json", ".lock")) -> dict[str, str]:
    """sha256 of every file under a folder, by relative path (the datastore index itself excluded)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in skip:
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """Three MS phantom subjects (FLAIR, T1w): subject 01 labelled, all ground truth kept aside."""
    from mslesion.phantoms import PhantomOptions, write_cohort

    root = tmp_path_factory.mktemp("phantoms")
    write_cohort(
        root / "studies", cohort="ms", subjects=3, sessions=1, seed=11, labelled=1 / 3, truth_dir=root / "truth",
        options=PhantomOptions(sequences=("FLAIR", "T1w")),
    )
    return root


@pytest.fixture(scope="session")
def server(phantom_root, tmp_path_factory):
    """The real msapp server on a copy of the phantom datastore, on a free loopback port."""
    srv = ServerProcess.on_a_copy(phantom_root / "studies", tmp_path_factory.mktemp("server"),
                                  env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(server.url)


# -- DICOMweb: one real Orthanc and one phantom cohort in it per test process (mslesion.dev.fixtures) --------------


@pytest.fixture(scope="session")
def orthanc():
    from mslesion.dev.fixtures import shared_orthanc

    return shared_orthanc()


@pytest.fixture(scope="session")
def phantoms(orthanc):
    from mslesion.dev.fixtures import shared_phantoms

    return shared_phantoms()
