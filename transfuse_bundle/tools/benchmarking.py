"""Benchmarks of TransFuse S / L / L* against the official code and MONAI's networks, on PyTorch and the CPU engine.

The measurements (median latencies, interleaved ratios, GMACs, parameters) are shared with
:mod:`transfuse_bundle.tools.comparison`; :func:`run_benchmark` measures, for every model of :func:`build` and
input size, parameters, GMACs, batch-1 latency (median after warm-up), batch throughput, a training step
(forward + backward + Adam) and the process's peak memory; TransFuse also in its fast inference modes
(BatchNorm folded, linears on oneDNN, channels-last; and bf16 autocast where the hardware has native
bf16). Our S's speed-ups against the official model are also measured with the two models called in turn in
every iteration (``speedup_interleaved_vs_official_*``), the ratio to trust on a shared machine.

Roofline: every row also gives the FLOPs of one image's forward (``gflop``, torch's FlopCounterMode) and
of one training step (``train_gflop``: forward + backward), and the GFLOP/s each path achieves
(``gflop_s_<what>``); :func:`machine_peaks` measures the machine's practical peak with large fp32 and
bf16 matmuls in the same run and :func:`add_roofline` puts each figure against the peak of its dtype
(``pct_peak_<what>``). On CUDA, ``compile=True`` adds torch.compile (inductor) and CUDA-graph
(``mode="reduce-overhead"``) paths, and ``batch_sweep`` finds each path's best-throughput batch.
:func:`write_markdown` writes the tables; the command is ``transfuse-benchmark``
(:mod:`transfuse_bundle.tools.cli.benchmark`).

"official" is the real official TransFuse_S, imported at run time from a local checkout of its repository
(``official_code``, :mod:`transfuse_bundle.tools.official`, which first proves that it reproduces the official
reference outputs); nothing of it is part of this project. "official-S" is its re-implementation here (explicit
attention, all three heads computed at inference, BatchNorm unfolded, contiguous layout, the official float64
structure loss in training; outputs equal to ~1e-6, tests/test_networks.py): it stands in for the official code
where no checkout is at hand (the test suite's ``--tiny`` run). With ``engine=True`` the rows of S on a CPU also
hold the CPU engine's paths (:func:`engine_modes`: OpenVINO fp32 / bf16, INT8) and their outputs against
PyTorch's (:func:`output_agreement`); the INT8 paths' roofline is against the machine's int8 matmul peak.

Example::

    from transfuse_bundle.tools.benchmarking import run_benchmark
    rows = run_benchmark(["official-S", "S"], [(192, 256)], "cpu")   # one dict per model and size
    rows = run_benchmark(["official", "S"], [(192, 256), (352, 352)], official_code="/work/official_transfuse",
                         engine=True)
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..metrics.report import format_number
from ..losses import DEEP_SUPERVISION_WEIGHTS, official_structure_loss, transfuse_deep_supervision_loss
from ..networks import TransFuse
from ..networks.fast import OneDNNLinear, fast_autocast_available, optimize_for_inference
from .tasks import config_parser, config_workflow

__all__ = [
    "median_ms", "interleaved_median_ms", "gmacs", "parameter_count", "forward_latency_ms",
    "BENCHMARKED_NETWORKS", "build", "run_benchmark", "benchmark_report", "data_pipeline", "machine_description", "write_markdown",
    "machine_peaks", "add_roofline", "throughput_sweep", "training_loop", "training_loop_datalist",
    "training_loop_lines",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], iters: int, warmup: int, device: torch.device | str = "cpu") -> float:
    """Median wall time of ``fn()`` in milliseconds over ``iters`` runs after ``warmup`` runs."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def interleaved_median_ms(fns: dict[str, Callable[[], object]], iters: int, warmup: int,
                          device: torch.device | str = "cpu") -> dict[str, float]:
    """Median wall time (ms) of each ``fns[name]()``, the functions called in turn within every
    iteration, so that a busy machine slows them all alike and their ratios stay meaningful."""
    device = torch.device(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def gmacs(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of one forward pass, in billions (FLOPs / 2, as torch counts them)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def machine_peaks(device: torch.device | str, n: int | None = None, iters: int = 5) -> dict[str, float]:
    """The practical peak, GFLOP/s of an ``n x n`` by ``n x n`` matmul in fp32 and in bf16 (median of ``iters``),
    and on a CPU GOP/s of the same int8 matmul (``torch._int_mm``, int32 accumulation: the peak of the INT8 paths).

    ``n`` defaults to 8192 on CUDA and 2048 on a CPU; a bf16 matmul on a CPU without native bf16 is emulated,
    ~100x slower, so it is measured at ``min(n, 512)`` (its "peak" is what emulated bf16 reaches). On a CPU the
    fp32 peak is the faster of torch's matmul (MKL's sgemm, about half of oneDNN's speed on AMD CPUs) and the same
    matmul on oneDNN (:class:`~transfuse_bundle.networks.fast.OneDNNLinear`, what the fast path's linears run on),
    so that no path passes it. On CUDA, fp32 means true fp32 (TF32 off, torch's default for matmuls; convolutions
    may use TF32, so an fp32 model path can pass this peak)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    peaks = {}
    if device.type == "cpu":  # int8 x int8 -> int32 (oneDNN: VNNI / AMX where the CPU has them): the INT8 paths' peak
        a8, b8 = (torch.randint(-128, 127, (n, n), dtype=torch.int8) for _ in range(2))
        with torch.inference_mode():
            peaks["int8"] = round(2 * n**3 / median_ms(lambda: torch._int_mm(a8, b8), iters, 1, device) / 1e6, 1)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        side = n if dtype == torch.float32 or fast_autocast_available(device) else min(n, 512)
        a, b = (torch.randn(side, side, device=device, dtype=dtype) for _ in range(2))
        matmuls = [lambda: a @ b]
        if dtype == torch.float32 and device.type == "cpu":
            onednn = OneDNNLinear.from_linear(nn.Linear(side, side, bias=False, device=device))
            matmuls.append(lambda: onednn(a))  # ``a @ weight.T``; a plain tensor, so oneDNN applies
        with torch.inference_mode():
            peaks[name] = round(max(2 * side**3 / median_ms(matmul, iters, 1, device) / 1e6 for matmul in matmuls), 1)
    return peaks


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def forward_latency_ms(model: nn.Module, x: torch.Tensor, iters: int = 20, warmup: int = 3,
                       autocast: bool = False) -> float:
    """Median eval-mode forward latency of ``model`` on ``x`` (optionally under bf16 autocast)."""
    model = model.eval()

    def step():
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            return model(x)

    return median_ms(step, iters, warmup, x.device)


TRANSFUSE = ("S", "L", "L*")  # benchmark names that are TransFuse variants (fast inference modes apply)
#: the official TransFuse-S: the real code (``official``, from a checkout) and its re-implementation here
OFFICIAL_MODELS = ("official", "official-S")


def _official_s(size: tuple[int, int]) -> nn.Module:
    model = TransFuse("S", img_size=size)
    for module in model.modules():  # timm 0.3.2, used by the official code, had no fused attention
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return _OfficialForward(model)


def _nets():
    from monai.networks import nets  # imported when a MONAI model is built, not for --help

    return nets


# benchmark name -> factory(size): a model with 3 input channels and 1 output channel for inputs of ``size``
BENCHMARKED_NETWORKS: dict[str, Callable[[tuple[int, int]], nn.Module]] = {
    "official-S": _official_s,
    "S": lambda size: TransFuse("S", img_size=size),
    "L": lambda size: TransFuse("L", img_size=size),
    "L*": lambda size: TransFuse("L*", img_size=size),
    "unet": lambda size: _nets().UNet(2, 3, 1, channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2), num_res_units=2),
    "attention_unet": lambda size: _nets().AttentionUnet(2, 3, 1, channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2)),
    "basic_unetplusplus": lambda size: _FirstOutput(_nets().BasicUNetPlusPlus(spatial_dims=2, in_channels=3, out_channels=1)),
    "swin_unetr": lambda size: _nets().SwinUNETR(in_channels=3, out_channels=1, spatial_dims=2, feature_size=24),
    "unetr": lambda size: _nets().UNETR(in_channels=3, out_channels=1, img_size=size, spatial_dims=2, feature_size=16),
}


def build(name: str, size: tuple[int, int], official_code: str | Path | None = None) -> nn.Module:
    """A model of :data:`BENCHMARKED_NETWORKS` by benchmark name, 3 input channels, 1 output channel, for inputs of
    ``size``; ``"official"`` is the real official TransFuse_S imported from the checkout ``official_code``."""
    if name == "official":
        if official_code is None:
            raise ValueError("the model 'official' needs a checkout of the official code (--official-code DIR)")
        from .official import official_transfuse_s

        return official_transfuse_s(official_code, size)
    if name not in BENCHMARKED_NETWORKS:
        raise ValueError(f"unknown model {name!r}; choose from {list(BENCHMARKED_NETWORKS)}")
    return BENCHMARKED_NETWORKS[name](size)


class _OfficialForward(nn.Module):
    """The official forward: all three heads are computed and upsampled to full size in eval mode too
    (the caller keeps ``map_2``); in training it returns them for deep supervision, as ours does.

    Only the top module's ``training`` flag is raised for the call, so BatchNorm and dropout stay in eval.
    """

    def __init__(self, net: TransFuse):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        if self.training:
            return self.net(x)
        self.net.training = True
        try:
            return self.net(x)[0]
        finally:
            self.net.training = False


class _FirstOutput(nn.Module):
    """BasicUNetPlusPlus returns a list of deep-supervision maps; benchmark its final map."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: allocated on a CUDA device, else the process's resident high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process high-water mark


def inference_modes(name: str, model: nn.Module, device: torch.device,
                    compile: bool = False) -> dict[str, tuple[nn.Module, bool, bool]]:
    """mode -> (model, channels_last input, bf16 autocast).

    ``compile`` adds, for TransFuse on CUDA, the fast bf16 model through ``torch.compile`` (inductor,
    ``bf16-compile``) and with CUDA graphs (``mode="reduce-overhead"``, ``bf16-cudagraphs``); both compile
    on their first call (minutes), which the warm-up absorbs."""
    modes = {"fp32": (model, False, False)}
    if name in TRANSFUSE:
        fast = optimize_for_inference(model)
        modes["fp32-fast"] = (fast, True, False)
        if fast_autocast_available(device):
            modes["bf16-fast"] = (fast, True, True)
        if compile and device.type == "cuda":
            modes["bf16-compile"] = (torch.compile(fast), True, True)
            modes["bf16-cudagraphs"] = (torch.compile(fast, mode="reduce-overhead"), True, True)
    return modes


def engine_modes(model: nn.Module, size: tuple[int, int], workdir: Path,
                 calibration: torch.Tensor | None = None) -> dict[str, tuple[nn.Module, bool, bool]]:
    """The CPU engine's paths for ``model`` (eval mode, what ``configs/inference_cpu.json`` /
    ``inference_int8.json`` run; mode -> (model, channels_last input, autocast) as :func:`inference_modes`):
    ``engine-fp32``, ``engine-bf16`` (CPUs with native bf16) and ``engine-int8`` (NNCF post-training quantization
    as ``transfuse-quantize`` makes it, calibrated on ``calibration`` ``(N, 3, H, W)``, else on 8 random inputs:
    such a model is as fast, but its outputs are off, so compare outputs only after calibrating on images; the
    float operations left run at the precision ``amp_dtype: auto`` gives this CPU). The converted model is cached
    in ``workdir``."""
    import nncf
    import numpy as np

    from ..cpu_engine import EngineNetwork, compile_model, engine_model
    from ..devices import resolve_amp_dtype

    fp32 = engine_model(model, workdir / "model.pt", (3, *size))
    modes = {"engine-fp32": (EngineNetwork(lambda shape: compile_model(fp32, torch.float32)), False, False)}
    if fast_autocast_available("cpu"):
        modes["engine-bf16"] = (EngineNetwork(lambda shape: compile_model(fp32, torch.bfloat16)), False, False)
    if calibration is None:
        samples = [np.random.default_rng(i).standard_normal((1, 3, *size), dtype=np.float32) for i in range(8)]
    else:
        samples = [image[None].numpy() for image in calibration]
    int8 = nncf.quantize(fp32, nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED,
                         model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples))
    served = resolve_amp_dtype("auto", "cpu")
    modes["engine-int8"] = (EngineNetwork(lambda shape: compile_model(int8, served)), False, False)
    return modes


def output_agreement(reference: nn.Module, modes: dict[str, tuple[nn.Module, bool, bool]],
                     inputs: torch.Tensor) -> dict[str, float]:
    """Each path's outputs against ``reference`` (the PyTorch fp32 eager network) on ``inputs`` ``(N, C, H, W)``, one
    image at a time: ``max_prob_diff_<mode>`` (the largest difference of the sigmoid probabilities) and
    ``mask_agreement_pct_<mode>`` (pixels whose thresholded mask agrees, %)."""
    result: dict[str, list[float]] = {}
    for image in inputs.split(1):
        with torch.inference_mode():
            expected = torch.sigmoid(reference.eval()(image).float())
            for mode, (net, channels_last, autocast) in modes.items():
                if mode == "fp32":
                    continue
                xin = image.contiguous(memory_format=torch.channels_last) if channels_last else image
                with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=autocast):
                    got = torch.sigmoid(net(xin).float())
                result.setdefault(f"max_prob_diff_{mode}", []).append(float((got - expected).abs().max()))
                result.setdefault(f"mask_agreement_pct_{mode}", []).append(
                    float(((got > 0.5) == (expected > 0.5)).float().mean()) * 100)
    return {key: round(max(values) if key.startswith("max_") else sum(values) / len(values), 5)
            for key, values in result.items()}


