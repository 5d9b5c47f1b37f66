"""Model-zoo distribution end to end: package, serve, download, large files, run, load, exports, zoo checks.

The module packages the polyp bundle once (64x64 network, untrained seeded weights, TorchScript and ONNX
exports, weights as large files) into a tmp ``dist/``, serves ``dist/`` from an HTTP server on 127.0.0.1
and downloads it with ``python -m monai.bundle download`` into another tmp folder, as a user would. The
downloaded bundle is then checked the way the model zoo's CI checks a bundle, and used as a user would use it: ``monai.bundle run`` writes masks for real Kvasir-SEG images, ``monai.bundle.load``
returns the network with the packaged weights, ``download_large_files`` refuses tampered weights.

"Runs without pip install": this project is installed editable in the test environment, which would hide
a bundle that only works because the repository is importable. The user-facing commands therefore run in
a second interpreter, a throw-away venv whose only extra path is this environment's site-packages (a
``.pth`` line): torch, MONAI etc. import, but the editable install's finder (itself a ``.pth`` hook, which
Python does not process in a path added that way) is not installed, so ``import transfuse_bundle`` fails
there (asserted) unless the downloaded bundle folder is on ``PYTHONPATH``, and any ``transfuse_bundle``
that runs is the downloaded copy (also asserted through ``__file__``).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import KVASIR, REPO, SHARED, SMALL, MonaiLabelServer, require_monailabel, run_command
from transfuse_bundle.tools.bundle_folder import copy_bundle, write_initial_weights
from transfuse_bundle.tools.packaging import REQUIRED_FILES, PackagingError, make_torchscript_only, package_bundle, sha256
from transfuse_bundle.tools.tasks import WORKFLOW_TYPES, config_files, config_parser, config_workflow

SCHEMA = SHARED / "schemas" / "meta_schema_20240725.json"
NAME = "transfuse_polyp"
N_IMAGES = 3  # real Kvasir-SEG images for inference
TIMEOUT = 600
TIMINGS: dict[str, float] = {}


def _run(cmd: list[str], cwd: Path, env: dict | None = None, step: str | None = None, check: bool = True,
         timeout: int = TIMEOUT, fresh: bool = False) -> subprocess.CompletedProcess:
    """Runs a command (bounded time), records its duration, and fails with its output unless it succeeded."""
    t0 = time.monotonic()
    proc = run_command(cmd, cwd=cwd, env=env, timeout=timeout, check=check, fresh=fresh)
    TIMINGS[step or " ".join(map(str, cmd[1:5]))] = time.monotonic() - t0
    return proc


def _env(pythonpath: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def _assert_imported_from(stdout: str, bundle: Path) -> None:
    """The line ``transfuse_bundle: FILE`` the command printed names the bundle folder's copy of the package."""
    found = re.findall(r"^transfuse_bundle: (\S+)$", stdout, flags=re.MULTILINE)
    assert found, f"the command did not report which transfuse_bundle it used:\n{stdout[-3000:]}"
    expected = (bundle / "transfuse_bundle" / "__init__.py").resolve()
    assert [Path(f).resolve() for f in found] == [expected], f"transfuse_bundle imported from {found}, expected {expected}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request lines on stderr
        pass


