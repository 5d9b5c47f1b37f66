"""Export a bundle's models/model.pt to TorchScript (models/model.ts) and ONNX (models/model.onnx).

    transfuse-export                         # the repository's bundle (after training)
    transfuse-export --bundle_root BUNDLES/transfuse_polyp --formats ts
    python scripts/export.py ...             # the same from a checkout

Runs MONAI's own commands in the bundle root (with its transfuse_bundle first on PYTHONPATH; in the
repository the inference chain is "['configs/train.json','configs/inference.json']"):

    python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \\
        --meta_file configs/metadata.json --config_file configs/inference.json
    python -m monai.bundle onnx_export network_def --filepath models/model.onnx --ckpt_file models/model.pt \\
        --meta_file configs/metadata.json --config_file configs/inference.json \\
        --converter_kwargs "{'input_names': ['image'], 'output_names': ['pred']}"

TorchScript is made with torch.jit.script (what the model zoo checks); ONNX with torch's dynamo exporter,
for the fixed input shape [1, C, H, W] of metadata.json (input "image", output "pred", logits).
"""

from __future__ import annotations

import argparse
import sys

from ..bundle_folder import BundleFolderError, parse_override, source_root
from ..packaging import EXPORT_FILES, export_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle_root", help="bundle folder with models/model.pt (default: the repository)")
    parser.add_argument("--formats", nargs="+", default=list(EXPORT_FILES), choices=sorted(EXPORT_FILES))
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[], metavar="ID=JSON",
                        help="config override for the export, e.g. --set image_size=[256,256] (must match the weights)")
    args = parser.parse_args(argv)
    try:
        written = export_models(args.bundle_root or source_root(), args.formats, overrides=dict(args.overrides))
    except (BundleFolderError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for fmt, path in written.items():
        print(f"{fmt}: {path}")
    return 0