def agreement_inputs(dataset: str | Path | None, size: tuple[int, int], count: int = 8,
                     calibration: bool = False) -> torch.Tensor | None:
    """Up to ``count`` images of ``dataset``, preprocessed as the bundle serves them at ``size``: its evaluation list
    (a datalist's test list, or a folder's images), or with ``calibration`` its training list (what calibrates the
    INT8 path, apart from the images its outputs are compared on); None without a dataset."""
    if dataset is None:
        return None
    from ..data import evaluation_datalist, load_datalist

    parser = config_parser("inference.json", image_size=list(size), device="$torch.device('cpu')")
    parser.get_parsed_content("imports")
    preprocessing = parser.get_parsed_content("preprocessing")
    entries = (load_datalist(dataset)["training"] if calibration else evaluation_datalist(dataset))[:count]
    return torch.stack([torch.as_tensor(preprocessing({"image": e["image"]})["image"]).float() for e in entries])


def throughput_sweep(net: nn.Module, size, device: torch.device, channels_last: bool, autocast: bool,
                     batches: Sequence[int], iters: int) -> dict[int, float]:
    """Images/s of ``net`` for each batch size (median of ``iters`` forwards after one warm-up), stopping at the
    first batch that runs out of GPU memory or is slower than the best so far by a quarter."""
    result: dict[int, float] = {}
    for batch in batches:
        x = torch.rand(batch, 3, *size, device=device)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        try:
            result[batch] = round(batch * 1000 / forward_latency_ms(net, x, iters, 1, autocast), 2)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            del x
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if result[batch] < 0.75 * max(result.values()):
            break
    return result


