"""Table 1 on PraNet's polyp test sets: see transfuse_bundle/metrics/polyp_benchmark.py (or transfuse-polyp-benchmark)."""
from transfuse_bundle.metrics.polyp_benchmark import main
raise SystemExit(main())
