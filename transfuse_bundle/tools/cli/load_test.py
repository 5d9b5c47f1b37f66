"""Bounded load test of a running MONAI Label server: N uploads of real images, C at a time.

    transfuse-load-test --url http://127.0.0.1:8000 --model transfuse_polyp \\
        --images ../shared/data/kvasir_seg/images --requests 40 --concurrency 4 --pid SERVER_PID \\
        --json load_test.json
    python scripts/load_test.py ...      # the same from a checkout

Every answer must be HTTP 200 with a PNG label map of the input's size holding only 0 and the model's
label ids. Reported: errors, latency p50 / p95 / max, throughput and, given --pid, the server's memory
before, after and at its peak (see transfuse_bundle.tools.load_test). Exit status 1 when any request
failed, 2 when the test cannot start (no images, unknown model, server unreachable).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import int_at_least
from ..load_test import collect_images, format_report, run_load_test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="MONAI Label model name, e.g. transfuse_polyp")
    parser.add_argument("--images", nargs="+", required=True, help="image files and/or folders of images")
    parser.add_argument("--requests", type=int_at_least(1), default=40, help="number of inference requests (default 40)")
    parser.add_argument("--concurrency", type=int_at_least(1), default=4, help="requests in flight at once (default 4)")
    parser.add_argument("--pid", type=int, help="server process id, to report its memory before and after")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in seconds")
    parser.add_argument("--json", help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    try:
        report = run_load_test(args.url, args.model, collect_images(args.images), args.requests, args.concurrency,
                               args.pid, args.timeout)
    except (ValueError, OSError) as e:  # missing images, unknown model, no such process, server unreachable
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0