def training_loss(name: str):
    """The loss each model trains with: the official one for the official models, the bundle's otherwise."""
    if name in OFFICIAL_MODELS:
        return lambda heads, y: sum(w * official_structure_loss(h, y) for w, h in zip(DEEP_SUPERVISION_WEIGHTS, heads))
    return transfuse_deep_supervision_loss()


def train_step_ms(model: nn.Module, name: str, size, batch: int, iters: int, device: torch.device, autocast: bool,
                  count_gflop: bool = False) -> float | tuple[float, float]:
    """Median forward + loss + backward + Adam step time (ms) for a batch of random images and masks; with
    ``count_gflop`` also the GFLOPs of one step's forward and backward (the first, untimed step is counted)."""
    model = model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.999))
    loss_fn = training_loss(name)
    x = torch.rand(batch, 3, *size, device=device)
    y = (torch.rand(batch, 1, *size, device=device) > 0.5).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        heads = [o.float() for o in (out if isinstance(out, (tuple, list)) else (out,))]
        loss = loss_fn(heads, y)
        loss.backward()
        optimizer.step()

    gflop = None
    if count_gflop:
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        gflop = counter.get_total_flops() / 1e9
    result = median_ms(step, iters, 0 if count_gflop else 1, device)
    model.eval()
    return (result, gflop) if count_gflop else result


