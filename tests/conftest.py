"""Shared test setup and helpers. Tests never download: hubs are switched off before anything imports them.

The helpers below are imported by the test modules (``from conftest import ...``): running the bundle CLI
and workflows, the MONAI Label server subprocess, the synthetic hip X-rays, a malicious pickle, the checks
of a binary evaluation report.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
# pytest-xdist (addopts: one worker per core, one test file per worker at a time) runs tests side by side:
# each worker gets its share of the cores, so two in-process trainings never fight over one core
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // _WORKERS)))
# With other processes on the same cores, OpenMP threads that spin-wait make torch 10-100x slower
# (a 64x64 TransFuse-S step: 0.7 s passive, 10-24 s spinning, measured on the 2-core CI machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SUITE_DISK_GB = 2.5  # peak size of pytest's temporary folders (measured: 2.4 GB)


def pytest_report_header(config):
    """States the free disk next to what the suite needs: a full disk fails whichever test writes next."""
    import shutil
    import tempfile

    free_gb = shutil.disk_usage(tempfile.gettempdir()).free / 1e9
    warning = "" if free_gb > SUITE_DISK_GB else "  <-- NOT ENOUGH: tests that write files will fail"
    return f"free disk for temporary files: {free_gb:.1f} GB (the suite needs about {SUITE_DISK_GB} GB){warning}"


# The files that take longest (minutes: trainings, the MONAI Label server, packaged bundles), longest first
# (measured per file in a full run on a 2-core AMD EPYC: ~190 s for test_monailabel.py down to ~37 s for
# test_evaluation_speed.py). pytest-xdist's loadfile mode hands files to the workers in collection order; starting the
# long ones first keeps one worker from being left with a long file at the end while the other is idle.
LONGEST_FIRST = ("test_monailabel.py", "test_cpu_engine.py", "test_compare_models.py", "test_zoo.py", "test_bundle.py",
                 "test_resume.py", "test_hub.py", "test_kvasir.py", "test_fast_inference.py", "test_prostate.py",
                 "test_networks.py", "test_tasks.py", "test_validation.py", "test_evaluation_speed.py")


def pytest_collection_modifyitems(config, items):
    """Runs the files of :data:`LONGEST_FIRST` first, in that order; the others keep their order (stable sort)."""
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _hip_case(rng, h: int = 96, w: int = 128):
    """A grey (H, W) uint8 image and its (H, W) class-id mask: pelvis band at the top, left and
    right femoral heads below it, each bone brighter than the soft tissue with its own texture."""
    import numpy as np

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mask = np.zeros((h, w), np.uint8)
    top = rng.uniform(0.12, 0.22) * h
    mask[(yy > top) & (yy < top + rng.uniform(0.18, 0.25) * h) & (np.abs(xx - w / 2) < rng.uniform(0.3, 0.42) * w)] = 1
    for label, cx in ((2, rng.uniform(0.2, 0.32) * w), (3, rng.uniform(0.68, 0.8) * w)):
        cy, radius = rng.uniform(0.58, 0.7) * h, rng.uniform(0.1, 0.15) * h
        mask[np.hypot(yy - cy, xx - cx) < radius] = label
    image = 60 + 25 * np.sin(xx / 7.0) * (mask == 0) + np.array([0, 170, 130, 200], np.float32)[mask]
    return np.clip(image + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8), mask


def write_hip_dataset(root, count: int, seed: int = 7):
    """Writes ``root/images/hip_NN.png`` (grey) and ``root/masks/hip_NN.png`` (class ids 0-3): no hip X-rays
    are available, so the hip task is tested on these synthetic three-bone images. Returns ``root``."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    for index in range(count):
        image, mask = _hip_case(rng)
        Image.fromarray(image, mode="L").save(root / "images" / f"hip_{index:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"hip_{index:02d}.png")
    return root


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the data, reference outputs and schemas beside the checkout, never copied into it
DATA = SHARED / "data"
KVASIR = DATA / "kvasir_seg"
PH2 = DATA / "ph2"
PROSTATE158 = DATA / "prostate158"
PROSTATE_CASE = PROSTATE158 / "020"
PROSTATE_T2 = PROSTATE_CASE / "t2.nii.gz"
# The tiny-run overrides for tests of what happens around the network: the tiny variant (a training step takes 2/3
# of TransFuse-S's, its weights 31 MB instead of 105 MB), small images, no loader processes (a worker costs ~8 s to
# start on 2 cores). Tests of the network or its accuracy keep TransFuse-S. CLI_*: the same as command-line options.
SMALL = {"variant": "tiny", "image_size": [64, 64], "num_workers": 0, "batch_size": 4}
TINY = {**SMALL, "image_size": [32, 32]}
from transfuse_bundle.tools.packaging import cli_arguments  # noqa: E402 (after the thread settings above)

CLI_SMALL, CLI_TINY = cli_arguments(SMALL), cli_arguments(TINY)
# One intra-op thread per subprocess: on a shared 2-core machine, 2 OpenMP threads per process made a
# training step 3-50x slower whenever another process was busy (measured), 1 thread is ~0.4 s either way.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def task_inputs(task: str, folder: Path, count: int = 2) -> list[Path]:
    """Real inputs of ``task`` linked (or, for hip, written) into ``folder``; a task without test data fails."""
    sources = {
        "polyp": sorted((KVASIR / "images").glob("*.jpg"))[:count],
        "isic2017": sorted((PH2 / "images").glob("*.jpg"))[:count],
        "prostate": [PROSTATE_T2],
    }
    folder.mkdir(parents=True)
    if task == "hip":
        return sorted((write_hip_dataset(folder.parent / "hip", count) / "images").glob("*.png"))
    if task not in sources:
        pytest.fail(f"task {task!r} has no test data here: add its real inputs to task_inputs() in conftest.py")
    links = []
    for index, src in enumerate(sources[task]):
        if not src.is_file():
            pytest.fail(f"test data missing: {src} (the tests read ../shared/data next to the repository)")
        links.append(folder / (f"case{index}_{src.name}" if task == "prostate" else src.name))
        links[-1].symlink_to(src)
    return links


def check_task_masks(task: str, inputs: list[Path], out: Path, out_channels: int) -> None:
    """The masks inference wrote into ``out`` for ``inputs``: one each, at the input's own size (a NIfTI label with
    the volume's shape and affine for the prostate task), holding only the task's label values."""
    import nibabel as nib
    from PIL import Image

    from transfuse_bundle.outputs import MANIFEST_NAME

    written = sorted(p for p in out.iterdir() if p.name != MANIFEST_NAME)  # the masks, and the record of them
    assert len(written) == len(inputs), f"{[p.name for p in written]} for {[p.name for p in inputs]}"
    for src, mask in zip(sorted(inputs), written):
        if task == "prostate":
            volume, label = nib.load(src), nib.load(mask)
            assert label.shape == volume.shape and np.allclose(label.affine, volume.affine, atol=1e-4)
            values = np.unique(np.asarray(label.dataobj))
        else:
            assert Image.open(mask).size == Image.open(src).size, f"{mask.name} vs {src.name}"
            values = np.unique(np.asarray(Image.open(mask)))
        assert set(values.tolist()) <= ({0, 255} if out_channels == 1 else set(range(out_channels)))


_warm_pythons = None  # this worker's warm_python.WarmPythons, made by the first python command


def pytest_sessionfinish(session, exitstatus):
    import shutil

    if _warm_pythons is not None:
        _warm_pythons.stop()
        shutil.rmtree(_warm_pythons.scratch, ignore_errors=True)


def run_command(cmd: list, cwd: Path = REPO, env: dict | None = None, timeout: float = 600,
                check: bool = True, fresh: bool = False) -> subprocess.CompletedProcess:
    """Runs ``cmd`` (bounded time) and, unless ``check`` is false, fails with its output when it did not succeed.

    A ``python`` command runs in this worker's warmed-up Python (``tests/warm_python.py``: the same command
    without the interpreter start); ``fresh``: always in a new interpreter (for tests of the interpreter's start
    itself: the console's lines at import, which a warm server printed to its own log, the README's exact command)."""
    global _warm_pythons
    import tempfile

    from warm_python import WarmPythons

    cmd = [str(c) for c in cmd]
    env = dict(os.environ) if env is None else env
    if _warm_pythons is None:
        _warm_pythons = WarmPythons(Path(tempfile.mkdtemp(prefix="warm_python_")))
    warm = None if fresh else _warm_pythons.find(cmd, env)
    if warm is not None:
        proc = warm.run(cmd, cwd=cwd, env=env, timeout=timeout)
    else:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, (f"{' '.join(map(str, cmd))}: exit {proc.returncode}\n"
                                      f"STDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}")
    return proc


def bundle_cli(*args, cwd: Path = REPO, env: dict | None = None, timeout: float = 600,
               check: bool = True, fresh: bool = False) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS``, the user's command, through :func:`run_command`."""
    return run_command([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, timeout=timeout, check=check,
                       fresh=fresh)


def run_workflow(config: str, task: str | None = None, overlays=(), source=None, **overrides):
    """The zoo's bundle test: the workflow of :func:`transfuse_bundle.tools.tasks.config_workflow` (same
    arguments: ``config`` of ``task`` from the repository or the bundle folder ``source``, then ``overlays`` and
    ``overrides``), initialize, check the properties, run, finalize."""
    from transfuse_bundle.tools.tasks import config_workflow

    workflow = config_workflow(config, task, overlays, source, **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return workflow


def untrained_weights(bundle: Path, image_size=(64, 64), in_channels: int = 3, variant: str = "S") -> Path:
    """Writes ``bundle/models/model.pt``: seeded untrained weights of the inference network (``variant``) at
    ``image_size`` with ``in_channels``, as a plain state dict (for tests of what happens around the network, not of
    its quality)."""
    import torch

    from transfuse_bundle.tools.tasks import config_parser

    parser = config_parser("inference.json", image_size=list(image_size), in_channels=in_channels, variant=variant,
                           device="cpu")
    parser.get_parsed_content("imports")
    torch.manual_seed(0)
    path = Path(bundle) / "models" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


# What used to be printed at every start, none of which concerns a user: PyTorch's DataLoader warning when the
# default of 4 workers exceeds the CPUs, MONAI's DICOM reader missing nvImageCodec (the log line and the warning).
# (MONAI's two lines about the config's trust and the metadata's ``optional_packages_version`` come before any
# of the bundle's code runs, and stay.)
CONSOLE_NOISE = re.compile(r"This DataLoader will create|nvImageCodec|Warning|WARNING|Traceback")


def console_noise(result: subprocess.CompletedProcess) -> list[str]:
    """The lines of a command's stdout and stderr that match :data:`CONSOLE_NOISE` (a quiet console: users read only what concerns them)."""
    return [line for line in (result.stdout + result.stderr).splitlines() if CONSOLE_NOISE.search(line)]


def root_cause(error: BaseException) -> BaseException:
    """The first exception of ``error``'s ``__cause__`` chain (MONAI's config parser wraps what a config raised)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


class CreatesFile:
    """Unpickling this calls ``open(path, "w")``: stands for any code a malicious ``model.pt`` would run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def require_monailabel() -> str:
    """The monailabel version; fails (never skips) with the install command when MONAI Label is missing."""
    import pytest

    from transfuse_bundle.monailabel.app import require_monailabel as installed_version

    try:
        version = installed_version()
        import requests  # noqa: F401  (installed by requirements-monailabel.txt)
    except ModuleNotFoundError as e:
        pytest.fail(f"MONAI Label tests need monailabel: {e}", pytrace=False)
    return version


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Ends a server started with ``start_new_session=True`` and every process it started: SIGTERM, then SIGKILL."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)


@contextlib.contextmanager
def serve_folder(folder: Path):
    """``with serve_folder(dist) as url:`` a plain HTTP server on 127.0.0.1 serving ``folder`` (quiet), stopped after."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


class ServerProcess:
    """A server subprocess of a test (its own session, its output in a log file) that the test waits for and stops.
    Subclasses start it with :meth:`_start` and say how to ask whether it answers (:meth:`_probe`)."""

    what = "the server"  # its name in failure messages
    exit_hint = ""  # added to the message when it exits at start
    ready_timeout = 60.0  # seconds :meth:`wait_ready` waits by default

    def _start(self, cmd: list[str], log: Path, env: dict | None, cwd: Path) -> None:
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(cwd),
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _probe(self):
        """What the server answered, or None while it does not answer yet."""
        raise NotImplementedError

    def wait_ready(self, timeout: float | None = None):
        """Polls :meth:`_probe` until it answers (its answer is returned); fails with the log if the server exits or
        does not answer within ``timeout`` seconds (default :attr:`ready_timeout`)."""
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.what} exited with {self.proc.returncode} at start{self.exit_hint}; log:\n"
                            f"{self.log()[-6000:]}", pytrace=False)
            answer = self._probe()
            if answer is not None:
                return answer
            time.sleep(0.5)
        pytest.fail(f"{self.what} did not answer within {timeout:.0f} s; log:\n{self.log()[-6000:]}")

    def stop(self) -> None:
        stop_process_group(self.proc)  # the server and the processes it started
        self._log.close()


class MonaiLabelServer(ServerProcess):
    """A MONAI Label server subprocess (stock ``monaibundle`` app, 127.0.0.1, a free port) serving ``models``
    (bundle folders of ``APP/model/``, any number of tasks), with a bounded-timeout HTTP client."""

    what = "the MONAI Label server"
    ready_timeout = 240.0  # it loads every bundle's network before it answers

    def __init__(self, app: Path, studies: Path, models: list[str], log: Path, conf: dict | None = None,
                 env: dict | None = None):
        """``conf``: more ``--conf KEY VALUE`` pairs (e.g. ``epistemic_model``); ``env``: more environment variables."""
        from transfuse_bundle.monailabel.app import server_command, server_env

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app, self.studies = app, studies
        scratch = log.parent / f"{log.stem}_tmp"  # MONAI Label leaves a logging config per start in TMPDIR
        scratch.mkdir(exist_ok=True)
        env = server_env(dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TMPDIR=str(scratch), **ONE_THREAD,
                              **(env or {})))
        self._start(server_command(app, studies, models, port=self.port, extra_conf=conf), log, env, app.parent)

    def _probe(self) -> dict | None:
        """``/info``'s JSON once the server answers."""
        import requests

        try:
            r = requests.get(f"{self.url}/info/", timeout=5)
            return r.json() if r.status_code == 200 else None
        except requests.RequestException:
            return None

    def request(self, method: str, path: str, timeout: float, **kwargs):
        import requests

        r = requests.request(method, f"{self.url}{path}", timeout=timeout, **kwargs)
        assert r.status_code == 200, f"{method} {path} -> HTTP {r.status_code}: {r.text[:2000]}\nlog:\n{self.log()[-4000:]}"
        return r


def check_binary_report(metrics: dict, out: Path, num_cases: int) -> None:
    """Range and consistency of a binary 2D evaluation report whose images all hold the foreground (the
    real-data trainings, Kvasir-SEG and PH2): the
    empty-mask counts, NSD, the ISIC 2017 metrics and the polyp toolbox metrics, in metrics.json and
    per_case.csv alike (no NaN or inf anywhere)."""
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert len(rows) == num_cases and all(cell not in ("", "nan", "inf") for row in rows for cell in row.values())
    empty = metrics["empty_cases"]
    assert empty["truth_empty"] == empty["both_empty"] == 0  # every image holds the foreground
    assert empty["prediction_empty"] == sum(r["empty"] == "prediction_empty" for r in rows)
    for key in ("sensitivity", "specificity", "thresholded_jaccard", "nsd"):
        assert 0.0 <= metrics[key] <= 1.0, key
        assert np.mean([float(r[key]) for r in rows]) == pytest.approx(metrics[key], abs=1e-5), key
    assert metrics["thresholded_jaccard"] <= metrics["mean_iou"]
    assert np.mean([float(r["hd95"]) for r in rows]) == pytest.approx(metrics["hd95"], rel=1e-5)  # every case counted
    toolbox = metrics["polyp_toolbox"]
    assert toolbox["num_cases"] == num_cases
    for key in ("mdice", "miou", "wfm", "sm", "mean_em", "max_em", "mae"):
        assert 0.0 <= toolbox[key] <= 1.0, key
    assert toolbox["miou"] <= toolbox["mdice"] and toolbox["mean_em"] <= toolbox["max_em"]
    for key in ("mdice", "miou", "wfm", "sm", "mae"):
        assert np.mean([float(r[key]) for r in rows]) == pytest.approx(toolbox[key], abs=1e-5), key
    print(f"new metrics: {({k: metrics[k] for k in ('sensitivity', 'specificity', 'thresholded_jaccard', 'nsd', 'empty_cases')})} "
          f"toolbox {toolbox}")


class HubServer(ServerProcess):
    """A real Hugging Face hub server on 127.0.0.1: olah (requirements-hub.txt), offline, serving the local git
    repositories under ``mirrors/models/OWNER/NAME`` (what ``transfuse-package --hub-dir`` writes)."""

    what = "the hub server (olah)"
    exit_hint = ": is requirements-hub.txt installed?"

    def __init__(self, root: Path):
        self.root, self.mirrors = root, root / "mirrors"
        self.mirrors.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "olah.toml"
        config.write_text(f'[basic]\nhost = "127.0.0.1"\nport = {self.port}\nmirrors-path = ["{self.mirrors}"]\n'
                          f'repos-path = "{root / "cache"}"\n[accessibility]\noffline = true\n')
        self._start([sys.executable, "-m", "olah.server", "-c", str(config)], root / "olah.log", None, root)

    def repo_dir(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a user's command against this hub: HF_ENDPOINT set, the suite's HF_HUB_OFFLINE unset,
        a hub cache of its own."""
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
        return {**env, "HF_ENDPOINT": self.url, "HF_HOME": str(self.root / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1",
                **extra}

    def _probe(self) -> bool | None:
        """True once the server answers (any HTTP status)."""
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{self.url}/api/models/none/none/refs", timeout=5)
        except urllib.error.HTTPError:  # it answered
            pass
        except OSError:
            return None
        return True


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """One olah hub server for the test session (see :class:`HubServer`)."""
    server = HubServer(tmp_path_factory.mktemp("hub"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