@pytest.fixture(scope="module", autouse=True)
def _report_timings(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and TIMINGS:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line("model-zoo steps (s):")
            for step, seconds in TIMINGS.items():
                reporter.write_line(f"  {step:<60} {seconds:7.2f}")


@pytest.fixture(scope="module")
def plain_python(tmp_path_factory) -> str:
    """An interpreter with this environment's packages but without the editable ``transfuse_bundle``."""
    env_dir = tmp_path_factory.mktemp("plain") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=env_dir.parent, step="make plain venv")
    python = env_dir / "bin" / "python"
    # fresh interpreters while the venv is being made (a warm one would keep the sys.path it started with)
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=env_dir.parent,
                step="plain venv: site-packages path", fresh=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    assert deps, f"no site-packages on {sys.path}"
    Path(site, "project_deps.pth").write_text("\n".join(deps) + "\n")
    proc = _run([str(python), "-c", "import torch, monai, timm, ignite; import transfuse_bundle"],
                cwd=env_dir.parent, env=_env(), check=False, step="plain venv: imports", fresh=True)
    assert "No module named 'transfuse_bundle'" in proc.stderr, (
        f"transfuse_bundle must not be importable in the plain interpreter (and its deps must be):\n{proc.stderr[-3000:]}")
    return str(python)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Untrained, seeded weights of the 64x64 network (the masks they give are mixed, not all one class)."""
    folder = copy_bundle(tmp_path_factory.mktemp("init") / NAME, task="polyp", overrides=SMALL, include_models=False)
    return write_initial_weights(folder)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving a tmp ``dist/`` folder (filled by :func:`package`)."""
    dist = tmp_path_factory.mktemp("dist")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(dist)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"dist": dist, "url": f"http://127.0.0.1:{httpd.server_address[1]}"}
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def package(server, weights, tmp_path_factory):
    """The package: exports made, weights (pt/ts/onnx) as large files served next to the zip."""
    # a temporary folder of its own (in-process and for the export commands): the system's /tmp is shared
    # with the other xdist worker, whose own temporary files would show up in a before/after listing
    own_tmp = tmp_path_factory.mktemp("system_tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(own_tmp))
        patch.setenv("TMPDIR", str(own_tmp))
        t0 = time.monotonic()
        result = package_bundle("polyp", out=server["dist"], weights=weights, overrides=SMALL, export=True,
                                large_files_url=server["url"], schema=SCHEMA)
        TIMINGS["package_bundle (copy, ckpt_export, onnx_export, zip)"] = time.monotonic() - t0
    # nothing left in the temporary folder (MONAI's onnx_export leaves the weights there by itself)
    left = sorted(p.name for p in own_tmp.iterdir())
    assert left == [], f"packaging left {left} in its temporary folder {own_tmp}"
    return result


@pytest.fixture(scope="module")
def downloaded(package, server, plain_python, tmp_path_factory) -> Path:
    """``monai.bundle download`` + ``download_large_files`` in another working directory, without install."""
    work = tmp_path_factory.mktemp("user")
    bundles = work / "bundles"
    url = f"{server['url']}/{package.zip_path.name}"
    _run([plain_python, "-m", "monai.bundle", "download", "--name", NAME, "--version", package.version,
          "--url", url, "--bundle_dir", str(bundles)], cwd=work, env=_env(), step="monai.bundle download")
    bundle = bundles / NAME
    assert (bundle / "configs" / "inference.json").is_file(), f"download did not extract {NAME}/ into {bundles}"
    assert not (bundle / "models" / "model.pt").exists(), "the large-files package must not carry the weights"
    _run([plain_python, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle)],
         cwd=work, env=_env(), step="monai.bundle download_large_files")
    return bundle


@pytest.fixture(scope="module")
def kvasir_images(tmp_path_factory) -> Path:
    """A folder with links to a few real Kvasir-SEG images (the data stays in ../shared/data)."""
    if not (KVASIR / "images").is_dir():
        pytest.fail(f"test data missing: {KVASIR / 'images'} (the tests read ../shared/data next to the repository)")
    folder = tmp_path_factory.mktemp("kvasir") / "images"
    folder.mkdir()
    for src in sorted((KVASIR / "images").glob("*.jpg"))[:N_IMAGES]:
        (folder / src.name).symlink_to(src)
    return folder


@pytest.fixture(scope="module")
def cli_masks(downloaded, plain_python, kvasir_images, tmp_path_factory) -> Path:
    """``monai.bundle run`` of the downloaded bundle's inference.json on real images, from another folder."""
    work = tmp_path_factory.mktemp("run")
    out = work / "masks"
    # the user's command; the --finalize override (empty in inference.json) only reports which
    # transfuse_bundle the run used
    proc = _run(
        [plain_python, "-m", "monai.bundle", "run", "--config_file", str(downloaded / "configs" / "inference.json"),
         "--bundle_root", str(downloaded), "--dataset_dir", str(kvasir_images), "--output_dir", str(out),
         "--finalize", "['$print(\"transfuse_bundle:\", transfuse_bundle.__file__)']"],
        cwd=work, env=_env(), step="monai.bundle run inference (3 Kvasir images)")
    _assert_imported_from(proc.stdout, downloaded)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the package itself


