"""The tools used from the repository, never shipped inside a bundle: the task registry and its config
chains, bundle folders and packaging, benchmarks, the recipe and model comparison, the GPU check, the
PraNet polyp benchmark, public dataset layouts and the MONAI Label load test; ``cli/`` holds the commands."""

from pathlib import Path

#: the repository checkout this package lives in (for an editable install; see bundle_folder.source_root)
REPOSITORY = Path(__file__).resolve().parents[2]
