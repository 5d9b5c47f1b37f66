"""Interruptions: atomic checkpoint files, resuming a SIGKILLed training, identical results for the
same seed, and a DDP job that exits non-zero, in bounded time, when one rank fails or hangs.

Real Kvasir-SEG images (a tiny subset at 32x32) are read in place from ../shared/data; everything is written
under pytest's tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import ignite.engine
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader, LrScheduleHandler, ValidationHandler

from conftest import CLI_TINY, KVASIR, REPO, TINY, run_command
from transfuse_bundle.data import write_datalist
from transfuse_bundle.handlers import GradientClipping, TrainingCheckpoint, every_rank_handlers, save_atomically
from transfuse_bundle.locking import lock_folders, release_folders
from transfuse_bundle.networks import TransFuse
from transfuse_bundle.tools.tasks import config_files, config_parser, config_workflow



@pytest.fixture(scope="module")
def kvasir(tmp_path_factory) -> Path:
    """A folder with a datalist.json of 8 training, 2 validation and 2 test Kvasir cases (absolute paths)."""
    folder = tmp_path_factory.mktemp("kvasir")
    write_datalist(KVASIR, folder / "datalist.json", num_training=8, num_validation=2, num_test=2)
    return folder


def _bundle_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json", *args]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- atomic writes ---------------------------------------------------------------------------------------------

def _save_forever(path: Path) -> None:
    """Saves ~4 MB files whose every value is the step number: a partial or mixed file cannot pass the check."""
    step = 0
    while True:  # numpy builds the values: torch's OpenMP pool cannot be used in a forked child
        step += 1
        save_atomically({"step": step, "values": torch.from_numpy(np.full(1_000_000, step, dtype=np.float32))}, path)


def _load_complete(path: Path) -> int:
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["values"].shape == (1_000_000,) and bool((checkpoint["values"] == checkpoint["step"]).all())
    return checkpoint["step"]


def test_save_atomically_never_exposes_a_partial_file(tmp_path):
    """A writer process saves in a loop; this process loads the file while it is being replaced, then SIGKILLs
    the writer in the middle of a save. Every load must give a complete file (with a plain ``torch.save`` in
    the writer, most of these loads fail). The next run that locks the folder removes the killed save's
    temporary file (a 300 MB checkpoint's, in a real training)."""
    target = tmp_path / "checkpoint.pt"
    save_atomically({"step": 0, "values": torch.zeros(1_000_000)}, target)
    # fork: the writer starts at once, with torch already imported
    writer = multiprocessing.get_context("fork").Process(target=_save_forever, args=(target,), daemon=True)
    writer.start()
    partials = lambda: list(tmp_path.glob(".checkpoint.pt.*.partial"))  # noqa: E731
    try:
        steps, deadline = set(), time.monotonic() + 60
        while len(steps) < 20 and time.monotonic() < deadline:  # loads racing the writer's replacements
            steps.add(_load_complete(target))
        assert len(steps) >= 20 and writer.is_alive()
        for _ in range(3):  # kill inside a save: the temporary file is being written
            while not partials():
                time.sleep(0.0005)
            os.kill(writer.pid, signal.SIGSTOP)
            if partials():
                break
            os.kill(writer.pid, signal.SIGCONT)
        assert partials()
    finally:
        writer.kill()
        writer.join(timeout=30)
    _load_complete(target)
    assert len(partials()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == sorted([partials()[0].name, "checkpoint.pt"])
    lock_folders(tmp_path)
    release_folders([tmp_path])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def _save_steps(path: Path, count: int) -> None:
    for step in range(count):
        save_atomically({"step": step, "values": torch.from_numpy(np.full(250_000, step, dtype=np.float32))}, path)


def test_concurrent_saves_of_one_file_never_collide(tmp_path):
    """Two processes save the same file 40 times each (two runs that were not stopped by the folder lock, or
    ranks that all save). With one shared temporary name, a saver truncates or moves the other's temporary file:
    ``os.replace`` raises ``FileNotFoundError`` or a torn file is swapped in."""
    target = tmp_path / "model.pt"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_save_steps, args=(target, 40)) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=300)
    assert [writer.exitcode for writer in writers] == [0, 0]
    checkpoint = torch.load(target, weights_only=True)
    assert bool((checkpoint["values"] == checkpoint["step"]).all())
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind


# --- resume ----------------------------------------------------------------------------------------------------