def test_package_script_zips_weights_and_code_under_top_folder(weights, tmp_path):
    """The user's command (weights inside): one top folder, required files, the code, the exact weights."""
    dist = tmp_path / "dist"
    _run([sys.executable, str(REPO / "scripts" / "package_bundle.py"), "--task", "polyp", "--weights", str(weights),
          "--out", str(dist), "--set", "image_size=[64,64]", "--set", f"variant={json.dumps(SMALL['variant'])}"], cwd=tmp_path, step="scripts/package_bundle.py (weights inside)")
    zips = sorted(dist.glob("*.zip"))
    assert [z.name for z in zips] == [f"{NAME}_v0.1.0.zip"]
    assert sorted(p.name for p in dist.iterdir()) == [zips[0].name, f"{zips[0].name}.sha256"], \
        "staging folders or other files were left in dist/ (or the zip's published sha256 is missing)"
    with zipfile.ZipFile(zips[0]) as zf:
        names = set(zf.namelist())
        assert {n.split("/", 1)[0] for n in names} == {NAME}
        for required in (*REQUIRED_FILES, "models/model.pt", "configs/train.json", "configs/evaluate.json",
                         "configs/multi_gpu_train.json", "configs/logging.conf", "transfuse_bundle/__init__.py",
                         "transfuse_bundle/networks/transfuse.py"):
            assert f"{NAME}/{required}" in names, f"{required} missing from the zip"
        assert f"{NAME}/transfuse_bundle/tools/packaging.py" not in names, "the packaging tool was shipped"
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        assert not any(n.startswith(f"{NAME}/configs/tasks") for n in names)
        assert hashlib.sha256(zf.read(f"{NAME}/models/model.pt")).hexdigest() == sha256(weights)
        inference = json.loads(zf.read(f"{NAME}/configs/inference.json"))
        assert inference["image_size"] == [64, 64]
        meta = json.loads(zf.read(f"{NAME}/configs/metadata.json"))
        assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64]


def test_package_refuses_version_without_changelog_and_missing_weights(weights, tmp_path):
    with pytest.raises(PackagingError, match=r"version '9\.9\.9' is not a key of 'changelog' in .*metadata\.json"):
        package_bundle("polyp", out=tmp_path / "dist", weights=weights, version="9.9.9")
    with pytest.raises(PackagingError, match=r"weights file .*nothing\.pt does not exist"):
        package_bundle("polyp", out=tmp_path / "dist", weights=tmp_path / "nothing.pt")
    assert not list((tmp_path / "dist").glob("*.zip"))


def test_large_files_package_lists_url_and_sha256(package, server):
    with zipfile.ZipFile(package.zip_path) as zf:
        names = set(zf.namelist())
        listed = yaml.safe_load(zf.read(f"{NAME}/large_files.yml"))["large_files"]
    assert not any(n.endswith((".pt", ".ts", ".onnx")) for n in names), "weights must not be inside the zip"
    assert [e["path"] for e in listed] == ["models/model.pt", "models/model.ts", "models/model.onnx"]
    for entry in listed:
        served = package.large_files[entry["path"]]
        assert served.parent == server["dist"]
        assert entry["url"] == f"{server['url']}/{served.name}"
        assert entry["hash_type"] == "sha256" and entry["hash_val"] == sha256(served)


# ---------------------------------------------------------------------------------------------------------------
# the zoo's checks, on the downloaded bundle


def test_zoo_required_files_after_download(downloaded, package):
    for required in (*REQUIRED_FILES, "models/model.pt", "models/model.ts", "models/model.onnx"):
        assert (downloaded / required).is_file(), f"{required} missing in the downloaded bundle"
    for path, served in package.large_files.items():
        assert sha256(downloaded / path) == sha256(served), f"{path} differs from the served file"


def test_zoo_metadata_valid_offline_and_version_in_changelog(downloaded, package, tmp_path):
    from monai.bundle import verify_metadata

    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # verify_metadata downloads the schema unless --filepath exists
    verify_metadata(meta_file=str(downloaded / "configs" / "metadata.json"), filepath=str(schema))
    meta = json.loads((downloaded / "configs" / "metadata.json").read_text())
    assert meta["version"] == package.version and meta["version"] in meta["changelog"]
    assert meta["optional_packages_version"] == meta["required_packages_version"]
    for pin in [meta["pytorch_version"], meta["monai_version"], *meta["required_packages_version"].values()]:
        assert "+" not in pin, f"pin {pin} is not an installable version"


