"""Timing and size measurements shared by ``scripts/benchmark.py`` and ``scripts/compare_models.py``."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["median_ms", "interleaved_median_ms", "gmacs", "parameter_count", "forward_latency_ms"]


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


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_latency_ms(model: nn.Module, x: torch.Tensor, iters: int = 20, warmup: int = 3,
                       autocast: bool = False) -> float:
    """Median eval-mode forward latency of ``model`` on ``x`` (optionally under bf16 autocast)."""
    model = model.eval()

    def step():
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            return model(x)

    return median_ms(step, iters, warmup, x.device)
