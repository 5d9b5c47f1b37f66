"""MONAI Label: put a TransFuse bundle folder into the ``monaibundle`` app and start a server on it.

Nothing here changes MONAI Label: the app is the stock ``monaibundle`` sample app copied from the
installed ``monailabel`` wheel (``python -m monailabel.main apps --download``, which copies, it does not
download), and the bundle folder is made by :func:`transfuse_bundle.tools.bundle_folder.copy_bundle` in the
app's ``model/NAME`` folder, which is where the app looks for a local bundle called ``NAME``.

By default the app is made an active-learning app (:func:`ensure_app` ``active_learning=True``): the stock
``main.py`` is kept as ``monaibundle_main.py``, :mod:`transfuse_bundle.monailabel.active_learning` is copied
next to it as ``transfuse_active_learning.py``, and a short ``main.py`` subclasses the stock app with it
(MC-dropout scoring, the ``epistemic`` strategy, batch inference that reports unreadable images). The
bundle folders are the same either way.

Install MONAI Label with ``pip install --no-deps -r requirements-monailabel.txt`` (see that file).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..tools.bundle_folder import (BundleFolderError, check_weights_fit, copy_bundle, serve_with, source_root,
                                   write_initial_weights)
from ..locking import locked_folders
from ..weights import WeightsFileError, load_weights

__all__ = [
    "APP_NAME", "LOOPBACK_HOSTS", "RESERVED_WORDS", "ACTIVE_LEARNING_MARK", "require_monailabel", "ensure_app",
    "ENGINE_OVERLAYS", "install_bundle",
    "server_command", "server_env",
]

APP_NAME = "monaibundle"
# a model name containing one of these changes the task type the monaibundle app gives it
RESERVED_WORDS = ("deepedit", "deepgrow", "detection", "classification")
# MONAI Label's authentication is off by default (anyone who reaches the port can infer, train and upload
# labels), so the server listens on the loopback interface unless a caller explicitly asks otherwise
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# the active-learning app (see ensure_app): file names in the app folder and the line that marks our main.py
STOCK_MAIN = "monaibundle_main.py"
ACTIVE_LEARNING_MODULE = "transfuse_active_learning.py"
SERVER_GUARD_MODULE = "transfuse_server_guard.py"
ACTIVE_LEARNING_MARK = "# transfuse-bundle active-learning app"
ACTIVE_LEARNING_MAIN = f'''{ACTIVE_LEARNING_MARK} (written by transfuse_bundle.monailabel.app.ensure_app)
"""The stock monaibundle app ({STOCK_MAIN}, copied from the monailabel wheel) with TransFuse's active
learning ({ACTIVE_LEARNING_MODULE}, a copy of transfuse_bundle/monailabel/active_learning.py): MC-dropout
scoring (--conf epistemic_model NAME), the strategies epistemic and epistemic_bald, and batch inference
that reports the images a model cannot process; and its guard ({SERVER_GUARD_MODULE}, a copy of
transfuse_bundle/monailabel/server_guard.py): plain-name ids and tags, only configured CORS origins, 400/404
answers with the reason. See docs/monailabel.md."""

from monailabel.interfaces.app import MONAILabelApp

import {STOCK_MAIN[:-3]}
from {ACTIVE_LEARNING_MODULE[:-3]} import ActiveLearningMixin
from {SERVER_GUARD_MODULE[:-3]} import ServerGuardMixin


# MONAI Label takes the class of main.py whose direct bases include one named MONAILabelApp
class TransFuseActiveLearningApp(ServerGuardMixin, ActiveLearningMixin, {STOCK_MAIN[:-3]}.MyApp, MONAILabelApp):
    pass
'''


#: ``install_bundle(engine=...)``: the inference overlay merged into the served inference.json (None: PyTorch)
ENGINE_OVERLAYS = {"pytorch": None, "cpu": "inference_cpu.json", "int8": "inference_int8.json"}


def require_monailabel() -> str:
    """Returns the installed monailabel version, or raises ``ModuleNotFoundError`` saying how to install it."""
    try:
        import monailabel
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "monailabel is not installed in this environment: run "
            "`pip install --no-deps -r requirements-monailabel.txt` from the repository root "
            "(docs/monailabel.md explains why --no-deps)"
        ) from e
    return monailabel.__version__


def ensure_app(app_dir: str | os.PathLike, python: str | None = None, active_learning: bool = True) -> Path:
    """Makes sure ``app_dir`` holds the ``monaibundle`` app (copied from the monailabel wheel if missing)
    and its ``model/`` folder; returns ``app_dir``.

    Args:
        app_dir: the app folder, e.g. ``apps/monaibundle`` (any folder name works).
        python: the interpreter that has monailabel (default: this one).
        active_learning: make it (or keep it) the active-learning app: the stock ``main.py`` moves to
            ``monaibundle_main.py``, ``transfuse_active_learning.py`` (refreshed on every call) and a new
            ``main.py`` are written. A ``main.py`` that is neither the wheel's nor ours is refused rather than
            replaced. ``False`` leaves ``main.py`` as it is (a new app is then the stock one).
    """
    app_dir = _app_folder(app_dir)
    stock = None
    if not (app_dir / "main.py").is_file():
        if app_dir.exists() and any(app_dir.iterdir()):
            raise BundleFolderError(f"{app_dir} exists but has no main.py: not a MONAI Label app folder")
        with tempfile.TemporaryDirectory() as tmp:
            copied = _copy_stock_app(Path(tmp), python)
            stock = (copied / "main.py").read_text()
            shutil.copytree(copied, app_dir, dirs_exist_ok=True)  # the folder may exist, empty (install_bundle's lock made it)
    (app_dir / "model").mkdir(exist_ok=True)  # the copy has none; the app looks for local bundles there
    if active_learning:
        _make_active_learning_app(app_dir, python, stock)
    return app_dir


def _app_folder(app_dir: str | os.PathLike) -> Path:
    """``app_dir`` resolved, unless it is a file (refused)."""
    app_dir = Path(app_dir).resolve()
    if app_dir.exists() and not app_dir.is_dir():
        raise BundleFolderError(f"{app_dir} is a file, not a MONAI Label app folder: pass a folder (made if missing)")
    return app_dir


def _copy_stock_app(dest: Path, python: str | None = None) -> Path:
    """Copies the wheel's monaibundle app into ``dest`` (``monailabel apps --download``); returns its folder.
    MONAI Label's own command, in this process when ``python`` is this interpreter (its start costs ~10 s)."""
    require_monailabel()
    args = ["apps", "--download", "--name", APP_NAME, "--output", str(dest)]
    copied = dest / APP_NAME
    if python is None or python == sys.executable:
        import argparse
        import contextlib
        import io

        from monailabel.main import Main

        command, printed, status = f"monailabel {' '.join(args)}", io.StringIO(), 0
        try:
            with contextlib.redirect_stdout(printed):
                Main().action_apps(argparse.Namespace(prefix=None, download=True, name=APP_NAME, output=str(dest)))
        except (SystemExit, ValueError, OSError) as e:  # its refusals: exit(-1) after a printed line, ValueError
            status = 1
            printed.write(str(e))
        output = printed.getvalue()
    else:
        cmd = [python, "-m", "monailabel.main", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        command, status, output = " ".join(cmd), proc.returncode, f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    if status != 0 or not (copied / "main.py").is_file():
        raise BundleFolderError(f"could not copy the {APP_NAME} app from the monailabel wheel ({command}): "
                                f"exit {status}\n{output[-4000:]}")
    return copied


def _make_active_learning_app(app_dir: Path, python: str | None = None, stock: str | None = None) -> None:
    """Turns the stock app in ``app_dir`` into the active-learning app (see :func:`ensure_app`); ``stock``: the
    wheel's ``main.py`` text when the caller has just copied it."""
    from . import active_learning, server_guard

    main = app_dir / "main.py"
    text = main.read_text()
    if ACTIVE_LEARNING_MARK not in text:
        if stock is None:
            with tempfile.TemporaryDirectory() as tmp:
                stock = (_copy_stock_app(Path(tmp), python) / "main.py").read_text()
        if text != stock:
            raise BundleFolderError(
                f"{main} is neither the monaibundle app's main.py of monailabel {require_monailabel()} nor "
                f"the active-learning one: not replaced (use a new app folder, or pass --stock-app)"
            )
        (app_dir / STOCK_MAIN).write_text(stock)
    if not (app_dir / STOCK_MAIN).is_file():
        raise BundleFolderError(f"{app_dir / STOCK_MAIN} is missing: the active-learning app subclasses it")
    if text != ACTIVE_LEARNING_MAIN:  # the stock one, or ours from an older version (refreshed like the modules)
        main.write_text(ACTIVE_LEARNING_MAIN)
    shutil.copyfile(active_learning.__file__, app_dir / ACTIVE_LEARNING_MODULE)
    shutil.copyfile(server_guard.__file__, app_dir / SERVER_GUARD_MODULE)


def install_bundle(
    app_dir: str | os.PathLike,
    name: str,
    task: str = "polyp",
    overrides: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
    init_weights: bool = False,
    include_models: bool = True,
    overwrite: bool = False,
    active_learning: bool = True,
    engine: str = "pytorch",
) -> Path:
    """Writes the bundle folder of ``task`` as ``APP/model/NAME`` (making the app if needed); returns it.

    The folder is assembled in a temporary folder and its weights checked against its network (the error names
    the weights file as given) before the app is touched, so a refusal leaves the app, its ``main.py`` and an
    existing ``APP/model/NAME`` as they were.

    Args:
        app_dir: the monaibundle app folder (created from the wheel if it does not exist).
        name: the folder and REST model name; it must not contain one of :data:`RESERVED_WORDS`.
        task, overrides, weights, include_models, overwrite: as for
            :func:`~transfuse_bundle.tools.bundle_folder.copy_bundle`.
        init_weights: when the bundle ends up without ``models/model.pt``, write untrained weights of the
            task's network (MONAI Label skips a bundle without weights; train it through ``/train``).
        active_learning: as for :func:`ensure_app` (the app, not the bundle folder, changes).
        engine: what runs the network when MONAI Label infers (:data:`ENGINE_OVERLAYS`): ``"pytorch"``, ``"cpu"``
            (the CPU engine, ``configs/inference_cpu.json`` merged into the served ``inference.json``) or ``"int8"``
            (``inference_int8.json``: the INT8 model ``transfuse-quantize`` wrote beside the weights, installed
            with them and checked to be theirs). Training and MC-dropout scoring still run PyTorch.

    The app folder is locked while this runs (:func:`~transfuse_bundle.locking.locked_folders`): a second
    install into the same app, from another process, is refused instead of racing on the app's files.
    The served ``train.json`` has ``overwrite_weights`` true: MONAI Label's ``/train`` retrains the bundle in place,
    replacing its ``models/model.pt``.
    """
    lowered = name.lower()
    if not name or os.sep in name or name.startswith("."):
        raise BundleFolderError(f"bad model name {name!r}: use a plain folder name such as transfuse_polyp")
    bad = [w for w in RESERVED_WORDS if w in lowered]
    if bad:
        raise BundleFolderError(
            f"model name {name!r} contains {bad[0]!r}: the monaibundle app would not serve it as segmentation"
        )
    if engine not in ENGINE_OVERLAYS:
        raise BundleFolderError(f"engine {engine!r}: expected one of {sorted(ENGINE_OVERLAYS)}")
    if engine != "pytorch":
        from ..cpu_engine import require_engine, require_quantized_model

        require_engine()
        if engine == "int8":  # the INT8 model beside the weights to install, before the app is touched
            require_quantized_model(weights if weights is not None else source_root() / "models" / "model.pt")
    if weights is not None:
        try:  # refused before the app or the bundle folder is touched
            load_weights(weights, "weights to serve")
        except WeightsFileError as e:
            raise BundleFolderError(str(e)) from None
    target = _app_folder(app_dir) / "model" / name
    with locked_folders(_app_folder(app_dir)):  # the app folder's lock, held until the install is done
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise BundleFolderError(f"{target} exists and is not empty (pass overwrite=True / --overwrite)")
        # assembled and checked outside the app: a refusal leaves the app (its main.py, model/) as it was
        with tempfile.TemporaryDirectory(prefix=f"transfuse-{name}-") as staging:
            # MONAI Label's /train trains the served bundle in place, over its model.pt (which training otherwise
            # refuses to replace unasked): the served train.json says so once, for every /train
            served = {"overwrite_weights": True, **dict(overrides or {})}
            bundle = copy_bundle(Path(staging) / name, task=task, overrides=served, weights=weights,
                                 include_models=include_models)
            installed = bundle / "models" / "model.pt"
            if installed.is_file():  # named as the user gave it, not as the staged copy
                given = Path(weights) if weights is not None else source_root() / "models" / "model.pt"
                check_weights_fit(bundle, given if given.is_file() else installed)
            elif not (bundle / "models" / "model.ts").is_file():
                if not init_weights:
                    raise BundleFolderError(
                        f"{target / 'models'} would have no model.pt: train the bundle first, "
                        f"pass weights, or ask for untrained weights (init_weights=True / --init-weights)"
                    )
                write_initial_weights(bundle)
            if engine == "int8":
                from ..cpu_engine import require_quantized_model

                require_quantized_model(installed)
            if ENGINE_OVERLAYS[engine] is not None:
                serve_with(bundle, ENGINE_OVERLAYS[engine])
            app = ensure_app(app_dir, active_learning=active_learning)
            with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=app / "model") as moved:
                moved = shutil.move(str(bundle), Path(moved) / name)  # into the app's file system, then swapped in
                if target.exists():
                    shutil.rmtree(target)
                os.replace(moved, target)
        return target


