"""Inference speed-ups keep TransFuse's outputs; the benchmark script runs end to end."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import REPO, run_command
from transfuse_bundle.data import write_datalist
from transfuse_bundle.networks import TransFuse
from transfuse_bundle.networks.fast import (
    OneDNNLinear,
    fast_autocast_available,
    fold_batchnorm,
    inference_autocast,
    optimize_for_inference,
    use_onednn_linear,
)



def _with_random_bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Folding with the initial statistics (mean 0, var 1) would hide errors: randomise them."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


@pytest.mark.parametrize("variant", ["S", "L*"])
def test_optimized_model_gives_the_same_output(variant):
    torch.manual_seed(0)
    model = _with_random_bn_statistics(TransFuse(variant, img_size=(64, 64))).eval()
    fast = optimize_for_inference(model)
    remaining = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    before = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert remaining < before / 3  # only the pre-activation BNs of the Residual blocks stay
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = fast(x.contiguous(memory_format=torch.channels_last))
    assert float((out - ref).norm() / ref.norm()) < 1e-4
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the original must stay untouched"


class _OpNames(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the name of every aten/mkldnn op run inside it."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def test_vit_linears_run_on_onednn_with_gelu_fused():
    torch.manual_seed(0)
    model = TransFuse("S", img_size=(32, 48)).eval()
    fast = optimize_for_inference(model)
    linears = [m for m in fast.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, OneDNNLinear) for m in linears)
    assert sum(m.activation == "gelu" for m in linears) == len(model.vit.blocks)  # one fused fc1 per MLP
    assert not any(isinstance(m, torch.nn.GELU) for m in fast.modules())
    ops = _OpNames()
    with torch.no_grad(), ops:
        fast(torch.rand(1, 3, 32, 48).contiguous(memory_format=torch.channels_last))
    assert "_linear_pointwise" in ops.names and not {"addmm", "mm", "bmm", "gelu"} & ops.names


def test_cpu_fp32_peak_times_the_onednn_matmul_too():
    """The roofline's fp32 peak on a CPU is measured with torch's matmul and with oneDNN's (what the fast path's
    linears run on, twice MKL's speed on AMD CPUs), so that no fast path shows more than 100 % of it."""
    from transfuse_bundle.tools.benchmarking import machine_peaks

    ops = _OpNames()
    with ops:
        peaks = machine_peaks("cpu", n=64, iters=1)
    assert {"matmul", "_linear_pointwise"} <= ops.names
    assert peaks["fp32"] > 0 and peaks["bf16"] > 0


def test_onednn_linear_falls_back_outside_fp32_cpu_inference():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU(approximate="tanh"))
    x = torch.randn(3, 5, 24)
    ref = mlp(x)
    fused = OneDNNLinear.from_linear(mlp[0], activation="gelu_tanh")
    assert fused.weight is mlp[0].weight  # shares the parameters
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref, rtol=1e-5, atol=1e-5)
    out = fused(x.requires_grad_())  # needs gradients: plain F.linear + GELU, differentiable
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and mlp[0].weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused(x).dtype == torch.bfloat16  # autocast: the bf16 F.linear path
    with pytest.raises(ValueError, match="activation"):
        OneDNNLinear.from_linear(mlp[0], activation="relu6")
    assert use_onednn_linear(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)))[0].__class__ is torch.nn.Conv2d


def test_fold_batchnorm_refuses_a_training_model():
    with pytest.raises(ValueError, match="model.eval"):
        fold_batchnorm(TransFuse("S", img_size=(32, 32)).train())


def test_inference_autocast_uses_bf16_only_where_native():
    x = torch.rand(4, 4)
    with inference_autocast("cpu"):
        dtype = (x @ x).dtype
    assert dtype == (torch.bfloat16 if fast_autocast_available("cpu") else torch.float32)
    with inference_autocast("cpu", enabled=False):
        assert (x @ x).dtype == torch.float32


