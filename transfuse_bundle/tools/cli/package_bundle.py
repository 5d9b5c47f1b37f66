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

As a Hugging Face hub repository (the bundle folder at the root, README.md with the hub's front matter,
large_files.yml with the weights' sha256, one git tag per version, latest_version with --latest):

    transfuse-package --task polyp --weights models/model.pt --hub-repo MyOrg/transfuse_polyp \
        --hub-dir mirrors/models/MyOrg/transfuse_polyp --latest        # a local git repository, tagged
    HF_TOKEN=hf_... transfuse-package --task polyp --weights models/model.pt \
        --hub-repo MyOrg/transfuse_polyp --publish private --latest    # MONAI's push_to_hf_hub

The zip's sha256 is written beside it (<zip>.sha256): publish both; transfuse-download checks it.
See README.md ("Model zoo").
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..bundle_folder import BundleFolderError, merged_config, parse_override
from ..hub import check_hub_dir, check_repo_id, check_token, hub_token, publish, write_hub_repo
from ..packaging import package_bundle
from ..tasks import config_files, task_names


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
    hub = parser.add_argument_group("Hugging Face hub")
    hub.add_argument("--hub-repo", metavar="OWNER/NAME", help="the hub repository id (for --hub-dir and --publish)")
    hub.add_argument("--hub-dir", metavar="DIR",
                     help="also write the bundle as that hub repository into the local git repository DIR, tagged "
                          "with the version (e.g. a self-hosted hub's MIRRORS/models/OWNER/NAME)")
    hub.add_argument("--publish", choices=("public", "private"),
                     help="also upload it to the hub (HF_ENDPOINT, default huggingface.co) with MONAI's push_to_hf_hub, "
                          "creating the repository public or private; the token is read from HF_TOKEN")
    hub.add_argument("--latest", action="store_true", help="tag this version latest_version (what download fetches by default)")
    args = parser.parse_args(argv)
    if (args.hub_dir or args.publish) and not args.hub_repo:
        parser.error("--hub-dir and --publish need --hub-repo OWNER/NAME")
    if (args.hub_repo or args.latest) and not (args.hub_dir or args.publish):
        parser.error("--hub-repo and --latest go with --hub-dir DIR and/or --publish public|private")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for client in ("httpx", "httpx2"):  # the hub client (huggingface_hub 1.x: httpx, 2.x: httpx2) logs each request
        logging.getLogger(client).setLevel(logging.WARNING)
    try:
        token = None
        if args.hub_repo:  # the hub's refusals that need no work come first
            check_repo_id(args.hub_repo)
            if args.publish:  # a missing or refused token, or an unreachable hub, before the package is made
                token = hub_token()
                check_token(token)
            if args.hub_dir:
                check_hub_dir(args.hub_dir, args.version or merged_config(config_files("metadata.json", args.task))["version"])
        package = package_bundle(args.task, out=args.out, weights=args.weights, version=args.version, name=args.name,
                                 large_files_url=args.large_files_url, export=args.export, init_weights=args.init_weights,
                                 overrides=dict(args.overrides), schema=args.schema)
        if args.hub_dir:
            repo = write_hub_repo(package.zip_path, args.hub_dir, args.hub_repo, latest=args.latest)
        if args.publish:
            url = publish(package.zip_path, args.hub_repo, private=args.publish == "private", latest=args.latest, token=token)
    except (BundleFolderError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"package: {package.zip_path}")
    print(f"sha256: {package.checksum_path} (publish it beside the zip)")
    if args.hub_dir:
        print(f"hub repository {args.hub_repo}: {repo.path} at {repo.commit[:12]}, tags {', '.join(repo.tags)}")
    if args.publish:
        print(f"published: {url}")
    for path, file in package.large_files.items():
        print(f"upload {file} (bundle path {path}) so that it is served at the URL listed in large_files.yml")
    return 0
