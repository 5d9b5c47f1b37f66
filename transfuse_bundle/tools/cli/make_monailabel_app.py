"""Put the TransFuse bundle (one task of it) into MONAI Label's monaibundle app, ready to serve.

    transfuse-monailabel-app --app apps/monaibundle --task polyp
    transfuse-monailabel-app --app apps/monaibundle --task prostate --init-weights
    transfuse-monailabel-app --app apps/monaibundle --task polyp --engine cpu      # served by the CPU engine
    python scripts/make_monailabel_app.py ...      # the same from a checkout
    TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 python -m monailabel.main start_server --app apps/monaibundle \\
        --studies STUDIES --conf models transfuse_polyp --conf zoo_source github --conf sam2 false \\
        --host 127.0.0.1

The app is copied from the installed monailabel wheel when ``--app`` does not exist and made the
active-learning app (``epistemic`` strategy, MC-dropout scoring; ``--stock-app`` keeps the stock one); the bundle folder
(configs with the task merged in, the transfuse_bundle modules they run, models/, the model card, LICENSE) is written to
``APP/model/NAME``. See docs/monailabel.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bundle_folder import parse_override
from ...errors import UserInputError
from ...monailabel.app import ENGINE_OVERLAYS, install_bundle, server_command
from ..packaging import bundle_name
from ..tasks import task_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", required=True, help="monaibundle app folder (made from the monailabel wheel if missing)")
    parser.add_argument("--name", help="bundle folder / MONAI Label model name (default: transfuse_<task>)")
    parser.add_argument("--task", default="polyp", choices=task_names(),
                        help="a task of configs/tasks/")
    parser.add_argument("--weights", help="a state dict to install as models/model.pt (default: the repository's models/)")
    parser.add_argument("--init-weights", action="store_true",
                        help="write untrained weights when there is no model.pt (to train from MONAI Label)")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[], metavar="ID=JSON",
                        help="set a config id in the copy, e.g. --set image_size=[256,256] (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing APP/model/NAME")
    parser.add_argument("--stock-app", action="store_true",
                        help="keep MONAI Label's stock monaibundle main.py (no epistemic strategy, MC-dropout scoring, "
                             "tolerant batch inference, nor the guard: plain-name ids, configured CORS origins only, "
                             "400/404 answers); default: the active-learning app with the guard")
    parser.add_argument("--engine", choices=list(ENGINE_OVERLAYS), default="pytorch",
                        help="what runs the network at inference: PyTorch, the CPU engine (OpenVINO, the cpu extra) or "
                             "its INT8 model (made beside the weights by transfuse-quantize)")
    args = parser.parse_args(argv)
    try:
        name = args.name or bundle_name(args.task)
        bundle = install_bundle(args.app, name, task=args.task, overrides=dict(args.overrides),
                                weights=args.weights, init_weights=args.init_weights, overwrite=args.overwrite,
                                active_learning=not args.stock_app, engine=args.engine)
    except (UserInputError, ModuleNotFoundError, OSError) as e:  # a refused input, the app folder in use, an unwritable --app
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"bundle folder: {bundle}")
    print("start the server with:")
    # weights-only torch.load in the server whatever torch's default (docs/monailabel.md, Security)
    print("  TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 " + " ".join(server_command(Path(args.app).resolve(), "STUDIES",
                                                                           [name], port=8000)))
    if not args.stock_app:
        print(f"active learning: add `--conf epistemic_model {name}`, then POST /scoring/{name} and "
              f"POST /activelearning/epistemic (docs/monailabel.md)")
    return 0