def test_zoo_verify_net_in_out_cli(downloaded, plain_python, tmp_path):
    proc = _run([plain_python, "-m", "monai.bundle", "verify_net_in_out", "network_def",
                 "--meta_file", str(downloaded / "configs" / "metadata.json"),
                 "--config_file", str(downloaded / "configs" / "inference.json")],
                cwd=tmp_path, env=_env(pythonpath=downloaded), step="monai.bundle verify_net_in_out")
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_zoo_torchscript_from_ckpt_export_carries_metadata(downloaded, package):
    """models/model.ts was written by ``ckpt_export`` (script mode, the zoo's check) during packaging."""
    from monai.bundle import load

    ts, meta, extra = load(name=NAME, bundle_dir=downloaded.parent, load_ts_module=True, device="cpu",
                           config_files=["inference.json"])
    assert isinstance(ts, torch.jit.ScriptModule)
    assert meta["version"] == package.version
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "transfuse_bundle.networks.TransFuse"


ZOO_UNIT_TEST = """
import json, sys, time
from monai.bundle import ConfigWorkflow
import transfuse_bundle
from transfuse_bundle.data import synthetic_dataset

configs, work, chains = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
data = synthetic_dataset(work + "/synthetic", num_cases=6, num_validation=1, num_test=2, size=(48, 64))
common = {"meta_file": chains["metadata.json"], "logging_file": configs + "/logging.conf",
          "bundle_root": work + "/root", "dataset_dir": data}
runs = [
    ("train.json", {"train#trainer#max_epochs": 1}),
    ("evaluate.json", {"output_dir": work + "/eval"}),
    ("inference.json", {"output_dir": work + "/pred"}),
]
for config, extra in runs:
    config_file, workflow_type = chains[config]
    workflow = ConfigWorkflow(config_file=config_file, workflow_type=workflow_type, **common, **extra)
    workflow.initialize()
    assert workflow.check_properties() == [], f"{config_file}: missing properties"
    workflow.run()
    workflow.finalize()
print("transfuse_bundle:", transfuse_bundle.__file__)
print("modules:", json.dumps(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith("transfuse_bundle"))))
"""


def test_zoo_unit_test_on_downloaded_bundle(downloaded, plain_python, tmp_path):
    """The zoo's bundle unit test on synthetic data: train, train+evaluate, inference; each
    ``initialize(); check_properties() == []; run(); finalize()``, in the plain interpreter with only the
    downloaded folder on the Python path: the packaged code alone trains, evaluates and infers (outputs under
    tmp_path, not the bundle)."""
    # the bundle folder's chains (what config_workflow(config, source=bundle) reads), for the plain interpreter,
    # which has no transfuse_bundle.tools: evaluate.json is an overlay on the folder's train.json
    chains = {config: ([str(f) for f in config_files(config, source=downloaded)], WORKFLOW_TYPES[config])
              for config in ("train.json", "evaluate.json", "inference.json")}
    chains["metadata.json"] = [str(f) for f in config_files("metadata.json", source=downloaded)]
    proc = _run([plain_python, "-c", ZOO_UNIT_TEST, str(downloaded / "configs"), str(tmp_path), json.dumps(chains)],
                cwd=tmp_path, env=_env(pythonpath=downloaded), step="zoo unit test (train, train+evaluate, inference)")
    _assert_imported_from(proc.stdout, downloaded)
    used = json.loads(re.findall(r"^modules: (.*)$", proc.stdout, flags=re.MULTILINE)[0])
    assert all(Path(f).resolve().is_relative_to(downloaded.resolve()) for f in used), used
    assert (tmp_path / "root" / "models" / "model.pt").is_file()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_cases"] == 2
    assert len(list((tmp_path / "pred").glob("*_seg.png"))) == 2


def test_package_ships_only_the_code_its_configs_run(downloaded):
    """The runtime package only: no tools (packaging, benchmarks, command-line tools), no MONAI Label integration,
    no peer networks; every shipped module is one the configs import (directly or through another)."""
    shipped = sorted(p.relative_to(downloaded).as_posix() for p in (downloaded / "transfuse_bundle").rglob("*.py"))
    assert not [f for f in shipped if f.startswith(("transfuse_bundle/tools/", "transfuse_bundle/monailabel/"))], shipped
    from transfuse_bundle.tools.bundle_folder import read_json_object, runtime_files

    configs = [read_json_object(p) for p in sorted((downloaded / "configs").glob("*.json"))]
    assert shipped == [p.as_posix() for p in runtime_files(configs, REPO)]
    docs = sorted(p.relative_to(downloaded).as_posix() for p in (downloaded / "docs").rglob("*") if p.is_file())
    assert docs == ["docs/README.md", "docs/data_license.txt"]


