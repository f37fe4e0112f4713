"""``hemo convert SRC OUT``: DICOM slices -> windowed, resized PNGs (parallel, resumable, sharded).

Exit status: 0 when every input converted or was already done, 1 when some inputs failed (each
listed with its reason), 2 when the options or SRC are wrong, or OUT was converted with another
window or size.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="DICOM -> windowed PNG, parallel, resumable, shardable",
        description="Convert every DICOM slice under SRC (a folder, recursive, or an "
        "index.parquet) to a windowed, resized 8-bit PNG under OUT, mirroring the input tree. "
        "Outputs that exist are skipped, so a killed run resumes where it stopped. PNGs carry "
        "pixels only (no metadata). A multi-frame DICOM or a NIfTI volume (.nii, .nii.gz) gives "
        "one PNG per slice (STEM_frame0001.png ...) and STEM_frames.json, written last. "
        "Inputs whose PNG names would be shared (a.dcm and a, a.dcm and a.DCM, x.dcm and x.nii) "
        "each take their whole file name plus .png (a.dcm.png, a.png, a.DCM.png); other names "
        "are unchanged. OUT/.hemo_convert.json records the window and size before any PNG is "
        "written; a rerun into OUT with other settings is refused (exit 2).",
    )
    parser.add_argument("src", metavar="SRC", type=Path, help="DICOM folder or index.parquet")
    parser.add_argument("out", metavar="OUT", type=Path, help="output folder")
    parser.add_argument(
        "--window",
        default="brain",
        help="preset (brain, subdural, stroke, soft_tissue, bone), C/W in HU (e.g. 40/80; a "
        "negative centre as --window=-600/1500), or a 3-window composite giving RGB (rsna3, "
        "brain_subdural_bone); default brain",
    )
    parser.add_argument(
        "--size", type=int, default=256, help="output side in px (square); 0 keeps native size"
    )
    parser.add_argument(
        "--head-only",
        action="store_true",
        help="set everything outside the head's outline to air first (the scanner's head "
        "holder, the table), as a model with input.dicom_head_only sees a DICOM",
    )
    parser.add_argument("--workers", type=int, help="processes (default: every core)")
    parser.add_argument(
        "--shard",
        default="0/1",
        metavar="i/n",
        help="convert only inputs i, i+n, i+2n... of the sorted list (0-based i); default 0/1",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` into ``args.out``; print the summary and every failure."""
    from hemo.cli import EXIT_PARTIAL, emit_json, printable_data
    from hemo.convert import CONVERTED, FAILED, SKIPPED, Shard, convert

    report = convert(
        args.src,
        args.out,
        window=args.window,
        size=args.size,
        workers=args.workers,
        shard=Shard.parse(args.shard),
        head_only=args.head_only,
    )
    summary = report.to_dict()
    if args.json:
        emit_json(summary)
    else:
        summary = printable_data(summary)
        lines = [
            f"{summary['total']} inputs (shard {summary['shard']}): {summary[CONVERTED]} "
            f"converted, {summary[SKIPPED]} already done, {summary[FAILED]} failed -> {args.out}"
        ]
        lines.extend(f"failed: {e['path']}: {e['error']}" for e in summary["errors"])
        sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_PARTIAL if report.failures else 0
