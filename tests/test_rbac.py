"""Roles against a real OpenID Connect issuer on loopback (the npm ``oidc-provider`` package, scripts/oidc/).

The msapp server runs with MONAI Label's auth enabled (MONAI_LABEL_AUTH_*), reads the realm's public key the way
Keycloak publishes it, and logs users in through its own ``POST /auth/token`` (what Slicer does). Three users:
a viewer (monailabel-user: may look and infer), an annotator (+ monailabel-annotator: may also save labels and
upload images) and an admin (all roles: may also train, delete and manage weights).

The issuer is installed from scripts/oidc/package-lock.json into scripts/oidc/node_modules (git-ignored) the
first time; the tests are skipped, saying why, only where Node.js or npm is missing or the install fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import select
import shutil
import subprocess
import time

import jwt
import numpy as np
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from filelock import FileLock
from monailabel.client import MONAILabelClient

from mslesion.dev.serverproc import ROOT, ServerProcess

pytestmark = [pytest.mark.server]

OIDC = ROOT / "scripts" / "oidc"
ADMIN, REVIEWER, ANNOTATOR, USER = "monailabel-admin", "monailabel-reviewer", "monailabel-annotator", "monailabel-user"
USERS = {
    "ulla": {"password": "viewer-pw", "roles": [USER]},
    "anna": {"password": "annotator-pw", "roles": [USER, ANNOTATOR]},
    "adam": {"password": "admin-pw", "roles": [ADMIN, REVIEWER, ANNOTATOR, USER]},
}


def install_issuer() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are needed to run the OpenID Connect issuer of the role tests (scripts/oidc)")
    with FileLock(str(OIDC / ".install.lock")):
        if (OIDC / "node_modules" / "oidc-provider" / "package.json").exists():
            return
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=OIDC,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"could not install the OpenID Connect issuer (npm ci in scripts/oidc): {done.stderr[-400:]}")


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    install_issuer()
    log = tmp_path_factory.mktemp("oidc") / "issuer.log"
    process = subprocess.Popen(["node", "issuer.js", "--port", "0"], cwd=OIDC, stdout=subprocess.PIPE,
                               stderr=log.open("w"), env=dict(os.environ, MSAPP_OIDC_USERS=json.dumps(USERS)),
                               text=True)
    try:
        deadline, line = time.time() + 60, ""
        while time.time() < deadline and not line.startswith("{"):
            if process.poll() is not None:
                raise RuntimeError(f"the issuer exited: {log.read_text()[-2000:]}")
            if select.select([process.stdout], [], [], 1)[0]:
                line = process.stdout.readline()
        yield json.loads(line)
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def server(issuer, phantom_root, tmp_path_factory):
    env = {
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "MONAI_LABEL_AUTH_ENABLE": "true",
        "MONAI_LABEL_AUTH_REALM_URI": issuer["realm"],
        "MONAI_LABEL_AUTH_CLIENT_ID": "monailabel-app",
    }
    srv = ServerProcess.on_a_copy(phantom_root / "studies", tmp_path_factory.mktemp("rbac"), env=env)
    yield srv
    srv.stop()


def login(server, user: str) -> dict:
    answer = requests.post(f"{server.url}/auth/token", timeout=30,
                           data={"username": user, "password": USERS[user]["password"]})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def label_upload(server, headers, image="sub-02_ses-01_FLAIR"):
    import nibabel as nib

    reference = nib.load(server.studies / f"{image}.nii.gz")
    data = np.zeros(reference.shape, np.uint8)
    data[90:96, 100:106, 80:86] = 1
    path = server.studies.parent / "label-upload.nii.gz"
    nib.save(nib.Nifti1Image(data, reference.affine), path)
    with path.open("rb") as f:
        return requests.put(f"{server.url}/datastore/label", params={"image": image, "tag": "final"},
                            files={"label": ("label.nii.gz", f)}, headers=headers, timeout=120)


def forged(payload: dict, algorithm: str = "RS256", key=None) -> str:
    if key is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(payload, key, algorithm=algorithm)


def hmac_forged(payload: dict, secret: bytes) -> str:
    """An HS256 token keyed with the realm's *public* key (the algorithm-confusion attack); PyJWT will not make one."""
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = json.dumps({"alg": "HS256", "typ": "JWT"}).encode()
    signing_input = f"{part(header)}.{part(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


