"""Hugging Face hub distribution end to end, against a real hub server (olah) on 127.0.0.1, and the zip's checksum.

Each task's bundle is packaged once (untrained 64x64 network) and written as a hub repository
``transfuse-hub/transfuse_<task>`` with :func:`write_hub_repo` into the server's mirror folder, as
``transfuse-package --hub-dir`` does. Users' commands then run as subprocesses with ``HF_ENDPOINT`` pointing at the
server: ``python -m monai.bundle download --source huggingface_hub`` (latest and a given version) and
``transfuse-download``. The downloaded folders are checked (layout, README front matter, tags, sha256 of the weights)
and run: inference on real images, in-process from the downloaded folder. The zip's published sha256 is tested
with a plain HTTP server on 127.0.0.1 (download_zip in-process: it needs no hub endpoint).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import SMALL, MonaiLabelServer, check_task_masks, require_monailabel, run_command, run_workflow, serve_folder, task_inputs
from transfuse_bundle.files import sha256
from transfuse_bundle.tools.bundle_folder import read_json_object
from transfuse_bundle.tools.cli.package_bundle import main as package_main
from transfuse_bundle.tools.download import DownloadError, download_zip, verify_large_files
from transfuse_bundle.tools.hub import LATEST_TAG, write_hub_repo
from transfuse_bundle.tools.packaging import PackagingError, package_bundle
from transfuse_bundle.tools.tasks import task_names

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ORG = "transfuse-hub"
FRONT_MATTER = {"tags": ["monai", "medical"], "library_name": "monai", "license": "apache-2.0"}
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]


def _repo_id(task: str) -> str:
    return f"{ORG}/transfuse_{task}"


@pytest.fixture(scope="module")
def published(hub_server, tmp_path_factory):
    """Every task packaged and written as a hub repository the server serves; polyp gets a second commit tagged
    ``0.2.0`` and ``latest_version`` (a later release), so "latest" and "0.1.0" are different downloads."""
    dist = tmp_path_factory.mktemp("dist")
    packages = {}
    for task in task_names():
        package = package_bundle(task, out=dist, init_weights=True, overrides=SMALL)
        repo = write_hub_repo(package.zip_path, hub_server.repo_dir(_repo_id(task)), _repo_id(task),
                              latest=task != "polyp", endpoint=hub_server.url)
        packages[task] = (package, repo)
    polyp = packages["polyp"][1].path
    meta_path = polyp / "configs" / "metadata.json"
    meta = read_json_object(meta_path)
    meta["version"] = "0.2.0"
    meta["changelog"] = {"0.2.0": "a later release", **meta["changelog"]}
    meta_path.write_text(json.dumps(meta, indent=4))
    for args in (["commit", "-q", "-am", "0.2.0"], ["tag", "0.2.0"], ["tag", LATEST_TAG]):
        run_command([*GIT, *args], cwd=polyp)
    return packages


def _download(hub_server, work: Path, task: str, *extra: str) -> Path:
    """The user's command: ``python -m monai.bundle download --source huggingface_hub`` against the hub server."""
    bundles = work / "bundles"
    work.mkdir(exist_ok=True)
    run_command([sys.executable, "-m", "monai.bundle", "download", "--name", f"transfuse_{task}", "--source",
                 "huggingface_hub", "--repo", _repo_id(task), "--bundle_dir", str(bundles), *extra],
                cwd=work, env=hub_server.env(), timeout=300)
    return bundles / f"transfuse_{task}"


def _front_matter(readme: Path) -> tuple[dict, str]:
    text = readme.read_text()
    assert text.startswith("---\n"), f"{readme} has no front matter block"
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _check_hub_bundle(bundle: Path, version: str) -> None:
    """The layout of a downloaded hub bundle: README with MONAI's front matter over the model card, LICENSE,
    metadata of ``version``, the weights with the sha256 of large_files.yml, no tools."""
    for required in ("README.md", "LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md",
                     "models/model.pt", "large_files.yml", "transfuse_bundle/__init__.py"):
        assert (bundle / required).is_file(), f"{required} missing from the hub bundle"
    front, body = _front_matter(bundle / "README.md")
    assert front == FRONT_MATTER
    assert body == (bundle / "docs" / "README.md").read_text()
    assert read_json_object(bundle / "configs" / "metadata.json")["version"] == version
    [entry] = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    assert entry["path"] == "models/model.pt" and entry["hash_val"] == sha256(bundle / "models" / "model.pt")
    assert not (bundle / "transfuse_bundle" / "tools").exists()