def test_resume_without_checkpoint_fails_before_any_work(kvasir, tmp_path):
    workflow = config_workflow("train.json", bundle_root=str(tmp_path), dataset_dir=str(kvasir), resume=True, **TINY)
    workflow.initialize()
    with pytest.raises(RuntimeError) as error:  # MONAI wraps what a config expression raises
        workflow.run()  # the check is run's first step, before the data is listed
    assert isinstance(error.value.__cause__, FileNotFoundError)
    assert f"{tmp_path}/models/checkpoint.pt' does not exist" in str(error.value.__cause__)
    assert not (tmp_path / "models").exists()


def test_resuming_a_finished_training_says_there_is_nothing_left(tmp_path, caplog):
    """--resume true on a checkpoint at max_epochs: ignite ends the run at once; the log says why."""
    network = torch.nn.Linear(2, 1)
    path = tmp_path / "checkpoint.pt"
    for resume in (False, True):
        engine = Engine(lambda engine, batch: None)
        TrainingCheckpoint(path, {"network": network}, resume=resume).attach(engine)
        with caplog.at_level("WARNING"):
            engine.run([0, 1], max_epochs=1)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{path} is at epoch 1 of max_epochs 1: nothing left to train (raise --max_epochs to train on)"]


def _cosine_run(path: Path, max_epochs: int, resume: bool) -> list[float]:
    """Trains a real (tiny) network for ``max_epochs`` with train.json's schedule (Adam, cosine over ``max_epochs``,
    stepped per epoch by MONAI's LrScheduleHandler) and its checkpoint; returns the learning rate of each epoch run."""
    torch.manual_seed(0)
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, betas=(0.5, 0.999))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)

    def step(engine, batch):
        optimizer.zero_grad()
        network(batch).sum().backward()
        optimizer.step()

    engine, rates = Engine(step), []
    engine.add_event_handler(ignite.engine.Events.EPOCH_STARTED, lambda e: rates.append(optimizer.param_groups[0]["lr"]))
    LrScheduleHandler(scheduler, epoch_level=True, print_lr=False).attach(engine)  # train.json's order: step, then save
    TrainingCheckpoint(path, {"network": network, "optimizer": optimizer, "lr_scheduler": scheduler},
                       resume=resume).attach(engine)
    engine.run([torch.ones(1, 2)] * 2, max_epochs=max_epochs)
    return rates


def test_resuming_a_finished_run_with_more_epochs_follows_the_longer_schedule(tmp_path):
    """The hint of a finished run says: raise max_epochs to train on. Before, the checkpoint's cosine (T_max = the
    first run's 2 epochs) came back with it: epoch 3 ran at the rate 0 it had reached, epoch 4 at half the initial
    rate, climbing back up. Now epochs 3 and 4 run at the 4-epoch schedule's rates and it ends at 0."""
    path = tmp_path / "checkpoint.pt"
    assert _cosine_run(path, 2, resume=False) == pytest.approx([1e-4, 5e-5])
    cosine = lambda epoch, length: 1e-4 * (1 + np.cos(np.pi * epoch / length)) / 2  # noqa: E731
    assert _cosine_run(path, 4, resume=True) == pytest.approx([cosine(2, 4), cosine(3, 4)])
    saved = torch.load(path, weights_only=True)
    assert saved["lr_scheduler"]["T_max"] == 4 and saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0, abs=1e-12)
    # an interrupted run resumed with its own max_epochs is unchanged: the schedule it saved is this run's
    assert _cosine_run(tmp_path / "other.pt", 4, resume=False) == pytest.approx([cosine(e, 4) for e in range(4)])


def test_ddp_ranks_other_than_0_run_the_handlers_that_keep_them_in_step(kvasir, tmp_path):
    """The configured train handlers, built for real: every rank runs validation, clipping, the LR schedule and
    the checkpoint (and a CheckpointLoader wherever it is inserted, as MONAI Label does); logging is rank 0's."""
    parser = config_parser("multi_gpu_train.json")
    assert "transfuse_bundle.handlers.every_rank_handlers(@train#handlers)" in parser.get("train#trainer#train_handlers")
    train_only = config_parser("train.json", bundle_root=str(tmp_path), dataset_dir=str(kvasir), cache_rate=0.0, **TINY)
    handlers = train_only.get_parsed_content("train#handlers")
    loader = CheckpointLoader(str(tmp_path / "pretrained.pt"), {"model": train_only.get_parsed_content("network")})
    selected = every_rank_handlers([handlers[-1], loader, *handlers])
    assert [type(h) for h in selected] == [
        CheckpointLoader, ValidationHandler, GradientClipping, LrScheduleHandler, TrainingCheckpoint,
    ]
    assert len(handlers) > 4  # the rank-0-only ones exist and were left out


