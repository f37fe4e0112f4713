"""``hemo download head-ct|rsna``: Kaggle download through the kaggle package, unzip, index.

Exit status: 0 on success; 2 with one line on stderr when credentials are missing, the network is
down, the competition rules are not accepted, or the archive is bad.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: Names accepted on the command line (kept here so ``hemo --help`` need not import hemo.kaggle).
SOURCE_NAMES: tuple[str, ...] = ("head-ct", "rsna")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``download`` subcommand."""
    parser = subparsers.add_parser(
        "download",
        help="download a Kaggle dataset (head-ct, rsna), unzip and index it",
        description="Download through the kaggle package: head-ct is the dataset "
        "felipekitamura/head-ct-hemorrhage; rsna is the competition "
        "rsna-intracranial-hemorrhage-detection (a ~180 GB archive, ~450 GB of DICOM once "
        "unpacked: ~630 GB free at the peak; accept its rules on kaggle.com first). "
        "Needs credentials: ~/.kaggle/kaggle.json (chmod 600), KAGGLE_USERNAME + KAGGLE_KEY, or "
        "KAGGLE_API_TOKEN. Unzips into OUT/<name>/ and writes index.parquet there.",
    )
    parser.add_argument("name", choices=SOURCE_NAMES, help="what to download")
    parser.add_argument(
        "--out", type=Path, default=None, help="download folder (default: data/raw of the project)"
    )
    parser.add_argument("--force", action="store_true", help="download again even if complete")
    parser.add_argument("--workers", type=int, help="processes reading headers (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Download, unzip and index ``args.name``; print where it is."""
    from hemo.cli import emit_json
    from hemo.config import RAW_DIR
    from hemo.kaggle import download

    result = download(args.name, out=args.out or RAW_DIR, force=args.force, workers=args.workers)
    payload = {
        "name": result.name,
        "root": str(result.root),
        "layout": result.layout,
        "total": result.total,
        "index": str(result.index_path),
        "downloaded": result.downloaded,
    }
    if args.json:
        emit_json(payload)
    else:
        sys.stdout.write(
            f"{result.name}: {result.total} images ({result.layout}) in {result.root}; "
            f"index {result.index_path}\n"
        )
    return 0
