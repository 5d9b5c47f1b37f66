"""What a user of ``python -m monai.bundle run`` reads: a refusal in one line without MONAI's traceback, a real crash
with its traceback. That the user's commands print no warning that does not concern them is checked
on the commands of test_bundle.py (``conftest.console_noise``).

Each test runs the user's command in a process of its own (the excepthook and the warnings act on a whole process):
the refusals in the suite's warmed-up Python (``tests/warm_python.py``: a child forked per command), the crash in a
fresh interpreter, start to end.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import CLI_TINY, ONE_THREAD, bundle_cli
from PIL import Image


TRAIN = ["--config_file", "configs/train.json"]
EVALUATE = ["--config_file", "['configs/train.json','configs/evaluate.json']"]
INFERENCE = ["--config_file", "['configs/train.json','configs/inference.json']"]


def _env() -> dict:
    return {**os.environ, **ONE_THREAD}


def _refused(*args) -> list[str]:
    """Runs a bundle command that must be refused; returns the lines it printed to stderr from the first ``error:`` on."""
    result = bundle_cli(*args, env=_env(), check=False)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Failed to evaluate" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return lines[errors[0]:]


@pytest.mark.slow
def test_refusals_print_one_line_and_crashes_keep_their_traceback(tmp_path):
    bundle = tmp_path / "bundle"
    # a file the run needs: MONAI wraps our FileNotFoundError in "Failed to evaluate ConfigExpression"
    assert _refused("run", *EVALUATE, "--bundle_root", bundle, *CLI_TINY) == [
        f"error: trained weights (run training first or pass --ckpt_path): '{bundle}/models/model.pt' does not exist"]
    # a dataset with several problems: the first line says how many, one line each follows, nothing else
    data = tmp_path / "data"
    for folder, stem in (("images", "a"), ("masks", "b")):
        (data / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / folder / f"{stem}.png")
    lines = _refused("run", "training", *TRAIN, "--bundle_root", bundle, "--dataset_dir", data, *CLI_TINY)
    assert lines[0] == "error: 2 problems:" and len(lines) == 3
    assert lines[1].startswith(f"{data / 'images'}: 1 image(s) have no mask") and lines[2].startswith(f"{data / 'masks'}: 1 mask(s)")
    assert not (bundle / "models").exists()
    # a config value the network cannot take, and a misspelt override: refused before any work (the synthetic
    # default data is not even generated); before, the misspelt one was accepted and the default size trained
    assert _refused("run", "training", *TRAIN, "--bundle_root", bundle, "--image_size", "[65,65]") == [
        "error: image_size must be [H, W] with sides that are multiples of 16: pad or resize to [80, 80], got [65, 65] "
        "(--image_size); nothing was done"]
    lines = _refused("run", "training", *TRAIN, "--bundle_root", bundle, "--imagesize", "[64,64]")
    assert len(lines) == 1 and lines[0].startswith(
        "error: unknown config id 'imagesize' (a misspelt --imagesize?), defined by no config file; did you mean "
        "image_size or resize? other ids: amp, amp_dtype,"), lines
    assert not bundle.exists()
    # a real crash (here torch's refusal of Adam's betas, not one of our checks) keeps its traceback, and its
    # last line is the cause MONAI wrapped, not 'Failed to instantiate component'
    crash = bundle_cli("run", "training", *TRAIN, "--bundle_root", bundle, "--optimizer#betas", "[2,0.999]", *CLI_TINY,
                       env=_env(), check=False, fresh=True)
    assert crash.returncode == 1 and "Traceback" in crash.stderr, crash.stderr[-3000:]
    assert crash.stderr.splitlines()[-1] == "error: ValueError: Invalid beta parameter at index 0: 2", crash.stderr[-3000:]


def test_loader_workers_leave_a_small_cpu_to_the_compute_threads():
    """train.json's default num_workers: none when training on a CPU of at most 4 cores (its threads use every core),
    else up to 4 within the usable CPUs, which DataLoader compares it with (no warning)."""
    from transfuse_bundle.tools.tasks import config_parser
    from transfuse_bundle.devices import available_cpus, loader_workers

    parser = config_parser("train.json", device="$torch.device('cpu')")
    cpus = available_cpus()
    assert parser.get_parsed_content("num_workers") == (0 if cpus <= 4 else 4)
    assert loader_workers("cuda:0") == min(4, cpus) and loader_workers("cpu") == (0 if cpus <= 4 else 4)