# ---------------------------------------------------------------------------------------------------------------
# done when: run, load, large files


def test_run_inference_writes_masks_for_real_images(cli_masks, kvasir_images):
    masks = sorted(cli_masks.glob("*.png"))
    images = sorted(kvasir_images.glob("*.jpg"))
    assert [m.name for m in masks] == [f"{i.stem}_seg.png" for i in images]
    for image, mask_path in zip(images, masks):
        mask = Image.open(mask_path)
        assert mask.mode == "L" and mask.size == Image.open(image).size, f"{mask_path.name}: {mask.mode} {mask.size}"
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


def test_bundle_load_returns_network_with_packaged_weights(downloaded, package, plain_python, tmp_path):
    """``monai.bundle.load`` (default: train.json's network_def) in the plain interpreter; every tensor of
    the returned network equals the served model.pt."""
    script = (
        "import sys, torch, transfuse_bundle\n"
        "from monai.bundle import load\n"
        "bundle_dir, name, version, served = sys.argv[1:5]\n"
        "net = load(name=name, version=version, bundle_dir=bundle_dir, source='github', device='cpu')\n"
        "state = torch.load(served, map_location='cpu', weights_only=True)\n"
        "own = net.state_dict()\n"
        "assert set(own) == set(state), set(own) ^ set(state)\n"
        "assert all(torch.equal(own[k], state[k]) for k in state), 'weights differ'\n"
        "print('class:', type(net).__module__, type(net).__name__, len(state))\n"
        "print('transfuse_bundle:', transfuse_bundle.__file__)\n"
    )
    proc = _run([plain_python, "-c", script, str(downloaded.parent), NAME, package.version,
                 str(package.large_files["models/model.pt"])],
                cwd=tmp_path, env=_env(pythonpath=downloaded), step="monai.bundle.load (plain interpreter)")
    assert "class: transfuse_bundle.networks.transfuse TransFuse" in proc.stdout, proc.stdout
    _assert_imported_from(proc.stdout, downloaded)


def test_download_large_files_refuses_tampered_weights(downloaded, package, plain_python, tmp_path):
    """A served file whose sha256 differs is refused and not put in place; a tampered local file is reported
    and left as it is (MONAI never overwrites it)."""
    bundle = tmp_path / NAME
    shutil.copytree(downloaded, bundle, ignore=shutil.ignore_patterns("model.pt", "model.ts", "model.onnx"))
    served = package.large_files["models/model.pt"]
    good = served.read_bytes()
    tampered = bytearray(good)
    tampered[len(tampered) // 2] ^= 0xFF
    try:
        served.write_bytes(bytes(tampered))
        proc = _run([plain_python, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle)],
                    cwd=tmp_path, env=_env(), step="download_large_files (tampered download)", check=False)
    finally:
        served.write_bytes(good)
    assert proc.returncode != 0
    assert "sha256 hash check of downloaded file failed" in proc.stderr and "tampered" in proc.stderr, proc.stderr[-3000:]
    assert not (bundle / "models" / "model.pt").exists(), "a file that failed the hash check was put in place"

    local = bundle / "models" / "model.pt"
    local.parent.mkdir(exist_ok=True)
    local.write_bytes(bytes(tampered))
    proc = _run([plain_python, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle)],
                cwd=tmp_path, env=_env(), step="download_large_files (tampered local file)", check=False)
    assert proc.returncode != 0
    assert "sha256 hash check of existing file failed" in proc.stderr and str(local) in proc.stderr, proc.stderr[-3000:]
    assert local.read_bytes() == bytes(tampered)  # reported, not replaced or removed behind the user's back
    assert sha256(downloaded / "models" / "model.pt") == sha256(served)  # the good download is unaffected


# ---------------------------------------------------------------------------------------------------------------
# exports: the same masks as the PyTorch model


