"""``noisecraft data download NAME DIR [--mirror URL]``: fetch a dataset and check its checksums."""

from __future__ import annotations

import argparse

from ..data.download import DATASETS, download


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="fetch datasets (the only command that uses the network)")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(p))
    actions.required = True
    d = actions.add_parser("download", help="download a dataset and verify its published checksums",
                           description=__doc__)
    d.add_argument("name", choices=sorted(DATASETS), help="dataset to fetch")
    d.add_argument("dir", help="folder to put it in (created if needed)")
    d.add_argument("--mirror", metavar="URL",
                   help="base URL to fetch the files from instead of the canonical one")
    d.add_argument("--allow-insecure-mirror", action="store_true",
                   help="accept an http:// or ftp:// --mirror (checksums are still checked)")
    d.set_defaults(func=run_download)


def run_download(args: argparse.Namespace) -> int:
    path = download(args.name, args.dir, mirror=args.mirror,
                    allow_insecure=args.allow_insecure_mirror)
    print(f"ready: --data {path}")
    return 0
