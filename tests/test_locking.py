"""One writer per output folder: the lock of :mod:`transfuse_bundle.locking`, with real processes,
and the bundle commands that take it (a second training on one bundle_root, an evaluation or inference into
a folder another run writes).

The other process is always real: a Python process holding the lock through :func:`lock_folders`, or a
training started with ``python -m monai.bundle run``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLI_TINY, ONE_THREAD, REPO, TINY, bundle_cli, run_workflow

from transfuse_bundle.errors import FolderInUseError, UserInputError, find_user_error
from transfuse_bundle.handlers import save_atomically
from transfuse_bundle.locking import lock_folders, release_folders
from transfuse_bundle.monailabel.app import install_bundle
from transfuse_bundle.networks import TransFuse



def _hold(*folders: Path) -> subprocess.Popen:
    """A process that locks ``folders`` and waits (until killed); returns once it holds them."""
    code = ("import sys, time\nfrom transfuse_bundle.locking import lock_folders\n"
            "lock_folders(sys.argv[1:])\nprint('locked', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, *map(str, folders)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_a_locked_folder_is_refused_until_its_holder_dies(tmp_path):
    held, free = tmp_path / "models", tmp_path / "eval"
    holder = _hold(held)
    try:
        with pytest.raises(FolderInUseError) as refused:
            lock_folders(held)
        assert str(refused.value).startswith(f"{held}: another run (pid {holder.pid}) is writing into this folder")
        with pytest.raises(FolderInUseError):  # a refusal keeps none of the folders it had locked before
            lock_folders([free, held])
        _kill(_hold(free))
    finally:
        _kill(holder)
    assert lock_folders([free, held]) == [str(free), str(held)]  # SIGKILL: the kernel dropped the holder's lock
    assert lock_folders(held) == [str(held)]  # this process holds it already: no-op
    release_folders()
    _kill(_hold(free, held))
    assert list(held.iterdir()) == [] and list(free.iterdir()) == []  # nothing is written into a locked folder


def test_a_folder_that_cannot_be_written_is_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserInputError, match=f"^{tmp_path / 'file' / 'models'}: cannot write into this folder"):
        lock_folders(tmp_path / "file" / "models")


def test_install_into_an_app_another_install_writes_is_refused(tmp_path):
    """Two installs into one MONAI Label app raced on copying the stock app and on replacing ``model/NAME``;
    now the second is refused before it touches the app."""
    app = tmp_path / "app"
    holder = _hold(app)
    try:
        with pytest.raises(FolderInUseError, match=f"^{app}: another run \\(pid {holder.pid}\\)"):
            install_bundle(app, "transfuse_polyp", init_weights=True)
    finally:
        _kill(holder)
    assert list(app.iterdir()) == []


def _weights(bundle: Path) -> None:
    save_atomically(TransFuse(TINY["variant"], img_size=TINY["image_size"]).state_dict(), bundle / "models" / "model.pt")


@pytest.mark.slow
def test_a_second_training_on_one_bundle_root_is_refused(tmp_path):
    """Training A runs; training B on the same bundle_root stops before any work, naming the folder and A's pid, and
    A is unaffected. Without the lock both trained into one models/ (and raced on the saves' temporary file)."""
    bundle = tmp_path / "bundle"
    command = ["run", "training", "--config_file", "configs/train.json", "--bundle_root", bundle, *CLI_TINY]
    env = {**os.environ, **ONE_THREAD}
    log = tmp_path / "a.log"
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, "-m", "monai.bundle", *map(str, command), "--max_epochs", "100"],
                                 cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "Epoch: 1/100, Iter: 1/" not in log.read_text():  # A trains
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        # --overwrite true: A may have saved its first model.pt already, which B would otherwise refuse to replace
        second = bundle_cli(*command, "--max_epochs", "1", "--overwrite", "true", env=env, check=False)
        assert first.poll() is None, log.read_text()[-3000:]  # A is still training
    finally:
        _kill(first)
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert second.stderr.splitlines()[-1] == (
        f"error: {bundle}/models: another run (pid {first.pid}) is writing into this folder; wait for it to finish, "
        "or give this run another folder (--bundle_root, --output_dir)")


@pytest.mark.slow
def test_evaluation_and_inference_refuse_an_output_dir_in_use(tmp_path):
    bundle, out = tmp_path / "bundle", tmp_path / "out dir"  # a space in the path, too
    _weights(bundle)
    holder = _hold(out)
    try:  # the user's evaluation command; inference in this process (the same check, without a second interpreter)
        result = bundle_cli("run", "--config_file", "['configs/train.json','configs/evaluate.json']", "--bundle_root",
                            bundle, "--output_dir", out, *CLI_TINY, env={**os.environ, **ONE_THREAD}, check=False)
        assert result.returncode == 1, result.stderr[-3000:]
        assert result.stderr.splitlines()[-1].startswith(f"error: {out}: another run (pid {holder.pid})"), result.stderr[-3000:]
        with pytest.raises(Exception) as refused:
            run_workflow("inference.json", bundle_root=str(bundle), output_dir=str(out), **TINY)
        assert str(find_user_error(refused.value)).startswith(f"{out}: another run (pid {holder.pid})"), refused.value
    finally:
        _kill(holder)
    assert list(out.iterdir()) == []  # nothing was written
