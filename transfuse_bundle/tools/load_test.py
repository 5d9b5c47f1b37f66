"""Bounded load test of a running MONAI Label server: N uploads of real images, C at a time.

Each request posts one image to ``/infer/MODEL?output=image`` as a multipart upload (as 3D Slicer and the
REST examples do) and must return HTTP 200 with a valid label map: a PNG that decodes, has the input's
height and width, and holds only 0 and the model's label ids (from ``/info``). Reported: errors (HTTP,
exceptions, invalid masks), client-side latency p50 / p95 / max, throughput, and, given ``pid``, the
server process's resident memory (``VmRSS`` from ``/proc/PID/status``) before and after, plus its peak
(``VmHWM``). Images are cycled when there are fewer than requests. The command is ``transfuse-load-test``
(:mod:`transfuse_bundle.tools.cli.load_test`).

Example::

    from transfuse_bundle.tools.load_test import collect_images, format_report, run_load_test
    report = run_load_test("http://127.0.0.1:8000", "transfuse_polyp", collect_images(["images/"]), 40, 4)
    print(format_report(report))
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["collect_images", "check_label_map", "model_label_ids", "process_memory_mb", "run_load_test", "format_report"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_ERRORS_KEPT = 10  # error messages kept in the report (all are counted)


def process_memory_mb(pid: int) -> dict[str, float]:
    """``{"rss_mb": current resident memory, "hwm_mb": its peak}`` of process ``pid`` (Linux /proc)."""
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        raise ProcessLookupError(f"no process {pid} ({status} does not exist)")
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {key: int(fields[name].split()[0]) / 1024 for key, name in (("rss_mb", "VmRSS"), ("hwm_mb", "VmHWM"))}


def collect_images(sources: Sequence[str | Path]) -> list[Path]:
    """Image files from folders (``*.png/jpg/jpeg`` in them, sorted) and files, in the given order."""
    images: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            images += sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif source.is_file():
            images.append(source)
        else:
            raise FileNotFoundError(f"image source {source} does not exist")
    if not images:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {[str(s) for s in sources]}")
    return images


def check_label_map(content: bytes, image: Path, label_ids: set[int]) -> str | None:
    """None if ``content`` is a PNG label map of ``image``'s size with values in {0} | label_ids, else why not."""
    from PIL import Image

    try:
        mask = Image.open(io.BytesIO(content))
        mask_format = mask.format
        array = np.asarray(mask)
    except Exception as e:  # noqa: BLE001 (any decoding failure is an invalid mask)
        return f"response is not an image ({type(e).__name__}: {e})"
    width, height = Image.open(image).size
    if mask_format != "PNG":
        return f"expected a PNG, got {mask_format}"
    if array.shape != (height, width):
        return f"mask shape {array.shape} is not (H, W) = {(height, width)}"
    values = set(np.unique(array).tolist())
    if not values <= {0} | label_ids:
        return f"mask values {sorted(values)} are not in {sorted({0} | label_ids)}"
    return None


def model_label_ids(url: str, model: str, timeout: float = 30.0) -> set[int]:
    """The label ids that ``/info`` lists for ``model``."""
    import requests

    info = requests.get(f"{url}/info/", timeout=timeout)
    info.raise_for_status()
    models = info.json().get("models", {})
    if model not in models:
        raise ValueError(f"{url} does not serve a model {model!r}; it serves {sorted(models)}")
    return {int(v) for v in models[model].get("labels", {}).values()}


def run_load_test(url: str, model: str, images: Sequence[Path], requests_total: int = 40, concurrency: int = 4,
                  pid: int | None = None, timeout: float = 300.0) -> dict[str, Any]:
    """Sends ``requests_total`` uploads, ``concurrency`` at a time; returns the report (see the module doc)."""
    import requests

    if requests_total < 1 or concurrency < 1:
        raise ValueError(f"requests ({requests_total}) and concurrency ({concurrency}) must be >= 1")
    url = url.rstrip("/")
    label_ids = model_label_ids(url, model)
    memory_before = process_memory_mb(pid) if pid else None

    def one(index: int) -> dict[str, Any]:
        image = images[index % len(images)]
        t0 = time.perf_counter()
        try:
            with open(image, "rb") as f:
                r = requests.post(f"{url}/infer/{model}?output=image", timeout=timeout,
                                  files={"file": (image.name, f, "application/octet-stream")}, data={"params": "{}"})
            latency = time.perf_counter() - t0
            if r.status_code != 200:
                error = f"HTTP {r.status_code}: {r.text[:300]}"
            else:
                error = check_label_map(r.content, image, label_ids)
        except Exception as e:  # noqa: BLE001 (a timeout or a dropped connection is a failed request)
            latency, error = time.perf_counter() - t0, f"{type(e).__name__}: {e}"
        return {"image": image.name, "latency_s": latency, "error": error}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(requests_total)))
    wall = time.perf_counter() - t0
    memory_after = process_memory_mb(pid) if pid else None

    latencies = np.array([r["latency_s"] for r in results])
    errors = [f"{r['image']}: {r['error']}" for r in results if r["error"]]
    report: dict[str, Any] = {
        "url": url, "model": model, "requests": requests_total, "concurrency": concurrency,
        "distinct_images": min(len(images), requests_total), "errors": len(errors),
        "valid_masks": requests_total - len(errors), "error_messages": errors[:MAX_ERRORS_KEPT],
        "p50_s": float(np.percentile(latencies, 50)), "p95_s": float(np.percentile(latencies, 95)),
        "max_s": float(latencies.max()), "wall_s": wall, "throughput_rps": requests_total / wall,
    }
    if pid:
        report.update(server_pid=pid, rss_before_mb=memory_before["rss_mb"], rss_after_mb=memory_after["rss_mb"],
                      rss_peak_mb=memory_after["hwm_mb"])
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report of :func:`run_load_test` as an aligned text table, one line per measure and per kept error."""
    rows = [
        ("requests (concurrency)", f"{report['requests']} ({report['concurrency']})"),
        ("distinct images", str(report["distinct_images"])),
        ("errors", str(report["errors"])),
        ("valid masks", str(report["valid_masks"])),
        ("latency p50 / p95 / max (s)", f"{report['p50_s']:.2f} / {report['p95_s']:.2f} / {report['max_s']:.2f}"),
        ("wall time (s), throughput (req/s)", f"{report['wall_s']:.1f}, {report['throughput_rps']:.2f}"),
    ]
    if "rss_before_mb" in report:
        rows.append(("server RSS before / after / peak (MB)",
                     f"{report['rss_before_mb']:.0f} / {report['rss_after_mb']:.0f} / {report['rss_peak_mb']:.0f}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"load test of {report['url']}/infer/{report['model']}"] + [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines + [f"  error: {m}" for m in report["error_messages"]])