def test_hub_repository_layout_and_tags(published, hub_server):
    """The written repositories as the server reports them: the version tags, latest_version where asked, the
    bundle folder at the root of the tagged tree."""
    for task, (package, repo) in published.items():
        refs = json.load(urllib.request.urlopen(f"{hub_server.url}/api/models/{_repo_id(task)}/refs", timeout=30))
        tags = {t["name"]: t["targetCommit"] for t in refs["tags"]}
        expected = {"0.1.0", LATEST_TAG} | ({"0.2.0"} if task == "polyp" else set())
        assert set(tags) == expected, f"{task}: tags {sorted(tags)}"
        assert tags["0.1.0"] == repo.commit
        assert (tags[LATEST_TAG] == tags["0.2.0"] != repo.commit) if task == "polyp" else tags[LATEST_TAG] == repo.commit
        listed = subprocess.run(["git", "ls-tree", "--name-only", "0.1.0"], cwd=repo.path, capture_output=True,
                                text=True, check=True).stdout.split()
        assert listed == ["LICENSE", "README.md", "configs", "docs", "large_files.yml", "models", "transfuse_bundle"]
        with zipfile.ZipFile(package.zip_path) as zf:  # the tree is the zip's bundle folder, plus README and listing
            zipped = sorted(n.split("/", 1)[1] for n in zf.namelist() if not n.endswith("/"))
        tree = subprocess.run(["git", "ls-tree", "-r", "--name-only", "0.1.0"], cwd=repo.path, capture_output=True,
                              text=True, check=True).stdout.split()
        assert sorted(set(tree) - {"README.md", "large_files.yml"}) == zipped


def test_polyp_downloads_latest_and_a_version_then_infers(published, hub_server, tmp_path):
    """``monai.bundle download --source huggingface_hub`` without a version fetches latest_version (0.2.0), with
    ``--version 0.1.0`` that tag; the downloaded folder infers on real Kvasir-SEG images."""
    latest = _download(hub_server, tmp_path / "latest", "polyp")
    _check_hub_bundle(latest, "0.2.0")
    given = _download(hub_server, tmp_path / "given", "polyp", "--version", "0.1.0")
    _check_hub_bundle(given, "0.1.0")
    package = published["polyp"][0]
    with zipfile.ZipFile(package.zip_path) as zf:
        assert zf.read("transfuse_polyp/models/model.pt") == (given / "models" / "model.pt").read_bytes()
    inputs = task_inputs("polyp", tmp_path / "inputs", 2)
    run_workflow("inference.json", source=given, bundle_root=str(given), dataset_dir=str(inputs[0].parent),
                 output_dir=str(tmp_path / "masks"))
    check_task_masks("polyp", inputs, tmp_path / "masks", 1)


def test_every_task_downloads_from_the_hub_and_infers(published, hub_server, tmp_path):
    """``monai.bundle.download(source="huggingface_hub")`` of every other task (one interpreter for all), then
    inference from each downloaded folder on the task's real inputs."""
    tasks = [t for t in task_names() if t != "polyp"]
    # the first task at its version tag, the others at latest_version
    script = ("import sys\nfrom monai.bundle import download\n"
              "for index, task in enumerate(sys.argv[2:]):\n"
              f"    download(name='transfuse_' + task, source='huggingface_hub', repo='{ORG}/transfuse_' + task, "
              "version='0.1.0' if index == 0 else None, bundle_dir=sys.argv[1], progress=False)\n")
    run_command([sys.executable, "-c", script, str(tmp_path / "bundles"), *tasks], cwd=tmp_path, env=hub_server.env(),
                timeout=300)
    for task in tasks:
        bundle = tmp_path / "bundles" / f"transfuse_{task}"
        _check_hub_bundle(bundle, "0.1.0")
        inputs = task_inputs(task, tmp_path / task / "inputs", 1)
        out = tmp_path / task / "masks"
        run_workflow("inference.json", source=bundle, bundle_root=str(bundle), dataset_dir=str(inputs[0].parent),
                     output_dir=str(out))
        check_task_masks(task, inputs, out, read_json_object(bundle / "configs" / "train.json")["out_channels"])