@pytest.mark.slow
def test_benchmark_script_tiny_mode(tmp_path):
    datalist = tmp_path / "kvasir8.json"
    write_datalist(REPO.parent / "shared" / "data" / "kvasir_seg", datalist, num_training=8, num_validation=2)
    out = tmp_path / "bench"
    run_command([sys.executable, REPO / "scripts" / "benchmark.py", "--tiny", "--threads", "2", "--out", out,
                 "--data-dir", datalist, "--data-steps", "2", "--num-workers", "0", "--engine"], cwd=tmp_path)
    report = json.loads(out.with_suffix(".json").read_text())
    pipeline = report["data_pipeline"]
    assert pipeline["train_img_s_with_data"] > 0 and pipeline["train_img_s_model_only"] > 0
    assert pipeline["data_pipeline_ratio"] == pytest.approx(
        pipeline["train_img_s_with_data"] / pipeline["train_img_s_model_only"], rel=0.01)
    rows = {r["model"]: r for r in report["results"]}
    assert set(rows) == {"official-S", "S", "unet"}
    ours = rows["S"]
    assert ours["params"] == rows["official-S"]["params"]
    assert ours["gmacs"] > rows["unet"]["gmacs"] > 0
    for key in ("latency_ms_fp32", "latency_ms_fp32-fast", "throughput_img_s_fp32", "train_step_ms_fp32",
                "speedup_vs_official_fp32-fast", "speedup_interleaved_vs_official_fp32-fast",
                "train_speedup_vs_official_fp32", "peak_memory_mb"):
        assert ours[key] > 0, key
    # roofline: FLOPs counted by torch (training = forward + backward, ~3x the forward per image), GFLOP/s
    # against the peaks of this run's matmuls
    peaks = report["peak_gflop_s"]
    assert peaks["fp32"] > 0 and peaks["bf16"] > 0
    assert ours["gflop"] == pytest.approx(2 * ours["gmacs"], abs=0.01)
    assert 2 * 2 * ours["gflop"] < ours["train_gflop"] < 2 * 4 * ours["gflop"]  # batch 2
    for what in ("latency_fp32-fast", "throughput_fp32", "train_fp32"):
        assert ours[f"pct_peak_{what}"] == pytest.approx(100 * ours[f"gflop_s_{what}"] / peaks["fp32"], abs=0.1)
    assert ours["gflop_s_throughput_fp32"] == pytest.approx(ours["gflop"] * ours["throughput_img_s_fp32"], rel=0.05)
    # the CPU engine's paths (--engine): timed against the official model, outputs against PyTorch's, INT8 roofline
    for mode in ("engine-fp32", "engine-int8"):
        assert ours[f"latency_ms_{mode}"] > 0 and ours[f"speedup_interleaved_vs_official_{mode}"] > 0, mode
        assert 0 <= ours[f"max_prob_diff_{mode}"] <= 1 and 0 <= ours[f"mask_agreement_pct_{mode}"] <= 100, mode
    assert ours["max_prob_diff_engine-fp32"] < 1e-4 and ours["mask_agreement_pct_engine-fp32"] >= 99.9
    assert peaks["int8"] > 0
    assert ours["pct_peak_latency_engine-int8"] == pytest.approx(
        100 * ours["gflop_s_latency_engine-int8"] / peaks["int8"], abs=0.1)
    assert "CPU features: avx512_bf16" in report["machine"]
    table = out.with_suffix(".md").read_text()
    assert "| S | 32x32 |" in table and "Measured on:" in table and "Data pipeline" in table
    assert f"| S | 32x32 | train_fp32 | {ours['train_gflop']} | {ours['gflop_s_train_fp32']} |" in table


@pytest.mark.slow
def test_benchmark_training_loop_tiny(tmp_path):
    """The bundle's own training loop (single- and multi-scale) against the bare step, on real Kvasir images:
    the report's rates, ratios and profile, and their Markdown table (no timing asserts)."""
    datalist = tmp_path / "kvasir4.json"
    write_datalist(REPO.parent / "shared" / "data" / "kvasir_seg", datalist, num_training=2, num_validation=1)
    out = tmp_path / "loop"
    run_command([sys.executable, REPO / "scripts" / "benchmark.py", "--models", "--sizes", "32", "--threads", "1",
                 "--peak-size", "64", "--data-dir", datalist, "--training-loop", "single-scale", "multi-scale",
                 "--train-batch", "2", "--loop-iterations", "1", "--num-workers", "0", "--data-steps", "1", "--out", out],
                cwd=tmp_path)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["results"] == [] and "data_pipeline" in report
    loops = report["training_loop"]
    assert [loop["multi_scale"] for loop in loops] == [False, True]
    for loop in loops:
        assert loop["size"] == "32x32" and loop["batch"] == 2 and loop["epochs"] == 2
        for key in ("train_img_s_loop", "train_img_s_loop_with_epoch_end", "train_img_s_bare", "dataflow_s", "processing_s"):
            assert loop[key] > 0, key
        assert loop["training_loop_ratio"] == pytest.approx(loop["train_img_s_loop"] / loop["train_img_s_bare"], rel=0.01)
        assert 0 < loop["training_loop_ratio_with_epoch_end"] <= loop["training_loop_ratio"]
        assert "ValidationHandler@EPOCH_COMPLETED" in loop["handlers_s"]
    table = out.with_suffix(".md").read_text()
    assert "| 32x32 | 2 | single | 0 |" in table and "| 32x32 | 2 | multi | 0 |" in table