def run_benchmark(models: Sequence[str], sizes: Sequence[tuple[int, int]], device: str | torch.device = "cpu",
                  iters: int = 20, warmup: int = 3, throughput_batch: int = 16, throughput_iters: int = 3,
                  train_batch: int = 8, train_iters: int = 3, compile: bool = False,
                  batch_sweep: Sequence[int] = (), official_code: str | Path | None = None, engine: bool = False,
                  weights: str | Path | None = None, agreement_data: str | Path | None = None) -> list[dict]:
    """One row per size and model of :data:`BENCHMARKED_NETWORKS`, printed as a JSON line when measured (see the module doc).

    Args:
        models: benchmark names; ``official`` (the real official code, see ``official_code``) or ``official-S``
            before ``S`` adds the interleaved speed-ups to S's row (against the first of them).
        sizes: ``(H, W)`` input sizes.
        device: where to run.
        iters, warmup: timed and untimed batch-1 forwards (the median is reported).
        throughput_batch, throughput_iters: batch size and timed forwards for throughput (images/s).
        train_batch, train_iters: batch size and timed steps for the training-step time.
        compile: add the torch.compile and CUDA-graph paths (CUDA; see :func:`inference_modes`).
        batch_sweep: batch sizes to try for each path's best throughput (``best_batch_<mode>``,
            ``throughput_img_s_best_<mode>``); empty: only ``throughput_batch``.
        official_code: a checkout of github.com/Rayicer/TransFuse, for the model ``official``
            (:mod:`transfuse_bundle.tools.official`).
        engine: on a CPU, add the CPU engine's paths to TransFuse's (:func:`engine_modes`) and their outputs against
            PyTorch's (:func:`output_agreement`, on ``agreement_data``'s evaluation images when given, INT8 then
            calibrated on 8 of its training images; else the random input).
        weights: a state dict for S (e.g. a trained model; used at the sizes it fits, random weights elsewhere).
    """
    import tempfile

    device = torch.device(device)
    rows = []
    workdir = tempfile.TemporaryDirectory(prefix="transfuse-benchmark-")
    for size in sizes:
        official = None
        for name in models:
            torch.manual_seed(0)
            model = build(name, size, official_code).to(device).eval()
            note = _load_benchmark_weights(model, weights) if name == "S" and weights else None
            x = torch.rand(1, 3, *size, device=device)
            macs = gmacs(model, x)
            row = {"model": name, "size": f"{size[0]}x{size[1]}", "params": parameter_count(model),
                   "gmacs": round(macs, 2), "gflop": round(2 * macs, 3)}
            if note:
                row["weights"] = note
            modes = inference_modes(name, model, device, compile)
            if engine and name in TRANSFUSE and device.type == "cpu":
                images = agreement_inputs(agreement_data, size)
                modes.update(engine_modes(model, size, Path(workdir.name) / f"{name}-{size[0]}x{size[1]}",
                                          agreement_inputs(agreement_data, size, calibration=True)))
                row.update(output_agreement(model, modes, images if images is not None else x))
            if name in OFFICIAL_MODELS and official is None:
                official, row_official = model, name
            elif name == "S" and official is not None:
                row["speedup_reference"] = row_official
                row.update(interleaved_speedups(official, modes, x, iters, warmup))
            for mode, (net, channels_last, autocast) in modes.items():
                xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                row[f"latency_ms_{mode}"] = round(forward_latency_ms(net, xin, iters, warmup, autocast), 2)
                xb = torch.rand(throughput_batch, 3, *size, device=device)
                xb = xb.contiguous(memory_format=torch.channels_last) if channels_last else xb
                ms = forward_latency_ms(net, xb, throughput_iters, 1, autocast)
                row[f"throughput_img_s_{mode}"] = round(throughput_batch * 1000 / ms, 2)
                row[f"gflop_s_latency_{mode}"] = round(2 * macs * 1000 / row[f"latency_ms_{mode}"], 1)
                row[f"gflop_s_throughput_{mode}"] = round(2 * macs * row[f"throughput_img_s_{mode}"], 1)
                if batch_sweep:
                    sweep = throughput_sweep(net, size, device, channels_last, autocast, batch_sweep, throughput_iters)
                    best = max(sweep, key=sweep.get)
                    row[f"best_batch_{mode}"], row[f"throughput_img_s_best_{mode}"] = best, sweep[best]
                    row[f"gflop_s_best_{mode}"] = round(2 * macs * sweep[best], 1)
            dtypes = ["fp32"] + (["bf16"] if name in TRANSFUSE and fast_autocast_available(device) else [])
            for dtype in dtypes:
                ms, step_gflop = train_step_ms(model, name, size, train_batch, train_iters, device, dtype == "bf16",
                                               count_gflop=True)
                row[f"train_step_ms_{dtype}"] = round(ms, 1)
                row["train_gflop"] = round(step_gflop, 2)
                row[f"gflop_s_train_{dtype}"] = round(step_gflop * 1000 / ms, 1)
            row["peak_memory_mb"] = round(peak_memory_mb(device), 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    workdir.cleanup()
    add_ratios(rows)
    return rows


def _load_benchmark_weights(model: nn.Module, weights: str | Path) -> str:
    """Loads ``weights`` into ``model`` when they fit it; returns what the row's ``weights`` column says."""
    from ..weights import load_weights, weights_misfit

    state = load_weights(weights, "benchmark weights (--weights)")
    if weights_misfit(model, state):
        return "random (the weights do not fit this size)"
    model.load_state_dict(state)
    return Path(weights).name


def benchmark_report(out: Path, models: Sequence[str], sizes: Sequence[tuple[int, int]], device: str = "cpu",
                     iters: int = 20, warmup: int = 3, throughput_batch: int = 16, throughput_iters: int = 3,
                     train_batch: int = 8, train_iters: int = 3, compile: bool = False, batch_sweep: Sequence[int] = (),
                     peak_size: int | None = None, data_dir: Path | None = None, data_steps: int = 6,
                     num_workers: int = 2, training_loops: Sequence[str] = (), loop_iterations: int = 4,
                     loop_epochs: int = 2, official_code: Path | None = None, official_reference: Path | None = None,
                     engine: bool = False, weights: Path | None = None, agreement_data: Path | None = None) -> dict:
    """The benchmark command's whole run, written to ``out.json`` and ``out.md``: the machine's peaks
    (:func:`machine_peaks`), every model of ``models`` at every size (:func:`run_benchmark`) with its roofline,
    then, given ``data_dir``, the training data pipeline (:func:`data_pipeline`) and each of ``training_loops``
    (``"single-scale"``, ``"multi-scale"``: :func:`training_loop`) at every size. Each result is also printed as a
    JSON line when measured. With ``official_code``, the official model is first checked against
    ``official_reference`` (:func:`~transfuse_bundle.tools.official.check_official`; the report keeps its error).
    Returns the report."""
    report: dict = {}
    if official_code is not None and official_reference is not None:
        from .official import check_official

        report["official_check_relative_error"] = check_official(official_code, official_reference)
        print(json.dumps({"official_check_relative_error": report["official_check_relative_error"]}), flush=True)
    peaks = machine_peaks(device, peak_size)
    print(json.dumps({"peak_gflop_s": peaks}), flush=True)
    rows = run_benchmark(models, sizes, device, iters, warmup, throughput_batch, throughput_iters, train_batch,
                         train_iters, compile, batch_sweep, official_code, engine, weights, agreement_data)
    add_roofline(rows, peaks)
    machine = machine_description(device)
    report.update({"machine": machine, "peak_gflop_s": peaks, "results": rows})
    if data_dir is not None:
        report["data_pipeline"] = data_pipeline(data_dir, sizes[-1], train_batch, data_steps, num_workers)
        print(json.dumps(report["data_pipeline"]), flush=True)
    for mode in training_loops:
        for size in sizes:
            loop = training_loop(data_dir, size, train_batch, loop_iterations, num_workers,
                                 multi_scale=mode == "multi-scale", epochs=loop_epochs)
            report.setdefault("training_loop", []).append(loop)
            print(json.dumps(loop), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(rows, machine, out.with_suffix(".md"), report.get("data_pipeline"), peaks, report.get("training_loop"))
    return report


def interleaved_speedups(official: nn.Module, modes: dict[str, tuple[nn.Module, bool, bool]], x: torch.Tensor,
                         iters: int, warmup: int) -> dict[str, float]:
    """official-S latency / ours for each inference mode, the models called in turn in every
    iteration (batch 1), so that load from other processes cannot favour either side."""
    def call(net, channels_last, autocast):
        xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x

        def step():
            with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
                return net(xin)
        return step

    fns = {"official": call(official, False, False)}
    fns.update({mode: call(*spec) for mode, spec in modes.items()})
    ms = interleaved_median_ms(fns, iters, warmup, x.device)
    return {f"speedup_interleaved_vs_official_{mode}": round(ms["official"] / ms[mode], 3) for mode in modes}


def data_pipeline(dataset_dir: Path, size, batch: int, steps: int, num_workers: int) -> dict:
    """Training images/s with the bundle's own data pipeline (real images from disk: train.json's
    CacheDataset, augmentations and DataLoader) against the same training step on tensors already in
    memory. The ratio says whether data loading holds training back."""
    parser = config_parser("train.json", dataset_dir=str(dataset_dir), image_size=list(size), batch_size=batch,
                           num_workers=num_workers, device="$torch.device('cpu')", amp_dtype="float32")
    loader = parser.get_parsed_content("train#dataloader")
    network, loss_fn = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    network.train()

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(network(images), labels).backward()
        optimizer.step()

    batches = iter(loader)
    first = next(batches)
    images, labels = first["image"], first["label"]
    step(images, labels)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    model_only = steps * batch / (time.perf_counter() - start)
    start, seen = time.perf_counter(), 0
    while seen < steps * batch:
        try:
            data = next(batches)
        except StopIteration:
            batches = iter(loader)
            data = next(batches)
        step(data["image"], data["label"])
        seen += data["image"].shape[0]
    with_data = seen / (time.perf_counter() - start)
    return {"dataset_dir": str(dataset_dir), "size": f"{size[0]}x{size[1]}", "batch": batch, "num_workers": num_workers,
            "train_img_s_model_only": round(model_only, 2), "train_img_s_with_data": round(with_data, 2),
            "data_pipeline_ratio": round(with_data / model_only, 3)}


def add_ratios(rows: list[dict]) -> None:
    """Speed-ups of our S against the official model of the same run (the real code ``official`` when measured, else
    ``official-S``): ``speedup_vs_official_<mode>`` (batch-1 latency, measured one after the other) for every path."""
    by_key = {(r["model"], r["size"]): r for r in rows}
    for row in rows:
        if row["model"] != "S":
            continue
        official = next((by_key[(name, row["size"])] for name in OFFICIAL_MODELS if (name, row["size"]) in by_key), None)
        if official is None:
            continue
        for key in [k for k in row if k.startswith("latency_ms_")]:
            row["speedup_vs_official_" + key.removeprefix("latency_ms_")] = round(official["latency_ms_fp32"] / row[key], 2)
        row["train_speedup_vs_official_fp32"] = round(official["train_step_ms_fp32"] / row["train_step_ms_fp32"], 2)


def add_roofline(rows: list[dict], peaks: dict[str, float]) -> None:
    """``pct_peak_<what>`` = 100 x ``gflop_s_<what>`` / the peak of its dtype (bf16 paths: ``peaks["bf16"]``, INT8
    paths: ``peaks["int8"]``)."""
    for row in rows:
        for key in [k for k in row if k.startswith("gflop_s_")]:
            peak = peaks["int8" if "int8" in key and "int8" in peaks else "bf16" if "bf16" in key else "fp32"]
            row["pct_peak_" + key.removeprefix("gflop_s_")] = round(100 * row[key] / peak, 1)


def machine_description(device: str | torch.device) -> str:
    """The hardware (GPU name, or CPU model and threads), torch version, native bf16 support and (CPU) whether it has
    AVX512-BF16, AMX-BF16, AVX512-VNNI, AVX-VNNI and AMX-INT8, in one line."""
    device = torch.device(device)
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
        try:
            model_name = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
            hardware = f"{model_name.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads"
        except (OSError, StopIteration):
            pass
    return f"{hardware}; torch {torch.__version__}; native bf16: {fast_autocast_available(device)}{_cpu_features(device)}"


#: the CPU features that decide the speed of the bf16 and INT8 paths, as /proc/cpuinfo names them
CPU_FEATURES = ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")


def _cpu_features(device: torch.device) -> str:
    """``"; CPU features: avx512_bf16 yes, ..."`` (Linux), or ``""``."""
    if device.type != "cpu":
        return ""
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return ""
    return "; CPU features: " + ", ".join(f"{name} {'yes' if name in flags else 'no'}" for name in CPU_FEATURES)


def write_markdown(rows: list[dict], machine: str, path: Path, pipeline: dict | None = None,
                   peaks: dict[str, float] | None = None, loops: Sequence[dict] | None = None) -> None:
    """The rows as a Markdown table under a line naming the machine, then (with ``peaks``) the roofline table,
    (if any) the data-pipeline result and (if any) the :func:`training_loop` results."""
    lines = markdown_lines(rows, machine, pipeline, peaks) + (training_loop_lines(loops) if loops else [])
    path.write_text("\n".join(lines) + "\n")


def markdown_lines(rows: list[dict], machine: str, pipeline: dict | None = None,
                   peaks: dict[str, float] | None = None) -> list[str]:
    """The lines :func:`write_markdown` writes."""
    roofline = ("gflop_s_", "pct_peak_", "gflop", "train_gflop")
    columns = sorted({k for r in rows for k in r if not k.startswith(roofline)} - {"model", "size"}, key=_column_order)
    lines = [f"Measured on: {machine}", "", "| model | size | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | " + " | ".join(format_number(r.get(c), "-") for c in columns) + " |")
    if peaks:
        lines += ["", f"Roofline: achieved GFLOP/s and % of the machine's peak measured in this run with an fp32 / "
                  f"bf16 matmul ({peaks['fp32']} / {peaks['bf16']} GFLOP/s); bf16 paths against the bf16 peak. "
                  "GFLOP = one image's forward, or one training step's forward + backward.", "",
                  "| model | size | path | GFLOP | GFLOP/s | % of peak |", "|---|---|---|---|---|---|"]
        for r in rows:
            for key in [k for k in r if k.startswith("gflop_s_")]:
                what = key.removeprefix("gflop_s_")
                gflop = r["train_gflop"] if what.startswith("train") else r["gflop"]
                lines.append(f"| {r['model']} | {r['size']} | {what} | {gflop} | {r[key]} | {r.get('pct_peak_' + what, '-')} |")
    if pipeline:
        lines += ["", f"Data pipeline ({pipeline['dataset_dir']}, {pipeline['size']}, batch {pipeline['batch']}, "
                  f"{pipeline['num_workers']} workers): {pipeline['train_img_s_with_data']} training images/s from disk "
                  f"vs {pipeline['train_img_s_model_only']} on tensors in memory, ratio {pipeline['data_pipeline_ratio']}"]
    return lines


def _column_order(name: str) -> tuple[int, str]:
    order = ["params", "gmacs", "latency", "throughput", "best_batch", "train", "peak", "speedup"]
    return next((i for i, prefix in enumerate(order) if name.startswith(prefix)), len(order)), name


def training_loop_datalist(dataset_dir: Path, batch: int, iterations: int) -> dict[str, list]:
    """``dataset_dir``'s lists, checked to hold the ``batch * iterations`` training cases :func:`training_loop` uses
    (a ``ValueError`` naming the dataset otherwise)."""
    from ..data import load_datalist

    lists = load_datalist(dataset_dir)
    if len(lists["training"]) < batch * iterations:
        raise ValueError(f"{dataset_dir}: {len(lists['training'])} training cases; the training loop needs "
                         f"batch x iterations = {batch * iterations}")
    return lists


def _bare_training_step(parser, trainer, batch: int, multi_scale: bool) -> Callable[[], None]:
    """The training step of ``trainer``'s config without the loop: forward + loss + backward + Adam of a copy of
    the network on the first batch, preloaded as plain tensors at every scale (resized as
    :class:`~transfuse_bundle.engines.MultiScaleIteration` resizes them)."""
    import copy

    from ..engines import scaled_size

    inferer, loss_fn = parser.get_parsed_content("train#inferer"), parser.get_parsed_content("loss")
    update = parser.get_parsed_content("iteration_update") if multi_scale else None
    rates, multiple = (update.rates, update.size_multiple) if update else ([1.0], 1)
    loader = parser.get_parsed_content("train#dataloader")
    first = loader.collate_fn([loader.dataset[i] for i in range(batch)])  # in this process: no workers left behind
    images = torch.as_tensor(first["image"]).to(trainer.state.device)  # plain tensors, no metadata
    labels = torch.as_tensor(first["label"]).to(trainer.state.device)
    scaled = []  # (images, labels) at each rate
    for shape in (scaled_size(images.shape[2:], rate, multiple) for rate in rates):
        same = tuple(shape) == tuple(images.shape[2:])
        scaled.append((images, labels) if same else (
            torch.nn.functional.interpolate(images, size=shape, mode="bilinear", align_corners=True),
            torch.nn.functional.interpolate(labels.float(), size=shape, mode="nearest").to(labels.dtype)))
    bare_net = copy.deepcopy(trainer.network).train()
    bare_optimizer = torch.optim.Adam(bare_net.parameters(), **{k: v for k, v in trainer.optimizer.defaults.items()
                                                               if k in ("lr", "betas", "eps", "weight_decay")})

    def bare_step():
        for x, y in scaled:
            bare_optimizer.zero_grad(set_to_none=True)
            loss_fn(inferer(x, bare_net), y).mean().backward()
            bare_optimizer.step()

    return bare_step


def training_loop(dataset_dir: Path, size, batch: int, iterations: int, num_workers: int, multi_scale: bool = False,
                  epochs: int = 2, device: str | torch.device | None = None, top_handlers: int = 8,
                  overrides: dict | None = None) -> dict:
    """Images/s of the bundle's own training loop against the bare training step of the same network and batch.

    The loop is ``train.json``'s ``SupervisedTrainer`` (with ``multi_scale``, overlaid with the polyp task's
    ``configs/tasks/polyp/train.json``: :class:`~transfuse_bundle.engines.MultiScaleIteration`) as configured:
    CacheDataset, augmentations, DataLoader, forward, loss, backward, gradient clipping, Adam, the training
    metric and every handler, with validation on 2 cases. It trains ``epochs`` epochs of ``iterations``
    iterations on the first ``batch * iterations`` training cases of ``dataset_dir``. After each epoch the
    bare step, forward + loss + backward + Adam of a copy of the network on the first batch preloaded as
    plain tensors (at every scale, resized beforehand), runs ``iterations`` times: the two alternate, so
    load from other processes slows both alike. Epoch 1 warms both up; the rates are the medians over the
    later epochs, the loop's from the engine's epoch time (``state.times["EPOCH_COMPLETED"]``: data loading,
    iterations and per-iteration handlers, not the epoch-end handlers), and also from the wall time of the
    whole epoch including its epoch-end handlers (validation, checkpoint, model save).

    ``overrides`` are config ids set last, e.g. ``{"train#trainer#prepare_batch":
    "$monai.engines.default_prepare_batch"}`` measures the loop with MetaTensor batches, as it was.

    Where the time goes: ignite's ``HandlersTimeProfiler`` over all epochs: ``dataflow_s`` (waiting for the
    DataLoader), ``processing_s`` (the iteration function: batch to device, forward, loss, backward, step),
    and the ``top_handlers`` costliest handlers (``"name@EVENT"``: seconds).

    Returns:
        a dict with ``train_img_s_loop``, ``train_img_s_loop_with_epoch_end``, ``train_img_s_bare``,
        ``training_loop_ratio`` (loop / bare), ``training_loop_ratio_with_epoch_end``, ``dataflow_s``,
        ``processing_s``, ``handlers_s`` and the settings.
    """
    import tempfile

    from ignite.engine import Events
    from ignite.handlers.time_profilers import HandlersTimeProfiler

    if epochs < 2:
        raise ValueError(f"epochs must be >= 2 (the first one warms up), got {epochs}")
    lists, cases = training_loop_datalist(dataset_dir, batch, iterations), batch * iterations
    with tempfile.TemporaryDirectory() as bundle_root:
        parser = config_parser(
            "train.json", "polyp" if multi_scale else None, bundle_root=bundle_root, image_size=list(size),
            batch_size=batch, num_workers=num_workers, max_epochs=epochs,
            datalist={"training": lists["training"][:cases], "validation": lists["validation"][:2], "test": []})
        if device is not None:
            parser["device"] = f"$torch.device({str(device)!r})"
        parser.update(overrides or {})
        trainer = parser.get_parsed_content("train#trainer")
        bare_step = _bare_training_step(parser, trainer, batch, multi_scale)
        loop_s, wall_s, bare_s, started = [], [], [], []
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: started.append(time.perf_counter()))

        def bare_steps(engine):
            wall_s.append(time.perf_counter() - started[-1])
            loop_s.append(engine.state.times["EPOCH_COMPLETED"])
            start = time.perf_counter()
            for _ in range(iterations):
                bare_step()
            _sync(engine.state.device)
            bare_s.append(time.perf_counter() - start)

        trainer.add_event_handler(Events.EPOCH_COMPLETED, bare_steps)
        profiler = HandlersTimeProfiler()
        profiler.attach(trainer)
        trainer.run()
    profile = {f"{name}@{event}": total for name, event, total, *_ in profiler.get_results()
               if event not in ("", "None") and isinstance(total, float) and "bare_steps" not in str(name)}
    totals = {name: total for name, event, total, *_ in profiler.get_results() if event in ("", "None")}
    loop, wall, bare = (cases / statistics.median(times[1:]) for times in (loop_s, wall_s, bare_s))
    return {"dataset_dir": str(dataset_dir), "size": f"{size[0]}x{size[1]}", "batch": batch, "iterations": iterations,
            "epochs": epochs, "num_workers": num_workers, "multi_scale": multi_scale, "threads": torch.get_num_threads(),
            "train_img_s_loop": round(loop, 3), "train_img_s_loop_with_epoch_end": round(wall, 3),
            "train_img_s_bare": round(bare, 3), "training_loop_ratio": round(loop / bare, 3),
            "training_loop_ratio_with_epoch_end": round(wall / bare, 3),
            "dataflow_s": totals.get("Dataflow"), "processing_s": totals.get("Processing"),
            "handlers_s": dict(sorted(profile.items(), key=lambda item: -item[1])[:top_handlers])}


def training_loop_lines(loops: Sequence[dict]) -> list[str]:
    """Markdown table of :func:`training_loop` results: images/s of the loop and of the bare step, their ratios."""
    lines = ["", "Training loop (train.json's trainer) against the bare step (forward + loss + backward + Adam on "
             "preloaded tensors), images/s, same process, alternating epochs:", "",
             "| size | batch | scales | workers | loop | bare step | ratio | with epoch end | ratio | "
             "dataflow s | processing s | costliest handlers (s) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in loops:
        handlers = ", ".join(f"{name} {seconds:.2f}" for name, seconds in list(r["handlers_s"].items())[:3])
        lines.append(f"| {r['size']} | {r['batch']} | {'multi' if r['multi_scale'] else 'single'} | {r['num_workers']} "
                     f"| {r['train_img_s_loop']} | {r['train_img_s_bare']} | {r['training_loop_ratio']} "
                     f"| {r['train_img_s_loop_with_epoch_end']} | {r['training_loop_ratio_with_epoch_end']} "
                     f"| {r['dataflow_s']} | {r['processing_s']} | {handlers} |")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Evaluation cost: evaluate.json at the original resolution against the forward passes it needs.

#: stages of :func:`evaluation_split`, in the order of one case's path through the evaluation.
EVALUATION_STAGES = ("start", "loading", "inference", "postprocessing", "metrics", "report_metrics", "pictures",
                     "writing", "other")


def evaluation_overrides(dataset_dir: str | Path, bundle_root: str | Path, output_dir: str | Path,
                         image_size: Sequence[int]) -> dict:
    """The command-line overrides of the benchmarked evaluation (README "Commands", ``--num_workers 0``)."""
    return {"dataset_dir": str(dataset_dir), "bundle_root": str(bundle_root), "output_dir": str(output_dir),
            "image_size": [int(s) for s in image_size], "num_workers": 0}


def _evaluation_stage(event: str, handler: str) -> str:
    """The stage of :data:`EVALUATION_STAGES` an evaluator handler (ignite event, qualified name) belongs to."""
    if event == "MODEL_COMPLETED":
        return "postprocessing"  # decollate, Invertd (resize back), sigmoid, threshold, one-hot
    if handler.endswith(("iteration_completed", "Metric.completed", "Metric.started")):
        return "metrics"  # MONAI / ignite metric handlers: Dice, IoU, HD95, ASD, NSD
    if handler.startswith("SegmentationReport."):
        return {"_collect": "report_metrics", "_overlays": "pictures"}.get(handler.split(".")[-1], "writing")
    if handler.startswith(("MetricsSaver", "RecordOutputs")):
        return "writing"
    if handler.startswith("CheckpointLoader"):
        return "start"
    return "other"


def evaluation_split(overrides: dict) -> dict:
    """Seconds per stage of one evaluation run in this process, measured by ignite's ``HandlersTimeProfiler``.

    The workflow is the one ``python -m monai.bundle run`` builds from the evaluation chain and ``overrides``. Returns ``{"num_cases", "engine_s" (the evaluator's run), "stages": {stage: seconds},
    "handlers_s": {"EVENT:handler": seconds}}`` with the stages of :data:`EVALUATION_STAGES` (``start`` has
    only the weights' loading here; the imports and config parsing before the run only the whole command shows):
    loading = the DataLoader (PIL decoding, resizing the image to the network size); inference = the
    evaluator's iteration less its postprocessing handlers; postprocessing = decollating, ``Invertd``
    (resize back), sigmoid, threshold and one-hot; metrics = the metric handlers; report_metrics = the
    report's per-case metrics (accuracy, sensitivity, specificity, polyp toolbox); pictures = overlays;
    writing = metrics.json, per_case.csv, summary.md and MONAI's CSVs; other = the rest of the evaluator's
    run (other handlers, ignite's own work), so that the stages add up to ``engine_s``.
    """
    from ignite.handlers.time_profilers import HandlersTimeProfiler

    workflow = config_workflow("evaluate.json", **overrides)
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    profiler = HandlersTimeProfiler()
    profiler.attach(evaluator)
    start = time.perf_counter()
    workflow.run()
    engine_s = time.perf_counter() - start
    workflow.finalize()
    stages = dict.fromkeys(EVALUATION_STAGES, 0.0)
    handler_s: dict[str, float] = {}
    stages["loading"] = sum(profiler.dataflow_times)
    stages["inference"] = sum(profiler.processing_times)
    for event, handlers in profiler.event_handlers_times.items():
        name = getattr(event, "name", str(event))
        for handler, times in handlers.items():
            stage = _evaluation_stage(name, handler)
            stages[stage] += sum(times)
            handler_s[f"{name}:{handler}"] = handler_s.get(f"{name}:{handler}", 0.0) + sum(times)
            if stage == "postprocessing":
                stages["inference"] -= sum(times)  # MONAI fires MODEL_COMPLETED inside the iteration
    stages["other"] += max(engine_s - sum(stages.values()), 0.0)  # the engine's own work between the handlers
    return {"num_cases": len(profiler.processing_times), "engine_s": engine_s, "stages": stages,
            "handlers_s": {name: round(seconds, 3) for name, seconds in handler_s.items() if seconds >= 0.001}}


def evaluation_forward_ms(image_size: Sequence[int], iters: int = 10, warmup: int = 2) -> float:
    """Median time (ms) of one batch-1 forward at ``image_size`` through the evaluation's own network and
    inferer (``validate#inferer`` of the evaluation chain: the served one), random weights and input."""
    parser = config_parser("evaluate.json", image_size=[int(s) for s in image_size], device="$torch.device('cpu')")
    torch.manual_seed(0)
    network, inferer = parser.get_parsed_content("network").eval(), parser.get_parsed_content("validate#inferer")
    x = torch.rand(1, parser["in_channels"], *image_size)

    def forward():
        with torch.no_grad():
            return inferer(x, network)

    return median_ms(forward, iters, warmup)


def evaluation_benchmark(dataset_dir: str | Path, bundle_root: str | Path, output_dir: str | Path,
                         image_size: Sequence[int] = (192, 256), forward_iters: int = 10,
                         threads: int | None = None) -> dict:
    """The evaluation's cost against the forward passes it needs (what evaluation adds per case to the network).

    Runs :func:`evaluation_split` in a child process, the evaluation ``python -m monai.bundle run`` runs with
    the overrides of :func:`evaluation_overrides`, and times the child whole (process start included);
    then measures the default inferer's batch-1 forward at ``image_size`` here (:func:`evaluation_forward_ms`).
    ``bundle_root/models/model.pt`` holds the weights; ``dataset_dir`` is what evaluate.json evaluates (a
    folder, or a datalist's test list); the report goes to ``output_dir``. ``threads``: torch's CPU threads
    in both processes (``OMP_NUM_THREADS`` for the child; default: torch's choice).

    Returns ``num_cases``, ``wall_s`` (the child), ``forward_ms``, ``ratio`` = wall_s / (num_cases x
    forward), ``per_case_ms`` per stage of :data:`EVALUATION_STAGES` (``start``: the wall time less the
    evaluator's run: imports, parsing the configs, building the network) and ``stage_ratio`` (each
    stage's time per case over the forward time; they add up to ``ratio``). A child that fails (bad weights or
    data: it has printed its one-line ``error:``) raises ``subprocess.CalledProcessError``.
    """
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if threads:
        torch.set_num_threads(threads)
        env["OMP_NUM_THREADS"] = str(threads)
    overrides = evaluation_overrides(dataset_dir, bundle_root, output_dir, image_size)
    child = ("import json, sys; from transfuse_bundle.tools.benchmarking import evaluation_split; "
             "print(json.dumps(evaluation_split(json.loads(sys.argv[1]))))")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", child, json.dumps(overrides)], check=True, stdout=subprocess.PIPE,
                          text=True, env=env)
    wall_s = time.perf_counter() - start
    split = json.loads(done.stdout.strip().splitlines()[-1])
    forward_ms = evaluation_forward_ms(image_size, forward_iters)
    n = split["num_cases"]
    stages = dict(split["stages"])
    stages["start"] += max(wall_s - split["engine_s"], 0.0)
    per_case_ms = {stage: round(1000 * seconds / n, 1) for stage, seconds in stages.items()}
    return {"num_cases": n, "size": f"{image_size[0]}x{image_size[1]}", "wall_s": round(wall_s, 2),
            "forward_ms": round(forward_ms, 2), "ratio": round(wall_s * 1000 / (n * forward_ms), 2),
            "per_case_ms": per_case_ms,
            "stage_ratio": {stage: round(ms / forward_ms, 2) for stage, ms in per_case_ms.items()},
            "handlers_s": split["handlers_s"]}
