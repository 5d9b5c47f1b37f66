"""Verified downloads of a packaged bundle: from a zip URL with its published sha256, or from a hub repository.

``python -m monai.bundle download --url`` checks no hash and extracts member by member (a bad member half way
leaves the members before it), and ``--source huggingface_hub`` writes into ``BUNDLE_DIR/NAME`` as it goes. The
two functions here fetch into a hidden staging folder next to the target, check everything, and only then move
the bundle folder into place with one rename, so a refused or failed download leaves nothing in ``bundle_dir``:

* :func:`download_zip`: the zip's sha256 must equal the one published beside it (``URL.sha256``, written by
  ``transfuse-package``) or given; then the archive must be whole (every member's CRC) and safe (one top
  folder, no absolute or ``..`` paths, no links) before anything is extracted.
* :func:`download_hub`: the repository and version are looked up first (an unknown repository or version is
  one line naming both, with the versions there are), the bundle is fetched with MONAI's own
  ``monai.bundle.download(source="huggingface_hub")``, and every file listed in its ``large_files.yml`` must
  have the listed sha256 (files missing there are fetched as ``download_large_files`` does).

A target folder that already exists is refused before any work: nothing the user had is replaced.

Example::

    from transfuse_bundle.tools.download import download_hub, download_zip
    download_zip("https://host/dist/transfuse_polyp_v0.1.0.zip", "bundles")      # reads ...zip.sha256
    download_hub("MyOrg/transfuse_polyp", "bundles", version="0.1.0")           # HF_ENDPOINT, HF_TOKEN apply
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import UserInputError
from ..files import sha256
from .hub import LATEST_TAG, check_repo_id
from .packaging import CHECKSUM_SUFFIX, NAME_PATTERN, PackagingError

__all__ = ["DownloadError", "published_checksum", "check_archive", "download_zip", "download_hub", "verify_large_files"]

logger = logging.getLogger(__name__)
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
TIMEOUT = 60  # seconds for the checksum request and each hub request


class DownloadError(UserInputError, RuntimeError):
    """A download was refused or failed; nothing was written into the bundle folder. The message names what."""


def _target(bundle_dir: str | os.PathLike, name: str) -> Path:
    """``bundle_dir/name``, refused if it exists (nothing is replaced) or ``bundle_dir`` cannot take it."""
    if not NAME_PATTERN.match(name):
        raise DownloadError(f"bad bundle name {name!r}: use letters, digits and underscores, starting with a letter")
    bundle_dir = Path(bundle_dir).resolve()
    if bundle_dir.exists() and not bundle_dir.is_dir():
        raise DownloadError(f"bundle folder {bundle_dir} is a file")
    target = bundle_dir / name
    if target.exists() or target.is_symlink():
        raise DownloadError(f"{target} already exists: remove it or download into another --bundle_dir")
    existing = next(p for p in [bundle_dir, *bundle_dir.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise DownloadError(f"bundle folder {bundle_dir} cannot be {'written' if existing == bundle_dir else 'created'}: "
                            f"{existing} is not a writable folder")
    return target


@contextlib.contextmanager
def _staging(target: Path):
    """A hidden folder next to ``target`` (same file system, so the final rename is atomic), always removed, as is
    the bundle folder itself when it was created here and nothing landed in it."""
    created = not target.parent.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.download-", dir=target.parent))
    except OSError as e:
        raise DownloadError(f"bundle folder {target.parent} cannot be written: {e.strerror}") from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not target.exists():
            with contextlib.suppress(OSError):
                target.parent.rmdir()  # only if empty


def _move_into_place(folder: Path, target: Path) -> Path:
    try:
        os.rename(folder, target)  # fails if another download put a non-empty folder there meanwhile
    except OSError as e:
        raise DownloadError(f"{target} could not be put in place: {e.strerror}") from None
    return target


@contextlib.contextmanager
def _quiet(name: str, below: int = logging.WARNING):
    """Hides a logger's lines below ``below`` for the duration of the block (MONAI's download logs every argument at
    INFO; its hash check logs an ERROR line before it raises what is reported here in one line)."""
    logger_ = logging.getLogger(name)
    level = logger_.level
    logger_.setLevel(below)
    try:
        yield
    finally:
        logger_.setLevel(level)


def published_checksum(url: str) -> str:
    """The sha256 published beside ``url`` (``URL.sha256``, first word of its first line)."""
    checksum_url = url + CHECKSUM_SUFFIX
    try:
        with urllib.request.urlopen(checksum_url, timeout=TIMEOUT) as response:
            text = response.read(4096).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"no checksum at {checksum_url} (HTTP {e.code}): the publisher must serve it beside "
                            "the zip, or pass the sha256 you got from them with --sha256") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DownloadError(f"cannot fetch {checksum_url}: {getattr(e, 'reason', e)}") from None
    words = text.split()
    if not words or not SHA256.match(words[0]):
        raise DownloadError(f"{checksum_url} does not start with a sha256 (64 hex digits): {text[:80]!r}")
    return words[0].lower()


def _fetch(url: str, dest: Path) -> str:
    """Streams ``url`` into ``dest``; returns its sha256. A short read (the server closed early) is an error."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(dest, "wb") as out:
            size = response.headers.get("Content-Length")
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if size is not None and dest.stat().st_size != int(size):
            raise DownloadError(f"{url}: the server sent {dest.stat().st_size} of {size} bytes; nothing was extracted")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        raise DownloadError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
    return digest.hexdigest()


