"""Hugging Face hub distribution: a packaged bundle as a hub repository, written locally or published.

The model zoo publishes each bundle as a hub repository ``MONAI/<bundle>``: the bundle folder at the
repository root, ``README.md`` made from ``docs/README.md`` with a front matter block (tags ``monai``,
``medical``, ``library_name: monai``, the licence), one git tag per version and ``latest_version`` on the
version ``monai.bundle download`` fetches when none is asked for. This module makes the same from the zip
of :func:`transfuse_bundle.tools.packaging.package_bundle` (so the hub repository holds exactly what the zip
holds, plus ``README.md``):

* :func:`write_hub_repo` commits it into a local git repository (created if needed) and tags it, which is
  what a self-hosted hub serves (e.g. ``olah`` serving ``MIRRORS/models/ORG/NAME`` offline) and what can be
  inspected or pushed with git;
* :func:`publish` uploads it with MONAI's own ``push_to_hf_hub`` (``HfApi.upload_folder``, which stores the
  weights as large files, then ``create_tag``), the token read from ``HF_TOKEN``.

The README is written by MONAI's own front matter function, so it is the README ``push_to_hf_hub`` writes.

Example::

    from transfuse_bundle.tools.packaging import package_bundle
    from transfuse_bundle.tools.hub import write_hub_repo, publish
    package = package_bundle("polyp", out="dist", weights="models/model.pt")
    write_hub_repo(package.zip_path, "mirrors/models/MyOrg/transfuse_polyp", "MyOrg/transfuse_polyp", latest=True)
    publish(package.zip_path, "MyOrg/transfuse_polyp", private=True, latest=True)   # needs HF_TOKEN
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .packaging import PackagingError

__all__ = ["LATEST_TAG", "TOKEN_VARIABLE", "HubRepo", "check_repo_id", "hub_token", "check_token", "check_hub_dir",
           "write_readme", "write_weight_listing", "write_hub_repo", "publish"]

LATEST_TAG = "latest_version"  # the tag monai.bundle download fetches when no version is given
TOKEN_VARIABLE = "HF_TOKEN"  # huggingface_hub's own variable for a token
# the hub's rule for ids: namespace/name, letters, digits, '-', '_', '.', no '--' or '..', at most 96 characters
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_GIT_IDENTITY = ["-c", "user.name=transfuse-package", "-c", "user.email=transfuse-package@localhost",
                 "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]


@dataclass
class HubRepo:
    """What :func:`write_hub_repo` wrote: the repository folder, the version, the commit and its tags."""

    path: Path
    name: str
    version: str
    commit: str
    tags: list[str]


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a hub id ``owner/name`` (the form ``monai.bundle download --repo`` takes)."""
    if not REPO_ID.match(repo_id or "") or "--" in repo_id or ".." in repo_id or repo_id.endswith((".", "-")):
        raise PackagingError(f"hub repository {repo_id!r} is not of the form OWNER/NAME (letters, digits, '-', '_', '.')")
    return repo_id


def hub_token(environ: dict[str, str] | None = None) -> str:
    """The write token from ``HF_TOKEN``; its absence is one line, raised before any work."""
    token = (os.environ if environ is None else environ).get(TOKEN_VARIABLE, "").strip()
    if not token:
        raise PackagingError(f"publishing needs a hub token with write access in the environment variable {TOKEN_VARIABLE} "
                             f"(it is not set): export {TOKEN_VARIABLE}=hf_...")
    return token