def server_command(
    app_dir: str | os.PathLike,
    studies: str | os.PathLike,
    models: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    python: str | None = None,
    extra_conf: Mapping[str, str] | None = None,
    allow_remote: bool = False,
) -> list[str]:
    """The ``start_server`` command line for local bundles, offline; run it with :func:`server_env`.

    ``zoo_source github`` stops the default zoo listing at start (it needs the network); ``sam2 false``
    stops the SAM2 weight download when sam2 happens to be installed. ``python -m monailabel.main`` is
    used rather than the ``monailabel`` wrapper, which runs whatever ``python`` is first on PATH.

    ``host`` must be a loopback address unless ``allow_remote`` is set: the server's authentication is off
    by default (docs/monailabel.md shows how to expose it behind a reverse proxy with TLS and a login).
    """
    if host not in LOOPBACK_HOSTS and not allow_remote:
        raise ValueError(
            f"host {host!r} would expose MONAI Label (no authentication by default) beyond this machine: use one "
            f"of {LOOPBACK_HOSTS} behind a reverse proxy with authentication, or pass allow_remote=True"
        )
    conf = {"models": ",".join(models), "zoo_source": "github", "sam2": "false", **dict(extra_conf or {})}
    cmd = [python or sys.executable, "-m", "monailabel.main", "start_server",
           "--app", str(app_dir), "--studies", str(studies)]
    for k, v in conf.items():
        cmd += ["--conf", k, str(v)]
    return cmd + ["--host", host, "--port", str(port)]


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to start the server in: ``base`` (default ``os.environ``) with
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``.

    MONAI Label 0.8.5 loads ``models/model.pt`` with ``torch.load(path, map_location=...)``, i.e. with
    torch's default ``weights_only`` (``True`` since torch 2.6, but ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    turns it off); this variable makes every such call weights-only whatever the default or that variable,
    so a ``model.pt`` with pickled code is refused by the server instead of run.
    """
    env = dict(os.environ if base is None else base)
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # torch refuses both variables set together
    env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    return env
