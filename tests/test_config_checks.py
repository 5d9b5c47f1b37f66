"""Every value and id a run is given is checked before any work (``transfuse_bundle.checks.check_config``, the first
step of every config's ``run``): a bad value or a misspelt override stops in one line naming it; before, a bad
value failed in a traceback after the data check, and a misspelt id was accepted while the default ran.

In-process workflows of the repository's real configs (``config_workflow``, as ``monai.bundle run`` builds them);
``initialize`` and the check alone: nothing is generated, read or written. The one-line console form is tested in test_console.py.
"""

from __future__ import annotations

import pytest
import torch

from conftest import root_cause
from transfuse_bundle.errors import ConfigValueError
from transfuse_bundle.tools.tasks import config_workflow

ABSENT_GPU = f"cuda:{torch.cuda.device_count()}"  # one more than this machine has, GPU or not


def _initialize(config: str, tmp_path, task: str | None = None, overlays=(), **overrides):
    workflow = config_workflow(config, task, overlays, bundle_root=str(tmp_path / "bundle"), **overrides)
    workflow.initialize()
    workflow.parser.get_parsed_content("check_config")  # the first step of the workflow's run
    return workflow


def _refusal(config: str, tmp_path, task=None, overlays=(), **overrides) -> str:
    with pytest.raises(Exception) as err:
        _initialize(config, tmp_path, task, overlays, **overrides)
    cause = root_cause(err.value)
    assert isinstance(cause, ConfigValueError), repr(err.value)
    assert "\n" not in str(cause)
    assert not (tmp_path / "bundle").exists()  # no synthetic data, no folder: nothing was done
    return str(cause)


