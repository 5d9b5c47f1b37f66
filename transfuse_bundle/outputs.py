"""What this tool wrote into an output folder, so that nothing a user had there is overwritten.

Inference and evaluation write into ``output_dir`` (predicted masks, ``failed.json``, reports, overlays).
That folder may already hold the user's own files: ground-truth masks named ``<stem>_seg.png``, another
tool's ``metrics.json``. Each file this package writes there is recorded in a manifest,
``output_dir/.transfuse_outputs.jsonl`` (one JSON line ``{"file": relative path, "sha256": ...}`` per
file written, appended as it is written, so a run killed halfway has recorded what it wrote). Before any
work, :func:`claim` looks at every file the run will write: one that exists and is not recorded with its
current content (the user's, or ours changed since) stops the run, naming the file, unless the config's
``overwrite`` is true. A rerun into the same folder is allowed: the files are ours.

* :func:`claim`: the check the configs' ``run`` lists call first;
* :func:`record` / :class:`RecordOutputs`: add files to the manifest (a function, and an ignite handler
  that records what ``SaveImaged(savepath_in_metadict=True)`` wrote, or named files at the end);
* :func:`ours`: the files of a folder this package wrote (the folder listings leave them out of the inputs);
* :func:`saved_files`: the paths ``SaveImaged`` will write for a datalist (MONAI's own naming);
* :func:`claim_weights`: training's check of the weights and checkpoint it will replace (no manifest: a trained
  model is worth keeping whoever wrote it).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import NotAFolderError, NotWritableError, UserInputError
from .files import sha256, write_text_atomically
from .checks import flag

__all__ = ["MANIFEST_NAME", "OutputConflictError", "claim", "record", "ours", "is_ours", "saved_files", "RecordOutputs",
           "claim_weights"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = ".transfuse_outputs.jsonl"


class OutputConflictError(UserInputError, FileExistsError):
    """An output file exists and this package did not write it; the message names it (one line)."""


def _recorded(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the manifest in ``folder`` (last record wins; a torn line is ignored)."""
    manifest = folder / MANIFEST_NAME
    found: dict[str, str] = {}
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return found
    for line in lines:
        try:
            entry = json.loads(line)
            found[str(entry["file"])] = str(entry["sha256"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a killed run: that file is simply not recorded
    return found


def _is_ours(folder: Path, name: str, recorded: Mapping[str, str]) -> bool:
    digest = recorded.get(name)
    if (folder / name).is_symlink():  # writing would go through the link, into a file we never wrote
        return False
    try:
        return digest is not None and sha256(folder / name) == digest
    except OSError:
        return False


def is_ours(path: str | os.PathLike) -> bool:
    """Whether the file ``path`` was written by this package (recorded in its folder's manifest, unchanged)."""
    path = Path(path)
    return _is_ours(path.parent, path.name, _recorded(path.parent))


def ours(folder: str | os.PathLike) -> set[str]:
    """Relative paths of the files in ``folder`` that this package wrote there and nobody changed since."""
    folder = Path(folder)
    recorded = _recorded(folder)
    return {name for name in recorded if _is_ours(folder, name, recorded)}


def record(output_dir: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> None:
    """Appends ``paths`` (files just written under ``output_dir``) to its manifest with their sha256."""
    folder = Path(output_dir)
    lines = []
    for path in paths:
        path = Path(path)
        path = path if path.is_absolute() else folder / path
        if path.is_file():
            lines.append(json.dumps({"file": os.path.relpath(path, folder), "sha256": sha256(path)}) + "\n")
    if lines:
        with open(folder / MANIFEST_NAME, "a", encoding="utf-8") as handle:
            handle.write("".join(lines))


def _planned(folder: Path, planned: Iterable[str | os.PathLike]) -> list[str]:
    """Relative paths of the files ``planned`` names (paths, or patterns with ``*`` such as ``overlays/*.png``)
    that exist now, in order. A path is always also taken literally: ``scan[1]_seg.png`` is a file name."""
    found: list[str] = []
    for item in planned:
        item = str(item)
        relative = os.path.relpath(item, folder) if os.path.isabs(item) else item
        if os.path.lexists(folder / relative):
            found.append(relative)
        if "*" in relative:
            pattern = os.path.join(glob.escape(str(folder)), relative)
            found += sorted(os.path.relpath(p, folder) for p in glob.glob(pattern))
    return list(dict.fromkeys(found))


def claim(output_dir: str | os.PathLike, planned: Iterable[str | os.PathLike], overwrite: bool | str = False,
          option: str = "--output_dir") -> str:
    """Checks, before any work, that the run may write ``planned`` into ``output_dir``; returns ``output_dir``.

    Args:
        output_dir: the output folder (the writers create it when missing).
        planned: the files the run will write: paths under ``output_dir`` (absolute or relative to it) or
            patterns with ``*`` (``overlays/*.png``).
        overwrite: replace existing files this package did not write (the config's ``overwrite``; the strings
            ``"true"``/``"false"`` of the command line are read as meant, see :func:`~transfuse_bundle.checks.flag`).
        option: the command's option that names the output, in the messages (``--output`` of prepare_data).

    Raises:
        NotADirectoryError: ``output_dir`` (or a folder above it) is a file.
        PermissionError: ``output_dir`` cannot be created or written to.
        OutputConflictError: a planned file exists and is not recorded in the manifest with its current
            content (names the first one and how many there are), or is a folder.
        ValueError: a planned file name is longer than the file system allows (the write would fail halfway).
    """
    overwrite, planned = flag(overwrite, "overwrite"), list(planned)
    folder = Path(output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotAFolderError(f"output_dir {str(folder)!r} is a file, not a folder: give a folder to write into")
    recorded = _recorded(folder)
    existing = _planned(folder, planned) if folder.is_dir() else []
    folders = [name for name in existing if (folder / name).is_dir()]
    if folders:
        raise OutputConflictError(f"{folder / folders[0]}: a folder where this run writes a file; "
                                  f"nothing was written (choose another {option})")
    theirs = [name for name in existing if not _is_ours(folder, name, recorded)]
    if theirs and not overwrite:
        more = f" (and {len(theirs) - 1} more)" if len(theirs) > 1 else ""
        raise OutputConflictError(
            f"{folder / theirs[0]}{more}: exists and was not written by this tool (or was changed since), so it is "
            f"not overwritten; nothing was written: choose another {option}, move the file(s), or pass "
            f"--overwrite true")
    if theirs:
        logger.warning("overwrite=true: replacing %d file(s) in %s that this tool did not write, e.g. %s",
                       len(theirs), folder, theirs[0])
    name_max = _check_writable(folder)
    for item in planned:
        name = os.fsencode(Path(item).name)
        if len(name) > name_max:  # the writer would fail halfway through the run
            raise ValueError(f"{item}: this output's file name is {len(name)} bytes, longer than the "
                             f"{name_max} the file system allows; nothing was written: shorten the input's name")
    for name in theirs:
        if (folder / name).is_symlink():
            (folder / name).unlink()  # replace the link, never write through it into the file it points to
    _compact(folder, recorded)
    return str(output_dir)


def _check_writable(folder: Path) -> int:
    """Raises ``PermissionError`` unless files can be created in ``folder`` or, when it does not exist yet, in
    its nearest existing parent (the writers create it); leaves no trace. Returns the longest file name
    (in bytes) the file system takes there."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotAFolderError(f"output_dir {str(folder)!r} cannot be created: {str(existing)!r} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise NotWritableError(f"output_dir {str(folder)!r} cannot be written to ({err.strerror or err})") from None
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not every platform says
        return 255


def _compact(folder: Path, recorded: Mapping[str, str]) -> None:
    """Rewrites the manifest with one line per file still there (reruns append; this keeps it small)."""
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return
    kept = {name: digest for name, digest in recorded.items() if (folder / name).is_file()}
    write_text_atomically(manifest, "".join(json.dumps({"file": n, "sha256": d}) + "\n" for n, d in kept.items()))


def saved_files(datalist: Sequence[Mapping[str, Any]], saver: Any, key: str = "image") -> list[str]:
    """The paths ``saver`` (a ``SaveImaged`` or ``SaveImage``) writes for the ``key`` files of ``datalist``:
    MONAI's own naming (``FolderLayout``: ``output_dir/<stem><_postfix><ext>``), without creating folders."""
    from monai.data import FolderLayout

    saver = getattr(saver, "saver", saver)
    layout = saver.folder_layout
    dry = FolderLayout(output_dir=layout.output_dir, postfix=layout.postfix, extension=layout.ext,
                       parent=layout.parent, makedirs=False, data_root_dir=layout.data_root_dir)
    return [str(dry.filename(subject=str(entry[key]))) for entry in datalist if key in entry]


class RecordOutputs:
    """Ignite handler adding what a run wrote to the manifest of ``output_dir`` (see :func:`record`).

    Args:
        output_dir: the output folder.
        saved_key: after each iteration, record the file ``SaveImaged(savepath_in_metadict=True)`` wrote
            for this output key (``meta["saved_to"]``), e.g. ``"pred"``; None: nothing per iteration.
        files: at the end of the run, record these files (paths or glob patterns relative to ``output_dir``)
            when they exist, e.g. the CSV files of MONAI's ``MetricsSaver`` (attach this handler after it).
    """

    def __init__(self, output_dir: str | os.PathLike, saved_key: str | None = None,
                 files: Sequence[str] = ()) -> None:
        self.output_dir = Path(output_dir)
        self.saved_key = saved_key
        self.files = list(files)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if self.saved_key is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._saved)
        if self.files:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._named)

    def _saved(self, engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        meta = [getattr(out.get(self.saved_key), "meta", {}) for out in outputs if isinstance(out, Mapping)]
        record(self.output_dir, [m["saved_to"] for m in meta if m.get("saved_to")])

    def _named(self, engine) -> None:
        done = ours(self.output_dir)
        record(self.output_dir, [name for name in _planned(self.output_dir, self.files) if name not in done])


def claim_weights(paths: Sequence[str | os.PathLike], resume: bool | str = False, overwrite: bool | str = False) -> list[str]:
    """Training's check, before any work, of the files it replaces after its first epoch (``model.pt``,
    ``checkpoint.pt``); returns ``paths``.

    A file that exists holds a trained model (ours or the user's: a manifest does not make hours of training
    worth less), so training starts only when the run says what to do with it: ``resume`` (continue that training
    from ``checkpoint.pt``) or ``overwrite`` (train anew over it). Either way a read-only file (someone protected
    it: ``os.replace`` would still swap it out) or a folder in its place is refused.

    Raises:
        OutputConflictError: a file exists and neither ``resume`` nor ``overwrite`` is true (names the first one and
            the two ways on), or a path is a folder.
        NotWritableError: a file exists that nobody may write (no write permission bit: chmod a-w).
    """
    resume, overwrite = flag(resume, "resume"), flag(overwrite, "overwrite")
    existing = [Path(p) for p in paths if os.path.lexists(p)]
    for path in existing:
        if path.is_dir():
            raise OutputConflictError(f"{path}: a folder where training writes a file; nothing was written "
                                      f"(move it, or give another --bundle_root / --ckpt_dir)")
    if existing and not (resume or overwrite):
        more = f" (and {existing[1].name})" if len(existing) > 1 else ""
        raise OutputConflictError(
            f"{existing[0]}{more}: exists (a trained model) and training would replace it after its first epoch; "
            f"nothing was written: pass --resume true to continue that training, --overwrite true to train anew over "
            f"it, or give another --bundle_root")
    for path in existing:  # the mode bits, not os.access: root may write anything, yet the owner meant "keep"
        if path.is_file() and not path.stat().st_mode & 0o222:
            raise NotWritableError(f"{path}: is read-only (protected), and training would replace it; nothing was "
                                   f"written: make it writable (chmod u+w) to replace it, or give another --bundle_root")
    return [str(p) for p in paths]