def check_archive(zip_path: str | os.PathLike, source: str) -> str:
    """The top folder name of a bundle zip, after checking every member: readable and whole (CRC), under one
    top folder, no absolute or ``..`` path, no backslash, no symbolic link. ``source`` names it in errors."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            tops = set()
            for info in infos:
                name = info.filename
                parts = PurePosixPath(name).parts
                if name.startswith("/") or "\\" in name or ".." in parts or re.match(r"^[A-Za-z]:", name):
                    raise DownloadError(f"{source}: member {name!r} would be written outside the bundle folder; nothing was extracted")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DownloadError(f"{source}: member {name!r} is a symbolic link; nothing was extracted")
                tops.add(parts[0] if parts else "")
            if len(tops) != 1 or not infos or len(PurePosixPath(infos[0].filename).parts) == 0:
                raise DownloadError(f"{source}: a bundle zip holds one top folder, found {sorted(tops)[:5]}")
            bad = zf.testzip()  # reads every member: a truncated or altered member fails its CRC
            if bad is not None:
                raise DownloadError(f"{source}: member {bad!r} is damaged (CRC mismatch); nothing was extracted")
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, NotImplementedError) as e:
        raise DownloadError(f"{source}: not a readable zip archive (truncated or damaged: {e}); nothing was extracted") from None
    return tops.pop()


def download_zip(url: str, bundle_dir: str | os.PathLike, sha256_hex: str | None = None,
                 name: str | None = None) -> Path:
    """Downloads the bundle zip at ``url`` into ``bundle_dir/NAME`` (NAME: its top folder) after checking it.

    Args:
        url: the zip (``http(s)://`` or ``file://``).
        bundle_dir: where the bundle folder goes (created); ``bundle_dir/NAME`` must not exist.
        sha256_hex: the zip's expected sha256; default: the one published at ``url + ".sha256"``.
        name: the expected bundle name (the zip's top folder); default: the zip's name up to ``_v``.
    Returns the bundle folder.
    """
    zip_name = url.rstrip("/").rsplit("/", 1)[-1]
    name = name or re.sub(r"_v[^_]*\.zip$|\.zip$", "", zip_name)
    target = _target(bundle_dir, name)
    if sha256_hex is not None and not SHA256.match(sha256_hex):
        raise DownloadError(f"--sha256 {sha256_hex!r} is not a sha256 (64 hex digits)")
    expected = (sha256_hex or published_checksum(url)).lower()
    with _staging(target) as staging:
        local = staging / "bundle.zip"
        found = _fetch(url, local)
        if found != expected:
            raise DownloadError(f"{url}: sha256 {found} differs from the published {expected}: the zip was changed or "
                                "cut short on the way; nothing was extracted")
        top = check_archive(local, url)
        if top != name:
            raise DownloadError(f"{url}: holds the bundle {top!r}, expected {name!r} (pass --name {top} if that is right)")
        with zipfile.ZipFile(local) as zf:
            zf.extractall(staging / "extract")
        return _move_into_place(staging / "extract" / top, target)


def verify_large_files(bundle: Path, source: str) -> list[str]:
    """Checks every file of ``bundle/large_files.yml`` that is present against its sha256 and fetches the missing
    ones checked against it (as ``monai.bundle download_large_files`` does). Returns the checked paths."""
    import yaml
    from monai.apps.utils import download_url

    listing = bundle / "large_files.yml"
    if not listing.is_file():
        return []
    entries = (yaml.safe_load(listing.read_text(encoding="utf-8")) or {}).get("large_files", [])
    checked = []
    for entry in entries:
        path = bundle / str(entry.get("path", ""))
        if not entry.get("path") or not path.resolve().is_relative_to(bundle.resolve()) or path.resolve() == bundle.resolve():
            raise DownloadError(f"{source}: large_files.yml lists {entry.get('path')!r}, which is not a file inside the "
                                "bundle folder; nothing was written")
        if path.is_file() and entry.get("hash_val"):
            found = sha256(path)
            if found != str(entry["hash_val"]).lower():
                raise DownloadError(f"{source}: {entry['path']} has sha256 {found}, its large_files.yml says {entry['hash_val']}: "
                                    "the file was changed after it was published; nothing was written")
            checked.append(entry["path"])
    for entry in entries:  # what download_large_files does, quietly, one line per failure
        path = bundle / entry["path"]
        if path.is_file():
            continue
        try:
            with _quiet("monai.apps", below=logging.CRITICAL):
                download_url(url=entry["url"], filepath=path, hash_val=entry.get("hash_val") or None,
                             hash_type=entry.get("hash_type") or "sha256", progress=False)
        except Exception as e:  # MONAI's HashCheckError, urllib's errors
            reason = "failed its sha256" if "hash check" in str(e) else f"could not be fetched ({getattr(e, 'reason', e)})"
            raise DownloadError(f"{source}: {entry['path']} from {entry['url']} {reason}; nothing was written") from None
        checked.append(entry["path"])
    return checked


def _hub_versions(repo_id: str) -> tuple[list[str], list[str]]:
    """``(tags, branches)`` of a hub repository; an unknown or unreachable one is one line."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    where = f"{constants.ENDPOINT}/{repo_id}"
    try:
        refs = HfApi().list_repo_refs(repo_id)
    except OfflineModeIsEnabled:
        raise DownloadError(f"cannot reach {where}: HF_HUB_OFFLINE is set (unset it to download)") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"hub repository {repo_id} was not found at {constants.ENDPOINT} "
                            f"(or it is private: set HF_TOKEN to a token that can read it)") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 404):  # a self-hosted hub answers without the hub's error code header
            raise DownloadError(f"hub repository {repo_id} was not found at {constants.ENDPOINT} "
                                f"(or it is private: set HF_TOKEN to a token that can read it)") from None
        raise DownloadError(f"{where}: the hub refused the request: {str(e).splitlines()[0]}") from None
    except Exception as e:  # the HTTP client's connection errors are not OSError
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DownloadError(f"cannot reach {where}: {type(e).__name__}: {first}") from None
    return [t.name for t in refs.tags], [b.name for b in refs.branches]