def _wait_for(predicate, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"training ended early ({process.returncode}):\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-4000:]}"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_finishes_at_max_epochs(kvasir, tmp_path):
    root, epochs = tmp_path / "bundle", 3
    checkpoint_path, model_path = root / "models" / "checkpoint.pt", root / "models" / "model.pt"
    command = _bundle_command("--bundle_root", str(root), "--dataset_dir", str(kvasir), "--max_epochs", str(epochs),
                              "--keep_model", "best", *CLI_TINY)  # model.pt follows the best validation Dice
    env = {**os.environ, "OMP_NUM_THREADS": "2"}

    log = tmp_path / "first.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:  # epoch 1 is saved and epoch 2 has started: kill inside epoch 2
            _wait_for(lambda: checkpoint_path.exists() and f"Epoch: 2/{epochs}, Iter: 1/" in log.read_text(), process, log)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    epoch_length = saved["trainer"]["epoch_length"]
    assert epoch_length == 2  # 8 cases, batches of 4
    killed_after_epoch = saved["trainer"]["iteration"] // epoch_length
    assert 1 <= killed_after_epoch < epochs and saved["trainer"]["iteration"] % epoch_length == 0
    assert set(saved) == {"network", "optimizer", "lr_scheduler", "trainer", "best_metric"}
    assert saved["lr_scheduler"]["last_epoch"] == killed_after_epoch

    # A best metric no epoch can beat (Dice 1.0, kept when equal) must survive the resume: model.pt stays as it is.
    saved["best_metric"] = {"best_metric": 1.0, "best_metric_epoch": 1}
    save_atomically(saved, checkpoint_path)
    model_before = _sha256(model_path)

    log = tmp_path / "resumed.log"
    result = run_command([*command, "--resume", "true"], env=env, check=False)
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, log.read_text()[-6000:]
    assert f"Restored all variables from {checkpoint_path}" in log.read_text()
    iteration_logs = re.findall(r"Epoch: (\d+)/(\d+), Iter: 1/", log.read_text())
    assert [int(e) for e, _ in iteration_logs] == list(range(killed_after_epoch + 1, epochs + 1))  # no epoch twice
    assert all(int(total) == epochs for _, total in iteration_logs)

    final = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == epochs * epoch_length  # the trainer ended at max_epochs
    assert final["lr_scheduler"]["last_epoch"] == epochs
    assert final["best_metric"] == {"best_metric": 1.0, "best_metric_epoch": 1}
    assert _sha256(model_path) == model_before, "the resumed run replaced model.pt without a better metric"
    state_dict = torch.load(model_path, map_location="cpu", weights_only=True)
    TransFuse(TINY["variant"], img_size=TINY["image_size"]).load_state_dict(state_dict, strict=True)  # a plain network state dict


@pytest.mark.slow
def test_a_full_disk_at_a_save_stops_training_in_one_line_keeping_the_last_files(kvasir, tmp_path, caplog):
    """The disk fills during epoch 2 (a file-size limit, RLIMIT_FSIZE as ``ulimit -f`` sets it, stands for a full
    disk: writes beyond it fail with EFBIG, as they fail with ENOSPC on a full one). Before, the save's OSError came
    with MONAI's logged traceback and the interpreter's; now one refusal that names the file, says what is kept and how
    to go on, and epoch 1's model.pt and checkpoint.pt are intact, with no temporary file left."""
    import resource

    from transfuse_bundle.errors import DiskFullError, find_user_error

    root = tmp_path / "bundle"
    workflow = config_workflow("train.json", bundle_root=str(root), dataset_dir=str(kvasir), max_epochs=2, **TINY)
    workflow.initialize()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    kept = {}

    def fill_the_disk(engine):
        kept.update({p.name: _sha256(p) for p in (root / "models").iterdir()})
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # 1 MB: model.pt (100 MB) cannot be written

    workflow.parser.get_parsed_content("train#trainer").add_event_handler(ignite.engine.Events.EPOCH_STARTED(once=2),
                                                                          fill_the_disk)
    try:
        with pytest.raises(Exception) as err, caplog.at_level("INFO"):
            workflow.run()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        workflow.finalize()
    refusal = find_user_error(err.value)
    assert isinstance(refusal, DiskFullError), repr(err.value)
    assert str(refusal) == (
        f"training stopped at the end of epoch 2: {root}/models/model.pt: could not be written: File too large (a full "
        f"disk, a quota or a file-size limit); the previous model.pt is kept as it was and no partial file is left; free "
        f"some space, then continue from the last saved checkpoint with --resume true")
    assert not [r for r in caplog.records if r.exc_info], "a refusal was logged with its traceback"
    assert sorted(kept) == ["checkpoint.pt", "model.pt"]
    assert {p.name: _sha256(p) for p in (root / "models").iterdir()} == kept  # epoch 1's files, nothing else
    assert torch.load(root / "models" / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 2  # 1 epoch


# --- determinism -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_json(kvasir, tmp_path):
    """Two trainings (2 epochs, random augmentation on) and evaluations with the same seed, on CPU."""
    reports = []
    for run in ("a", "b"):
        overrides = {"bundle_root": str(tmp_path / run), "dataset_dir": str(kvasir), "max_epochs": 2, **TINY}
        for config, extra in (("train.json", {}), ("evaluate.json", {"output_dir": str(tmp_path / run / "eval")})):
            workflow = config_workflow(config, **overrides, **extra)
            workflow.initialize()
            workflow.run()
            workflow.finalize()
        reports.append((tmp_path / run / "eval" / "metrics.json").read_bytes())
    assert json.loads(reports[0])["num_cases"] == 2
    assert reports[0] == reports[1]


# --- DDP failure -----------------------------------------------------------------------------------------------

# Rank 1 fails at its 2nd iteration, while rank 0 is in (or enters) the gradient all-reduce of DDP.
INJECT = {
    "crash": "lambda engine: 1 / 0",
    "hang": "lambda engine: time.sleep(3600)",
}


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["crash", "hang"])
def test_ddp_one_failing_rank_ends_the_job_non_zero(kvasir, tmp_path, failure):
    """torchrun, 2 CPU processes (gloo). A crash: torchrun stops the other rank. A hang: the process-group timeout
    (``ddp_timeout_s``) ends rank 0's collective. Either way the job exits non-zero in bounded time."""
    timeout_s = 10  # longer than any step of this tiny run takes, even with the other worker busy
    inject = tmp_path / "inject.json"
    inject.write_text(json.dumps({
        "training": [
            "$import time",
            "$dist.get_rank() == 1 and @train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once=2), "
            + INJECT[failure] + ")",
            "$@train#trainer.run()",
        ]
    }))
    # the user's DDP command, with the injection overlaid on the multi-GPU chain
    chain = [*config_files("multi_gpu_train.json"), inject]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
        "training", "--config_file", "[" + ",".join(f"'{f}'" for f in chain) + "]", "--bundle_root", str(tmp_path / "bundle"),
        "--dataset_dir", str(kvasir), "--max_epochs", "3", "--ddp_timeout_s", str(timeout_s), *CLI_TINY, "--batch_size", "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the DDP job hung with a failed rank:\n{output[-6000:]}")
    elapsed = time.monotonic() - start
    assert process.returncode != 0, output[-6000:]
    assert elapsed < 240
    if failure == "crash":
        assert "ZeroDivisionError" in output
    else:  # gloo's own message, with the configured timeout
        assert f"Timed out waiting {timeout_s * 1000}ms" in output, output[-6000:]
    # no process of the job is left behind
    leftovers = subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], f"processes left behind: {leftovers}"


def test_false_from_the_command_line_is_false(tmp_path):
    """``monai.bundle run --resume false --pretrained false`` passes the strings "false" (python-fire reads only
    True/False): no resume is attempted (there is no checkpoint) and no ImageNet download either."""
    parser = config_parser("train.json", bundle_root=str(tmp_path), resume="false", pretrained="false", image_size=[32, 32])
    assert parser.get_parsed_content("check_checkpoint") is False
    assert TrainingCheckpoint(tmp_path / "checkpoint.pt", {}, resume="false").resume is False
    parser.get_parsed_content("network_def")  # pretrained "false" would try the hub (offline here) and fail
    parser["resume"] = "maybe"
    with pytest.raises(RuntimeError) as refused:
        parser.get_parsed_content("check_checkpoint", lazy=False)
    assert "resume must be true or false, got 'maybe'" in str(refused.value.__cause__)