def admin_claims(issuer) -> dict:
    return {"preferred_username": "mallory", "realm_access": {"roles": [ADMIN, ANNOTATOR, USER]},
            "iss": issuer["issuer"], "exp": int(time.time()) + 600}


def test_without_a_valid_token_everything_is_401(server, issuer):
    realm_key = requests.get(issuer["realm"], timeout=10).json()["public_key"]
    pem = f"-----BEGIN PUBLIC KEY-----\n{realm_key}\n-----END PUBLIC KEY-----"
    bad_tokens = {
        "none": None,
        "garbage": "Bearer not-a-jwt",
        "foreign key": f"Bearer {forged(admin_claims(issuer))}",
        "alg none": "Bearer " + jwt.encode(admin_claims(issuer), None, algorithm="none"),
        "HS256 keyed with the public key": f"Bearer {hmac_forged(admin_claims(issuer), pem.encode())}",
    }
    calls = [
        ("GET", "/info/", {}),
        ("GET", "/datastore/", {}),
        ("POST", "/infer/flair_lesion", {"params": {"image": "sub-02_ses-01_FLAIR"}}),
        ("POST", "/train/flair_lesion", {"json": {}}),
        ("DELETE", "/datastore/image", {"params": {"id": "sub-02_ses-01_FLAIR"}}),
        ("POST", "/activelearning/random", {}),
    ]
    for what, token in bad_tokens.items():
        headers = {"Authorization": token} if token else {}
        for method, path, kwargs in calls:
            answer = requests.request(method, f"{server.url}{path}", headers=headers, timeout=30, **kwargs)
            assert answer.status_code == 401, (what, method, path, answer.status_code, answer.text[:200])
    assert label_upload(server, {}).status_code == 401
    assert (server.studies / "sub-02_ses-01_FLAIR.nii.gz").exists()


def test_login_through_the_server(server):
    wrong = requests.post(f"{server.url}/auth/token", data={"username": "anna", "password": "guess"}, timeout=30)
    assert wrong.status_code == 401 and "wrong username or password" in wrong.json()["detail"].lower()
    headers = login(server, "anna")
    me = requests.get(f"{server.url}/auth/token/valid", headers=headers, timeout=30).json()
    assert me["username"] == "anna" and set(me["roles"]) == {USER, ANNOTATOR}
    # the same login as Slicer's client library does it
    client = MONAILabelClient(server.url)
    assert client.auth_enabled() and not client.auth_valid_token()
    client.update_auth(client.auth_token("anna", USERS["anna"]["password"]))
    assert client.auth_valid_token() and "flair_lesion" in client.info()["models"]


def test_a_viewer_can_infer_but_not_save(server):
    headers = login(server, "ulla")
    assert requests.get(f"{server.url}/info/", headers=headers, timeout=30).status_code == 200
    answer = requests.post(f"{server.url}/infer/flair_lesion", params={"image": "sub-03_ses-01_FLAIR",
                                                                     "output": "json"}, headers=headers, timeout=300)
    assert answer.status_code == 200, answer.text[:300]
    refused = label_upload(server, headers)
    assert refused.status_code == 403 and ANNOTATOR in refused.json()["detail"]