BAD_VALUES = [  # (config, overrides, the start of the message)
    ("train.json", {"learning_rate": -1}, "learning_rate must be a number > 0, got -1"),
    ("train.json", {"learning_rate": "1e-4"}, "learning_rate must be a number > 0, got '1e-4'"),
    ("train.json", {"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ("train.json", {"max_epochs": 0}, "max_epochs must be an integer >= 1, got 0"),
    ("train.json", {"train#trainer#max_epochs": 2.5}, "train#trainer#max_epochs must be an integer >= 1, got 2.5"),
    ("train.json", {"num_workers": -1}, "num_workers must be an integer >= 0, got -1"),
    ("train.json", {"image_size": [64]}, "image_size must be [H, W]: two positive integers"),
    ("train.json", {"image_size": [65, 65]}, "image_size must be [H, W] with sides that are multiples of 16: pad or resize to [80, 80], got [65, 65]"),
    ("train.json", {"val_interval": 0}, "val_interval must be an integer >= 1, got 0"),
    ("train.json", {"keep_model": "worst"}, "keep_model must be one of 'last', 'best', got 'worst'"),
    ("train.json", {"amp_dtype": "float16", "device": "cpu"}, "amp_dtype 'float16' needs a CUDA device"),
    ("train.json", {"amp_dtype": "fp16"}, "amp_dtype must be one of 'auto', 'float32', 'bfloat16', 'float16'"),
    ("train.json", {"checkpoint_interval": 0}, "checkpoint_interval must be an integer >= 1, got 0"),
    ("train.json", {"device": ABSENT_GPU}, f"device must be a device this machine has: it has {torch.cuda.device_count()}"),
    ("train.json", {"device": "gpu"}, "device must be a torch device such as 'cpu', 'cuda' or 'cuda:0', got 'gpu'"),
    ("train.json", {"variant": "XL"}, "variant must be one of 'S', 'L', 'L*', 'tiny', got 'XL'"),
    ("train.json", {"seed": -1}, "seed must be an integer >= 0, got -1"),
    ("train.json", {"cache_rate": 2}, "cache_rate must be a number >= 0 and <= 1, got 2"),
    ("train.json", {"val_fraction": 1.0}, "val_fraction must be a number >= 0 and < 1, got 1.0"),
    ("train.json", {"out_channels": 0}, "out_channels must be an integer >= 1, got 0"),
    ("train.json", {"class_names": ["polyp"]}, "class_names must be a list of at least 2 non-empty names"),
    ("train.json", {"grad_clip_norm": 0}, "grad_clip_norm must be a number > 0, got 0"),
    ("train.json", {"resume": "maybe"}, "resume must be true or false, got 'maybe'"),
    ("train.json", {"overwrite": 2}, "overwrite must be true or false, got 2"),
    ("train.json", {"spatial_dims": 4}, "spatial_dims must be 2 or 3, got 4"),
    ("evaluate.json", {"empty_distance": "abc"}, "empty_distance must be 'diagonal' or a number >= 0, got 'abc'"),
    ("evaluate.json", {"nsd_tolerance": -1}, "nsd_tolerance must be a number >= 0, got -1"),
    ("evaluate.json", {"num_overlays": -2}, "num_overlays must be an integer >= 0, got -2"),
    ("evaluate.json", {"polyp_metrics": "sometimes"}, "polyp_metrics must be true or false, got 'sometimes'"),
    ("inference.json", {"image_size": [352]}, "image_size must be [H, W]"),
    ("multi_gpu_train.json", {"ddp_timeout_s": 0}, "ddp_timeout_s must be a number > 0, got 0"),
]


@pytest.mark.parametrize("config, overrides, words", BAD_VALUES, ids=[f"{c}-{next(iter(o))}={list(o.values())[0]}"
                                                                       for c, o, _ in BAD_VALUES])
def test_bad_values_are_refused_in_one_line_before_any_work(tmp_path, config, overrides, words):
    message = _refusal(config, tmp_path, **overrides)
    assert message.startswith(words), message
    assert message.endswith("nothing was done"), message


def test_task_and_option_values_are_checked_too(tmp_path):
    assert _refusal("train.json", tmp_path, "prostate", slices_per_volume=0).startswith(
        "slices_per_volume must be an integer >= 1, got 0")
    assert _refusal("inference.json", tmp_path, overlays=["configs/options/sliding_window.json"], sw_overlap=1).startswith(
        "sw_overlap must be a number >= 0 and < 1, got 1")


def test_pretrained_offline_names_the_local_files_at_once(tmp_path, monkeypatch):
    """``--pretrained true`` without the hub: before, 61 s of timm's retries, then a traceback. The tests run with
    HF_HUB_OFFLINE=1 (conftest); an empty hub cache stands for a fresh machine."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    message = _refusal("train.json", tmp_path, pretrained=True)
    assert message.startswith("pretrained=true needs the ImageNet weights of resnet34.tv_in1k and "
                              "deit_small_patch16_224.fb_in1k, which are not in timm's cache, and the hub is switched off"), message
    assert "--network_def#cnn_weights FILE --network_def#vit_weights FILE" in message and "--pretrained false" in message
    # with a local file for one backbone, only the other is asked for
    message = _refusal("train.json", tmp_path, pretrained=True, **{"network_def#cnn_weights": str(tmp_path / "cnn.pth")})
    assert "weights of deit_small_patch16_224.fb_in1k, which" in message and "cnn_weights FILE" not in message


MISSPELT = [  # (config, overrides, the start of the message, a suggestion it must make)
    ("train.json", {"imagesize": [64, 64]}, "unknown config id 'imagesize' (a misspelt --imagesize?)", "did you mean image_size or resize?"),
    ("train.json", {"max_epoch": 3}, "unknown config id 'max_epoch'", "did you mean max_epochs"),
    ("train.json", {"train#trainer#max_epoch": 3}, "unknown config id 'train#trainer#max_epoch': SupervisedTrainer "
     "(train#trainer) takes no argument 'max_epoch'", "did you mean max_epochs"),
    ("train.json", {"validate#dataloader#batchsize": 2}, "unknown config id 'validate#dataloader#batchsize': DataLoader",
     "did you mean batch_size"),
    ("train.json", {"validate#resize_labels": []}, "unknown config id 'validate#resize_labels'", "did you mean resize_label"),
    ("evaluate.json", {"nsd_tolerence": 1.0}, "unknown config id 'nsd_tolerence'", "did you mean nsd_tolerance"),
    ("inference.json", {"ouput_dir": "x"}, "unknown config id 'ouput_dir'", "did you mean output_dir"),
]


@pytest.mark.parametrize("config, overrides, words, suggestion", MISSPELT, ids=[next(iter(o)) for _, o, _, _ in MISSPELT])
def test_misspelt_overrides_are_refused_naming_the_ids_that_exist(tmp_path, config, overrides, words, suggestion):
    message = _refusal(config, tmp_path, **overrides)
    assert message.startswith(words) and suggestion in message, message


def test_new_ids_that_cannot_be_typos_keep_working(tmp_path):
    """Nested ids of the README and tests, a component's own arguments (checked against its signature), longer
    lists, a value replaced by a new component, MONAI Label's overrides and MONAI's tracking settings."""
    items = [{"image": "a.png", "label": "a_mask.png"}]
    _initialize("train.json", tmp_path, **{
        "validate#dataloader#batch_size": 2, "train#trainer#max_epochs": 3, "network_def#cnn_weights": None,
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "optimizer": "@optimizer", "step_size": 5},
        "train#dataset#data": items, "validate#dataset#data": items, "tracking_uri": "sqlite:///x.db",
        "experiment_name": "e", "run_name": "r", "device": "cpu", "max_epochs": 1})
    assert not (tmp_path / "bundle").exists()
