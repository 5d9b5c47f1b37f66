"""Download a packaged TransFuse bundle, checked before anything lands in the bundle folder.

    transfuse-download --url https://host/dist/transfuse_polyp_v0.1.0.zip --bundle_dir bundles
        # checks the zip against https://host/dist/transfuse_polyp_v0.1.0.zip.sha256 (or --sha256 HEX),
        # then refuses a truncated archive, paths outside the folder and links, before extracting
    transfuse-download --repo MyOrg/transfuse_polyp [--version 0.1.0] --bundle_dir bundles
        # a Hugging Face hub repository (HF_ENDPOINT, HF_TOKEN apply): MONAI's download, then the weights
        # are checked against the sha256 in its large_files.yml

The bundle lands in BUNDLE_DIR/NAME whole or not at all; an existing BUNDLE_DIR/NAME is never replaced.
Exit status 1 with one line "error: ..." on a refusal. See README.md ("Model zoo").
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..download import DownloadError, download_hub, download_zip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="URL of a bundle zip written by transfuse-package")
    source.add_argument("--repo", metavar="OWNER/NAME", help="a Hugging Face hub repository holding the bundle")
    parser.add_argument("--bundle_dir", "--bundle-dir", required=True, help="folder the bundle folder is written into")
    parser.add_argument("--version", help="with --repo: the version tag (default: latest_version)")
    parser.add_argument("--name", help="the bundle folder name (default: the zip's top folder / the repository's name)")
    parser.add_argument("--sha256", help="with --url: the zip's sha256 (default: read from URL.sha256)")
    args = parser.parse_args(argv)
    if args.url and args.version:
        parser.error("--version goes with --repo (a zip URL names its version)")
    if args.repo and args.sha256:
        parser.error("--sha256 goes with --url (a hub bundle lists its weights' sha256 in large_files.yml)")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # a quiet console: the result or one error line
    try:
        if args.url:
            bundle = download_zip(args.url, args.bundle_dir, sha256_hex=args.sha256, name=args.name)
        else:
            bundle = download_hub(args.repo, args.bundle_dir, version=args.version, name=args.name)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"bundle: {bundle}")
    return 0