CLI_CASES = """
import contextlib, io, json, sys
from transfuse_bundle.tools.cli.download import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_transfuse_download_refuses_wrong_version_unknown_repo_and_tampered_weights(published, hub_server, tmp_path):
    """``transfuse-download --repo`` (its main, in one interpreter for the four cases): each refusal is one line
    naming the repository and what is wrong, and leaves the bundle folder empty; then a good download."""
    bundles = str(tmp_path / "bundles")
    # a weight file replaced on the hub after publishing (its large_files.yml still lists the published sha256)
    tampered_id = f"{ORG}/transfuse_tampered"
    tampered = hub_server.repo_dir(tampered_id)
    shutil.copytree(published["isic2017"][1].path, tampered)
    weights = tampered / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    run_command([*GIT, "commit", "-q", "-am", "replace the weights"], cwd=tampered)
    run_command([*GIT, "tag", "-f", LATEST_TAG], cwd=tampered)
    cases = [["--repo", _repo_id("polyp"), "--version", "9.9.9", "--bundle_dir", bundles],
             ["--repo", f"{ORG}/no_such_bundle", "--bundle_dir", bundles],
             ["--repo", tampered_id, "--bundle_dir", bundles],
             ["--repo", _repo_id("polyp"), "--version", "0.1.0", "--bundle_dir", bundles]]
    proc = run_command([sys.executable, "-c", CLI_CASES, json.dumps(cases)], cwd=tmp_path, env=hub_server.env(),
                       timeout=300)
    (version, unknown, changed, good) = json.loads(proc.stdout.strip().splitlines()[-1])
    assert version == [1, f"error: hub repository {_repo_id('polyp')} has no version '9.9.9' (its versions: 0.1.0, 0.2.0)\n"]
    assert unknown == [1, f"error: hub repository {ORG}/no_such_bundle was not found at {hub_server.url} "
                          "(or it is private: set HF_TOKEN to a token that can read it)\n"]
    assert changed[0] == 1 and changed[1].count("\n") == 1 and changed[1].startswith(
        f"error: {tampered_id}@latest: models/model.pt has sha256 {hashlib.sha256(data).hexdigest()}, its "
        "large_files.yml says"), changed
    assert good == [0, ""], good
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == ["transfuse_polyp"]  # nothing else, no staging
    _check_hub_bundle(tmp_path / "bundles" / "transfuse_polyp", "0.1.0")
    assert not (tmp_path / "bundles" / "transfuse_polyp" / ".cache").exists()


def test_publish_needs_a_token_before_any_work_and_reports_the_hub_s_refusal(published, hub_server, tmp_path, capsys,
                                                                              monkeypatch):
    """No HF_TOKEN: one line, no package written. With a token, the read-only hub refuses the upload (olah serves
    mirrors, it takes no pushes): one line naming the repository, from MONAI's push_to_hf_hub."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tmp_path / "dist"
    assert package_main(["--task", "polyp", "--init-weights", "--out", str(out), "--hub-repo", _repo_id("polyp"),
                         "--publish", "private"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: publishing needs a hub token with write access in the environment variable HF_TOKEN "
                   "(it is not set): export HF_TOKEN=hf_..."], err
    assert not out.exists()
    # a token the hub cannot check (here: the suite's HF_HUB_OFFLINE) is refused before the package is made too
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert package_main(["--task", "polyp", "--init-weights", "--out", str(out), "--hub-repo", _repo_id("polyp"),
                         "--publish", "public"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot publish to https://huggingface.co with the token in HF_TOKEN: "), err
    assert not out.exists()

    # the user's command against the real hub, which has no accounts: one console line, before any work
    proc = run_command([sys.executable, str(REPO / "scripts" / "package_bundle.py"), "--task", "polyp", "--init-weights",
                        "--out", str(out), "--hub-repo", _repo_id("polyp"), "--publish", "private"], cwd=tmp_path,
                       env=hub_server.env(HF_TOKEN="hf_test_token"), timeout=300, check=False)
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.splitlines() == [
        f"error: cannot publish to {hub_server.url} with the token in HF_TOKEN: Server error '504 Gateway Timeout' "
        f"for url '{hub_server.url}/api/whoami-v2'"], proc.stderr
    assert not out.exists()

    zip_path = published["hip"][0].zip_path
    script = ("import sys\nfrom transfuse_bundle.tools.hub import publish\n"
              "try:\n    publish(sys.argv[1], sys.argv[2], private=True, latest=True)\n"
              "except Exception as e:\n    print(type(e).__name__, e)\n")
    proc = run_command([sys.executable, "-c", script, str(zip_path), f"{ORG}/transfuse_new"], cwd=tmp_path,
                       env=hub_server.env(HF_TOKEN="hf_test_token"), timeout=300)
    assert proc.stdout.startswith(f"PackagingError publishing transfuse_hip 0.1.0 to {hub_server.url}/{ORG}/transfuse_new failed:"), proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1


def test_hub_dir_refuses_an_existing_version_and_foreign_folders(published, tmp_path):
    package, repo = published["hip"]
    head = repo.commit
    with pytest.raises(PackagingError, match=r"already has version 0\.1\.0 \(git tag 0\.1\.0\)"):
        write_hub_repo(package.zip_path, repo.path, _repo_id("hip"))
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(PackagingError, match=r"is not empty and not a git repository"):
        write_hub_repo(package.zip_path, folder, _repo_id("hip"))
    assert (folder / "notes.txt").read_text() == "mine" and sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    dirty = tmp_path / "dirty"
    shutil.copytree(repo.path, dirty)
    (dirty / "configs" / "inference.json").write_text("{}")
    with pytest.raises(PackagingError, match=r"has uncommitted changes \(configs/inference\.json, \.\.\.\)"):
        write_hub_repo(package.zip_path, dirty, _repo_id("hip"))
    with pytest.raises(PackagingError, match=r"is not of the form OWNER/NAME"):
        write_hub_repo(package.zip_path, tmp_path / "new", "no-slash")
    assert not (tmp_path / "new").exists()
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo.path, capture_output=True, text=True).stdout.strip() == head


def test_monailabel_serves_a_bundle_downloaded_from_the_hub(published, hub_server, tmp_path):
    """An app built from the downloaded folder: ``transfuse-download --repo`` into ``APP/model/`` of MONAI Label's
    monaibundle app (its own zoo download cannot name a hub repository), then the real server serves it."""
    from transfuse_bundle.monailabel.app import ensure_app

    require_monailabel()
    app = ensure_app(tmp_path / "apps" / "monaibundle")
    run_command([sys.executable, str(REPO / "scripts" / "download.py"), "--repo", _repo_id("polyp"), "--version", "0.1.0",
                 "--bundle_dir", str(app / "model")], cwd=tmp_path, env=hub_server.env(), timeout=300)
    _check_hub_bundle(app / "model" / "transfuse_polyp", "0.1.0")
    studies = tmp_path / "studies"
    studies.mkdir()
    image = task_inputs("polyp", tmp_path / "inputs", 1)[0]
    shutil.copyfile(image, studies / image.name)
    server = MonaiLabelServer(app, studies, ["transfuse_polyp"], tmp_path / "server.log")
    try:
        assert "transfuse_polyp" in server.wait_ready()["models"]
        r = server.request("POST", f"/infer/transfuse_polyp?image={image.stem}&output=image", timeout=240)
        mask = np.asarray(Image.open(io.BytesIO(r.content)))
    finally:
        server.stop()
    width, height = Image.open(image).size
    assert mask.shape == (height, width) and set(np.unique(mask).tolist()) <= {0, 1}


# ---------------------------------------------------------------------------------------------------------------
# the zip's published sha256


@pytest.fixture(scope="module")
def zip_server(published, tmp_path_factory):
    """A plain HTTP server on 127.0.0.1 serving a folder with the polyp zip, its .sha256, and damaged copies."""
    served = tmp_path_factory.mktemp("served")
    package = published["polyp"][0]
    assert package.checksum_path.read_text() == f"{sha256(package.zip_path)}  {package.zip_path.name}\n"
    shutil.copy(package.zip_path, served)
    shutil.copy(package.checksum_path, served)
    with serve_folder(served) as url:
        yield served, url, package


def _serve(served: Path, name: str, data: bytes, checksum: str | None = None) -> None:
    """Serves ``data`` as ``name`` with ``checksum`` (default: its own sha256) published beside it."""
    (served / name).write_bytes(data)
    (served / f"{name}.sha256").write_text(f"{checksum or hashlib.sha256(data).hexdigest()}  {name}\n")


def test_zip_download_checks_the_published_sha256(zip_server, tmp_path):
    served, url, package = zip_server
    bundle = download_zip(f"{url}/{package.zip_path.name}", tmp_path / "ok")
    assert bundle == tmp_path / "ok" / "transfuse_polyp"
    with zipfile.ZipFile(package.zip_path) as zf:
        assert sorted(n.split("/", 1)[1] for n in zf.namelist() if not n.endswith("/")) == \
            sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())

    good = package.zip_path.read_bytes()
    tampered = bytearray(good)
    tampered[len(tampered) // 3] ^= 0xFF  # a changed zip next to the publisher's checksum
    _serve(served, "transfuse_polyp_v9.zip", bytes(tampered), checksum=hashlib.sha256(good).hexdigest())
    with pytest.raises(DownloadError, match=r"transfuse_polyp_v9\.zip: sha256 [0-9a-f]{64} differs from the published "):
        download_zip(f"{url}/transfuse_polyp_v9.zip", tmp_path / "bad")
    (served / "transfuse_polyp_v8.zip").write_bytes(good)  # no checksum published beside it
    with pytest.raises(DownloadError, match=r"no checksum at .*transfuse_polyp_v8\.zip\.sha256 \(HTTP 404\)"):
        download_zip(f"{url}/transfuse_polyp_v8.zip", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # the folder it made for the download is gone with the refusal


def test_zip_download_refuses_truncated_and_zip_slip_archives_extracting_nothing(zip_server, tmp_path):
    """Archives whose published sha256 matches (the publisher's own mistake or a compromised publisher): a truncated
    zip and one with a member outside the bundle folder are refused before anything is extracted."""
    served, url, package = zip_server
    good = package.zip_path.read_bytes()
    _serve(served, "transfuse_polyp_v7.zip", good[: len(good) * 2 // 3])
    with pytest.raises(DownloadError, match=r"not a readable zip archive \(truncated or damaged"):
        download_zip(f"{url}/transfuse_polyp_v7.zip", tmp_path / "bundles")

    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as zf:
        zf.writestr("transfuse_polyp/configs/metadata.json", "{}")
        zf.writestr("transfuse_polyp/../../evil.py", "print('owned')")
    _serve(served, "transfuse_polyp_v6.zip", slip.read_bytes())
    with pytest.raises(DownloadError, match=r"member 'transfuse_polyp/\.\./\.\./evil\.py' would be written outside"):
        download_zip(f"{url}/transfuse_polyp_v6.zip", tmp_path / "bundles")
    assert not (tmp_path / "bundles").exists() and not (tmp_path / "evil.py").exists()

    existing = tmp_path / "mine" / "transfuse_polyp"
    existing.mkdir(parents=True)
    with pytest.raises(DownloadError, match=r"transfuse_polyp already exists"):
        download_zip(f"{url}/{package.zip_path.name}", tmp_path / "mine")
    assert list(existing.iterdir()) == []


def test_large_files_listing_outside_the_bundle_or_a_wrong_served_file_is_refused(tmp_path):
    """A downloaded bundle's large_files.yml is the publisher's: a path outside the bundle folder is refused before
    anything is fetched, and a fetched file with another sha256 is refused in one line naming the path and the URL."""
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    served = tmp_path / "served"
    served.mkdir()
    (served / "model.pt").write_bytes(b"weights")
    with serve_folder(served) as url:
        listing = {"large_files": [{"path": "../escape.pt", "url": f"{url}/model.pt", "hash_val": "0" * 64, "hash_type": "sha256"}]}
        (bundle / "large_files.yml").write_text(yaml.safe_dump(listing))
        with pytest.raises(DownloadError, match=r"large_files\.yml lists '\.\./escape\.pt', which is not a file inside"):
            verify_large_files(bundle, "test")
        assert not (tmp_path / "escape.pt").exists()
        listing["large_files"][0]["path"] = "models/model.pt"
        (bundle / "large_files.yml").write_text(yaml.safe_dump(listing))
        with pytest.raises(DownloadError, match=rf"test: models/model\.pt from {url}/model\.pt failed its sha256; nothing was written"):
            verify_large_files(bundle, "test")
        assert not (bundle / "models" / "model.pt").exists()
        listing["large_files"][0]["hash_val"] = hashlib.sha256(b"weights").hexdigest()
        (bundle / "large_files.yml").write_text(yaml.safe_dump(listing))
        assert verify_large_files(bundle, "test") == ["models/model.pt"]
    assert (bundle / "models" / "model.pt").read_bytes() == b"weights"