def check_token(token: str) -> str:
    """Asks the hub (``HF_ENDPOINT``) whose token ``token`` is, so that a wrong token or an unreachable hub is one
    line before any work; returns the account name."""
    from huggingface_hub import HfApi, constants

    try:
        return str(HfApi(token=token).whoami().get("name", "?"))
    except Exception as e:  # the hub's HTTP errors, the HTTP client's connection errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PackagingError(f"cannot publish to {constants.ENDPOINT} with the token in {TOKEN_VARIABLE}: {first}") from None


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(["git", *_GIT_IDENTITY, *args], cwd=repo, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise PackagingError("writing a hub repository needs git, which is not installed") from None
    if check and proc.returncode != 0:
        raise PackagingError(f"git {' '.join(args)} in {repo} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc


def check_hub_dir(path: str | os.PathLike, version: str | None = None) -> Path:
    """Refuses, before any work, a folder :func:`write_hub_repo` could not write without losing something.

    Accepted: a missing or empty folder, or the top of a git repository without uncommitted changes (an
    earlier version written here) that has no tag ``version`` yet. Returns the resolved path.
    """
    path = Path(path).resolve()
    if path.exists() and not path.is_dir():
        raise PackagingError(f"hub repository folder {path} is a file")
    if not path.exists() or not any(path.iterdir()):
        parent = next(p for p in [path, *path.parents] if p.exists())
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PackagingError(f"hub repository folder {path} cannot be created: {parent} is not writable")
        return path
    top = _git(path, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != path:
        raise PackagingError(f"hub repository folder {path} is not empty and not a git repository: "
                             "give a new folder or one written by --hub-dir before")
    if not os.access(path, os.W_OK | os.X_OK) or not os.access(path / ".git", os.W_OK | os.X_OK):
        raise PackagingError(f"hub repository folder {path} is not writable")
    status = _git(path, "status", "--porcelain", "--untracked-files=all").stdout.splitlines()
    if status:
        first = status[0][3:]  # "XY path"
        raise PackagingError(f"hub repository {path} has uncommitted changes ({first}, ...): commit or remove them first")
    if version is not None and _git(path, "rev-parse", "-q", "--verify", f"refs/tags/{version}", check=False).returncode == 0:
        raise PackagingError(f"hub repository {path} already has version {version} (git tag {version}): "
                             "publish a new version (--version, with a changelog entry), tags are never moved")
    return path


def write_readme(bundle: str | os.PathLike) -> Path:
    """Writes ``bundle/README.md``: ``docs/README.md`` with the front matter block of MONAI's ``push_to_hf_hub``
    (``tags: [monai, medical]``, ``library_name: monai``, the licence read from ``LICENSE``)."""
    from monai.bundle.scripts import _add_model_card_metadata  # the function push_to_hf_hub calls

    bundle = Path(bundle)
    card, readme = bundle / "docs" / "README.md", bundle / "README.md"
    if not card.is_file():
        raise PackagingError(f"{card} does not exist: the hub README is made from the model card")
    shutil.copyfile(card, readme)
    _add_model_card_metadata(str(readme))
    return readme


def _extract_package(zip_path: Path, dest: Path) -> tuple[Path, str]:
    """Extracts the package ``zip_path`` (top folder ``NAME/``) into ``dest``; returns the bundle folder and version."""
    if not zip_path.is_file():
        raise PackagingError(f"package {zip_path} does not exist")
    with zipfile.ZipFile(zip_path) as zf:
        tops = {n.split("/", 1)[0] for n in zf.namelist()}
        if len(tops) != 1:
            raise PackagingError(f"package {zip_path} must hold one top folder, found {sorted(tops)}")
        zf.extractall(dest)  # our own zip, written by zip_bundle
    bundle = dest / tops.pop()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    return bundle, str(meta["version"])


def write_weight_listing(bundle: Path, repo_id: str, version: str, endpoint: str | None = None) -> list[dict[str, str]]:
    """Writes ``bundle/large_files.yml`` for the weights inside ``bundle/models/`` (a package with the weights as
    large files has one already): path, sha256 and the hub URL of the file at this version, so a download is
    checked against what was published (``monai.bundle download_large_files`` checks files present and fetches
    missing ones). ``endpoint``: the hub serving it (default ``HF_ENDPOINT``, else huggingface.co)."""
    import yaml
    from huggingface_hub import constants

    from ..files import sha256
    from .packaging import WEIGHT_FILES

    listing = bundle / "large_files.yml"
    if listing.exists():
        return yaml.safe_load(listing.read_text(encoding="utf-8"))["large_files"]
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    entries = [{"path": f"models/{name}", "url": f"{endpoint}/{repo_id}/resolve/{version}/models/{name}",
                "hash_val": sha256(bundle / "models" / name), "hash_type": "sha256"}
               for name in WEIGHT_FILES if (bundle / "models" / name).is_file()]
    if entries:
        listing.write_text(yaml.safe_dump({"large_files": entries}, sort_keys=False), encoding="utf-8")
    return entries


def write_hub_repo(zip_path: str | os.PathLike, repo_dir: str | os.PathLike, repo_id: str,
                   latest: bool = False, endpoint: str | None = None) -> HubRepo:
    """Commits the package ``zip_path`` as the hub repository ``repo_id`` in the git repository ``repo_dir`` and
    tags it.

    The tree becomes the bundle folder (``configs/``, ``models/``, ``docs/``, ``LICENSE``, the runtime code)
    plus ``README.md`` (:func:`write_readme`) and ``large_files.yml`` with the weights' sha256
    (:func:`write_weight_listing`); files of an earlier version that
    the new one lacks are removed from the tree (they stay in the history and under their tags). The commit is
    tagged with the metadata's version, and ``latest_version`` is moved onto it when ``latest`` is true. The
    folder is checked first (:func:`check_hub_dir`): an existing version tag or uncommitted changes are refused.
    ``endpoint``: the hub that will serve it, for the URLs of ``large_files.yml`` (default ``HF_ENDPOINT``).
    """
    zip_path = Path(zip_path)
    with tempfile.TemporaryDirectory(prefix="transfuse-hub-") as scratch:
        bundle, version = _extract_package(zip_path, Path(scratch))
        check_repo_id(repo_id)
        repo = check_hub_dir(repo_dir, version)
        write_readme(bundle)
        write_weight_listing(bundle, repo_id, version, endpoint)
        repo.mkdir(parents=True, exist_ok=True)
        if not (repo / ".git").exists():
            _git(repo, "init", "-q", "-b", "main")
        else:  # the previous version's tree goes; git keeps it in the history
            _git(repo, "rm", "-r", "-q", "--ignore-unmatch", ".")
        for item in bundle.iterdir():
            target = repo / item.name
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", f"{bundle.name} {version}")
    _git(repo, "tag", version)
    tags = [version]
    if latest:
        _git(repo, "tag", "-f", LATEST_TAG)
        tags.append(LATEST_TAG)
    commit = _git(repo, "rev-parse", "HEAD").stdout.strip()
    return HubRepo(path=repo, name=bundle.name, version=version, commit=commit, tags=tags)


def publish(zip_path: str | os.PathLike, repo_id: str, private: bool, latest: bool = False,
            token: str | None = None) -> str:
    """Publishes the package ``zip_path`` to the hub repository ``repo_id`` with MONAI's ``push_to_hf_hub``
    (created ``private`` or public if missing; tagged with the version, and ``latest_version`` if ``latest``).

    ``token`` defaults to ``HF_TOKEN`` (:func:`hub_token`). The hub is ``HF_ENDPOINT`` (default huggingface.co).
    Returns the URL ``push_to_hf_hub`` reports; a refusal by the hub is one line naming the repository.
    """
    from huggingface_hub import constants
    from monai.bundle import push_to_hf_hub

    check_repo_id(repo_id)
    token = token or hub_token()
    with tempfile.TemporaryDirectory(prefix="transfuse-hub-") as scratch:
        bundle, version = _extract_package(Path(zip_path), Path(scratch))
        write_weight_listing(bundle, repo_id, version)
        try:
            url = push_to_hf_hub(repo=repo_id, name=bundle.name, bundle_dir=scratch, token=token, private=private,
                                 version=version, tag_as_latest_version=latest)
        except Exception as e:  # the hub's HTTP errors, and the HTTP client's connection errors (not OSError)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PackagingError(f"publishing {bundle.name} {version} to {constants.ENDPOINT}/{repo_id} failed: {first}") from None
    return str(url)