def download_hub(repo_id: str, bundle_dir: str | os.PathLike, version: str | None = None,
                 name: str | None = None) -> Path:
    """Downloads the bundle of hub repository ``repo_id`` (``HF_ENDPOINT``, default huggingface.co) into
    ``bundle_dir/NAME`` with ``monai.bundle.download(source="huggingface_hub")`` and checks it.

    Args:
        repo_id: ``OWNER/NAME``.
        bundle_dir: where the bundle folder goes; ``bundle_dir/NAME`` must not exist.
        version: a version tag (or any git revision); default: ``latest_version``, else MONAI's choice.
        name: the folder name; default: the repository's name.
    Returns the bundle folder. The metadata's version must be the one asked for (when it is a version tag).
    """
    from monai.bundle import download

    try:
        check_repo_id(repo_id)
    except PackagingError as e:
        raise DownloadError(str(e)) from None
    name = name or repo_id.split("/", 1)[1]
    target = _target(bundle_dir, name)
    tags, branches = _hub_versions(repo_id)
    if version is not None and version not in tags and version not in branches and not re.match(r"^[0-9a-f]{40}$", version):
        versions = ", ".join(t for t in tags if t != LATEST_TAG) or "none"
        raise DownloadError(f"hub repository {repo_id} has no version {version!r} (its versions: {versions})")
    with _staging(target) as staging, _quiet("monai.bundle.scripts"):
        try:
            download(name=name, source="huggingface_hub", repo=repo_id, version=version, bundle_dir=str(staging),
                     progress=False)
        except Exception as e:  # huggingface_hub's HTTP errors, MONAI's ValueError
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DownloadError(f"downloading {repo_id} version {version or 'latest'} failed: {first}") from None
        bundle = staging / name
        shutil.rmtree(bundle / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping of local_dir
        source = f"{repo_id}@{version or 'latest'}"
        meta_path = bundle / "configs" / "metadata.json"
        if not meta_path.is_file():
            raise DownloadError(f"{source}: not a bundle (no configs/metadata.json); nothing was written")
        meta_version = str(json.loads(meta_path.read_text(encoding="utf-8")).get("version"))
        if version in tags and version != LATEST_TAG and meta_version != version:
            raise DownloadError(f"{source}: its configs/metadata.json says version {meta_version}; nothing was written")
        verify_large_files(bundle, source)
        logger.info("downloaded %s %s into %s", repo_id, meta_version, target)
        return _move_into_place(bundle, target)