def test_torchscript_and_onnx_give_the_pytorch_masks_on_kvasir(downloaded, kvasir_images):
    import onnxruntime as ort

    parser = config_parser("inference.json", source=downloaded, bundle_root=str(downloaded))
    preprocessing = parser.get_parsed_content("preprocessing")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(downloaded / "models" / "model.pt", map_location="cpu", weights_only=True))
    network.eval()
    scripted = torch.jit.load(str(downloaded / "models" / "model.ts"), map_location="cpu").eval()
    session = ort.InferenceSession(str(downloaded / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and [o.name for o in session.get_outputs()] == ["pred"]

    foreground = []
    for image in sorted(kvasir_images.glob("*.jpg")):
        x = preprocessing({"image": str(image)})["image"].as_tensor()[None]
        with torch.no_grad():
            eager, ts = network(x), scripted(x)
        onnx = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        assert eager.shape == ts.shape == onnx.shape == (1, 1, 64, 64)
        for label, other in (("TorchScript", ts), ("ONNX", onnx)):
            error = float((eager - other).abs().max())
            assert error < 1e-3, f"{image.name}: {label} logits differ by up to {error}"
            agreement = float(((eager > 0) == (other > 0)).float().mean())
            assert agreement >= 0.999, f"{image.name}: {label} mask agrees on {agreement:.4%} of pixels"
        foreground.append(float((eager > 0).float().mean()))
    # the comparison means something only if the masks are not all one class
    assert any(0.01 < f < 0.99 for f in foreground), f"degenerate masks, foreground fractions {foreground}"


@pytest.mark.slow
def test_monailabel_serves_torchscript_only_bundle(downloaded, cli_masks, kvasir_images, tmp_path):
    """A bundle folder with ``models/model.ts`` only, its ``network_def`` replaced by ``torch.jit.load`` (the
    overlay configs/inference_torchscript.json): MONAI Label's monaibundle app loads it with torch.jit.load;
    the served mask equals the PyTorch bundle's mask of the same image."""
    from transfuse_bundle.monailabel.app import ensure_app

    require_monailabel()
    app = ensure_app(tmp_path / "apps" / "monaibundle")
    name = "transfuse_polyp_ts"
    bundle = app / "model" / name
    shutil.copytree(downloaded, bundle, ignore=shutil.ignore_patterns("model.onnx", "large_files.yml"))
    make_torchscript_only(bundle)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["network_def"].startswith("$torch.jit.load(") and not (bundle / "models" / "model.pt").exists()
    assert "CheckpointLoader" not in json.dumps(config["handlers"])
    studies = tmp_path / "studies"
    studies.mkdir()
    image = sorted(kvasir_images.glob("*.jpg"))[0]
    shutil.copyfile(image, studies / image.name)

    t0 = time.monotonic()
    srv = MonaiLabelServer(app, studies, [name], tmp_path / "server.log")
    try:
        info = srv.wait_ready()
        TIMINGS["MONAI Label start (TorchScript bundle)"] = time.monotonic() - t0
        assert name in info["models"], info["models"].keys()
        t0 = time.monotonic()
        r = srv.request("POST", f"/infer/{name}?image={image.stem}&output=image", timeout=180)
        TIMINGS["MONAI Label /infer (TorchScript)"] = time.monotonic() - t0
        served = np.asarray(Image.open(io.BytesIO(r.content)))
        log = srv.log()
    finally:
        srv.stop()
    assert "Infer model path" in log and "model.ts" in log, "the server did not load models/model.ts"
    expected = np.asarray(Image.open(cli_masks / f"{image.stem}_seg.png")) > 0
    assert served.shape == expected.shape, f"served {served.shape} vs {expected.shape}"
    assert set(np.unique(served).tolist()) <= {0, 1}
    agreement = float(((served > 0) == expected).mean())
    TIMINGS["  served vs CLI mask agreement"] = agreement
    assert agreement >= 0.999, f"served TorchScript mask agrees with the PyTorch bundle's on {agreement:.4%} of pixels"
    assert 0.001 < expected.mean() < 0.999, "degenerate mask: the comparison would mean nothing"

    # the same TorchScript-only inference.json through MONAI's workflow (what `monai.bundle run` does)
    images = tmp_path / "ts_images"  # the image alone: the studies folder also holds MONAI Label's datastore files,
    images.mkdir()                    # which inference would report as unreadable entries (and exit non-zero)
    shutil.copyfile(image, images / image.name)
    workflow = config_workflow("inference.json", source=bundle, bundle_root=str(bundle), dataset_dir=str(images),
                               output_dir=str(tmp_path / "ts_pred"))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    ts_mask = np.asarray(Image.open(tmp_path / "ts_pred" / f"{image.stem}_seg.png")) > 0
    assert float((ts_mask == expected).mean()) >= 0.999
