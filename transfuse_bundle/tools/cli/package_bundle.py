"""Package the TransFuse bundle (one task of it) for the MONAI model zoo: dist/<name>_v<version>.zip.

    transfuse-package --task polyp --weights models/model.pt --export
    transfuse-package --task polyp --weights models/model.pt --export \\
        --large-files-url https://example.org/transfuse/          # weights next to the zip, for upload
    python scripts/package_bundle.py ...                          # the same from a checkout

The zip's top folder is <name>/ (default transfuse_<task>): configs with the task merged in, the
modules of transfuse_bundle those configs run (the bundle runs without pip install), models/ (or large_files.yml with URLs and
sha256), docs/README.md (model card), docs/data_license.txt, LICENSE. Users then run

    python -m monai.bundle download --name transfuse_polyp --version 0.1.0 --url URL/transfuse_polyp_v0.1.0.zip \\
        --bundle_dir BUNDLES
    python -m monai.bundle download_large_files --bundle_path BUNDLES/transfuse_polyp   # large-files mode only

See README.md ("Model zoo").
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..bundle_folder import BundleFolderError, parse_override
from ..packaging import package_bundle
from ..tasks import task_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="polyp", choices=task_names(),
                        help="a task of configs/tasks/")
    parser.add_argument("--weights", help="state dict to ship as models/model.pt (default: models/model.pt)")
    parser.add_argument("--init-weights", action="store_true",
                        help="ship untrained weights of the task's network (to train it from MONAI Label)")
    parser.add_argument("--version", help="version to publish; must be in metadata.json's changelog (default: its version)")
    parser.add_argument("--name", help="bundle name, the zip's top folder (default: transfuse_<task>)")
    parser.add_argument("--out", default="dist", help="output folder (default: dist)")
    parser.add_argument("--large-files-url", metavar="BASE",
                        help="ship the weights as large files: written next to the zip for upload to BASE, "
                             "listed with sha256 in large_files.yml")
    parser.add_argument("--export", action="store_true",
                        help="also write models/model.ts (ckpt_export, TorchScript) and models/model.onnx (onnx_export)")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[], metavar="ID=JSON",
                        help="set a config id in the package, e.g. --set image_size=[256,256] (repeatable)")
    parser.add_argument("--schema", help="local copy of the metadata schema: verify the package's metadata.json against it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        package = package_bundle(args.task, out=args.out, weights=args.weights, version=args.version, name=args.name,
                                 large_files_url=args.large_files_url, export=args.export, init_weights=args.init_weights,
                                 overrides=dict(args.overrides), schema=args.schema)
    except (BundleFolderError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"package: {package.zip_path}")
    for path, file in package.large_files.items():
        print(f"upload {file} (bundle path {path}) so that it is served at the URL listed in large_files.yml")
    return 0