def test_fast_inferer_matches_the_network_and_never_modifies_it():
    from monai.inferers import SimpleInferer

    from transfuse_bundle.devices import resolve_amp_dtype
    from transfuse_bundle.inferers import AutocastInferer, FastInferer

    torch.manual_seed(0)
    net = _with_random_bn_statistics(TransFuse("S", img_size=(64, 64))).eval()
    keys_before = list(net.state_dict())
    x = torch.rand(2, 3, 64, 64)
    auto_dtype = resolve_amp_dtype("auto", "cpu")  # what the configs pass for amp_dtype "auto" on this CPU
    assert auto_dtype == (torch.bfloat16 if fast_autocast_available("cpu") else torch.float32)
    assert isinstance(FastInferer(), AutocastInferer) and FastInferer().dtype == torch.float32  # explicit dtype
    with torch.no_grad():
        ref = SimpleInferer()(x, net)
        fp32 = FastInferer(dtype=torch.float32)(x, net)
        bf16 = FastInferer(dtype=torch.bfloat16)(x, net)
        auto = FastInferer(dtype=auto_dtype)(x, net)
    assert float((fp32 - ref).norm() / ref.norm()) < 1e-4
    assert fp32.dtype == bf16.dtype == auto.dtype == torch.float32  # logits come back as float32
    assert 0 < float((bf16 - ref).norm() / ref.norm()) < 5e-2  # really computed in bf16, close to fp32
    assert float((auto - ref).norm() / ref.norm()) < (5e-2 if auto_dtype == torch.bfloat16 else 1e-4)
    assert list(net.state_dict()) == keys_before  # MONAI Label reloads model.pt into this network


def test_fast_inferer_runs_a_window_inferer_inside_its_autocast():
    """``inferer``: a MONAI inferer (sliding window here) cutting the image for the optimised network, under the
    same precision; the result is MONAI's sliding window over the network itself."""
    from monai.inferers import SlidingWindowInferer

    from transfuse_bundle.inferers import AutocastInferer, FastInferer

    torch.manual_seed(0)
    net = _with_random_bn_statistics(TransFuse("S", img_size=(32, 32))).eval()
    window = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=2, overlap=0.25, mode="gaussian")
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        ref = window(x, net)
        fast = FastInferer(dtype=torch.float32, inferer=window)(x, net)
        plain = AutocastInferer(dtype=torch.float32, inferer=window)(x, net)
        bf16 = FastInferer(dtype=torch.bfloat16, inferer=window)(x, net)
    assert ref.shape == fast.shape == plain.shape == bf16.shape == (1, 1, 48, 64)
    torch.testing.assert_close(plain, ref)
    assert float((fast - ref).norm() / ref.norm()) < 1e-4
    assert bf16.dtype == torch.float32 and 0 < float((bf16 - ref).norm() / ref.norm()) < 5e-2


def test_fast_inferer_runs_a_metatensor_as_a_plain_tensor_and_keeps_its_metadata():
    """The evaluation's input is a collated MetaTensor: the forward must give the plain tensor's values, and the
    output the input's metadata and transform history (``Invertd`` resizes the prediction back with them)."""
    from monai.data import MetaTensor, list_data_collate
    from monai.transforms import Resized

    from transfuse_bundle.inferers import FastInferer

    torch.manual_seed(0)
    net = TransFuse("S", img_size=(32, 32)).eval()
    image = MetaTensor(torch.rand(3, 40, 48), meta={"filename_or_obj": "case.png"})
    batch = list_data_collate([Resized("image", (32, 32))({"image": image})])["image"]
    inferer = FastInferer(dtype=torch.float32)
    with torch.no_grad():
        plain, meta = inferer(batch.as_tensor(), net), inferer(batch, net)
    assert type(plain) is torch.Tensor and isinstance(meta, MetaTensor)
    assert torch.equal(meta.as_tensor(), plain)
    assert meta.is_batch and meta.meta["filename_or_obj"] == ["case.png"]
    assert [op["class"] for op in meta.applied_operations[0]] == ["Resize"]


def test_fast_inferer_follows_reloaded_weights():
    from transfuse_bundle.inferers import FastInferer

    torch.manual_seed(0)
    net = TransFuse("S", img_size=(32, 32)).eval()
    inferer = FastInferer(dtype=torch.float32)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = inferer(x, net)
        other = TransFuse("S", img_size=(32, 32)).eval()
        net.load_state_dict(other.state_dict())
        after = inferer(x, net)
        torch.testing.assert_close(after, other(x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(before, after)
    net.train()
    assert isinstance(inferer(torch.rand(2, 3, 32, 32), net), tuple)  # training mode runs the network as it is


def test_fast_inferer_rejects_bad_option():
    from transfuse_bundle.inferers import FastInferer

    for bad in ("sometimes", "bfloat16", torch.float64):  # a torch dtype, as the config's @autocast_dtype gives
        with pytest.raises(ValueError, match="dtype must be torch.float32, torch.bfloat16 or torch.float16"):
            FastInferer(dtype=bad)


def test_fast_inferer_runs_torchscript_as_exported():
    from transfuse_bundle.inferers import FastInferer

    net = TransFuse("S", img_size=(32, 32)).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(FastInferer()(x, scripted), net(x))