def test_an_annotator_can_infer_and_save_labels_but_not_train_or_delete(server):
    headers = login(server, "anna")
    answer = requests.post(f"{server.url}/infer/flair_lesion", params={"image": "sub-02_ses-01_FLAIR",
                                                                     "output": "json"}, headers=headers, timeout=300)
    assert answer.status_code == 200, answer.text[:300]
    saved = label_upload(server, headers)
    assert saved.status_code == 200, saved.text
    info = requests.get(f"{server.url}/datastore/label/info", params={"label": "sub-02_ses-01_FLAIR", "tag": "final"},
                        headers=headers, timeout=30).json()
    assert info["user"] == "anna"  # who saved it is recorded with the label
    forbidden = [
        ("POST", "/train/flair_lesion", {"json": {"max_epochs": 1}}),
        ("POST", "/train/", {"json": {}}),
        ("DELETE", "/train/", {}),
        ("DELETE", "/datastore/label", {"params": {"id": "sub-02_ses-01_FLAIR", "tag": "final"}}),
        ("DELETE", "/datastore/image", {"params": {"id": "sub-03_ses-01_FLAIR"}}),
        ("PUT", "/model/flair_lesion", {"files": {"file": ("w.pt", b"x")}}),
        ("DELETE", "/model/flair_lesion", {}),
        ("POST", "/batch/infer/flair_lesion", {}),
        ("GET", "/logs/", {}),
        ("POST", "/reload", {}),
    ]
    for method, path, kwargs in forbidden:
        answer = requests.request(method, f"{server.url}{path}", headers=headers, timeout=30, **kwargs)
        assert answer.status_code == 403, (method, path, answer.status_code, answer.text[:200])
        assert ADMIN in answer.json()["detail"]
    assert (server.studies / "labels" / "final" / "sub-02_ses-01_FLAIR.nii.gz").exists()
    assert (server.studies / "sub-03_ses-01_FLAIR.nii.gz").exists()


def test_an_admin_can_train_and_delete(server):
    headers = login(server, "adam")
    if label_upload(server, headers).status_code != 200:  # two labelled studies, whichever test ran before
        pytest.fail("the admin could not save a label")
    started = requests.post(f"{server.url}/train/flair_lesion", json={"max_epochs": 1, "patches_per_study": 2},
                            headers=headers, timeout=60)
    assert started.status_code == 200 and started.json()["status"] in ("SUBMITTED", "RUNNING"), started.text
    stopped = requests.delete(f"{server.url}/train/", headers=headers, timeout=60)
    assert stopped.status_code == 200
    assert requests.get(f"{server.url}/logs/", params={"lines": 5, "text": True}, headers=headers,
                        timeout=30).status_code == 200
    answer = requests.delete(f"{server.url}/datastore/label", params={"id": "sub-02_ses-01_FLAIR", "tag": "final"},
                             headers=headers, timeout=30)
    assert answer.status_code == 200
    assert not (server.studies / "labels" / "final" / "sub-02_ses-01_FLAIR.nii.gz").exists()
    # an annotator uploads an image, only the admin can remove it
    anna = login(server, "anna")
    with (server.studies / "sub-03_ses-01_T1w.nii.gz").open("rb") as f:
        uploaded = requests.put(f"{server.url}/datastore/image", params={"image": "sub-04_ses-01_T1w"},
                                files={"file": ("x.nii.gz", f)}, headers=anna, timeout=120)
    assert uploaded.status_code == 200, uploaded.text
    assert requests.delete(f"{server.url}/datastore/image", params={"id": "sub-04_ses-01_T1w"}, headers=anna,
                           timeout=30).status_code == 403
    assert requests.delete(f"{server.url}/datastore/image", params={"id": "sub-04_ses-01_T1w"}, headers=headers,
                           timeout=30).status_code == 200
    assert not (server.studies / "sub-04_ses-01_T1w.nii.gz").exists()


def test_the_signing_key_is_read_from_the_realm_document(issuer):
    document = requests.get(issuer["realm"], timeout=10).json()
    key = serialization.load_der_public_key(base64.b64decode(document["public_key"]))
    assert key.key_size >= 2048
    discovery = requests.get(f"{issuer['realm']}/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == issuer["issuer"] and discovery["token_endpoint"].startswith(issuer["realm"])

