"""``hemo index DIR``: detect a dataset's layout, build its index, print the counts.

Exit status: 0 when every file was indexed, 1 when some files were unreadable (they are listed),
2 when the folder cannot be indexed at all. Other findings (label rows without image, images
without label) are printed as problems but do not change the exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Problem kinds that count as failed inputs for the exit status.
FAILED_KINDS: frozenset[str] = frozenset({"unreadable"})


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``index`` subcommand."""
    parser = subparsers.add_parser(
        "index",
        help="detect a dataset's layout, build its index, print counts",
        description="Detect the layout of DIR (RSNA, phantom, Kaggle head-CT, CQ500, manifest, "
        "class folders), build the index table with a patient-grouped, label-stratified split and "
        "print the counts per label and split. Writes Parquet only with --out.",
    )
    parser.add_argument("root", metavar="DIR", type=Path, help="dataset folder or manifest CSV")
    parser.add_argument("--out", type=Path, help="write the index here (FILE.parquet)")
    parser.add_argument(
        "--layout",
        help="skip detection: phantom, rsna, kaggle_head_ct, cq500, manifest or folders",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="default 0.15")
    parser.add_argument("--test-fraction", type=float, default=0.15, help="default 0.15")
    parser.add_argument("--workers", type=int, help="processes reading headers (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def _payload(result: Any) -> dict[str, Any]:
    """The JSON shape of an index result."""
    from hemo.datasets import summarize

    summary = summarize(result.frame)
    return {
        "root": str(result.root),
        "layout": result.layout,
        "total": summary["total"],
        "labels": summary["labels"],
        "splits": summary["splits"],
        "problems": [p.to_dict() for p in result.problems],
    }


def _print_text(payload: dict[str, Any], out: Path | None) -> None:
    """Human-readable counts on stdout."""
    from hemo.cli import printable_data

    payload = printable_data(payload)
    lines = [
        f"root:   {payload['root']}",
        f"layout: {payload['layout']}",
        f"total:  {payload['total']}",
        "labels (positive / negative / unknown):",
    ]
    for label, counts in payload["labels"].items():
        lines.append(
            f"  {label:<17} {counts['positive']:>7} {counts['negative']:>9} {counts['unknown']:>9}"
        )
    lines.append("splits (images / positive):")
    for split, counts in payload["splits"].items():
        lines.append(f"  {split:<17} {counts['total']:>7} {counts['positive']:>9}")
    if payload["problems"]:
        lines.append(f"problems: {len(payload['problems'])}")
        lines.extend(f"  {p['kind']}: {p['path']}: {p['reason']}" for p in payload["problems"])
    if out is not None:
        lines.append(f"written: {out}")
    sys.stdout.write("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    """Build the index of ``args.root``; print counts; write Parquet with ``--out``."""
    from hemo.cli import EXIT_PARTIAL, emit_json
    from hemo.datasets import index_dataset, save_index
    from hemo.datasets.index import check_index_path

    if args.out is not None:
        check_index_path(args.out)  # a bad --out fails before any header is read
    result = index_dataset(
        args.root,
        layout=args.layout,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        workers=args.workers,
    )
    if args.out is not None:
        save_index(result.frame, args.out)
        log.info("wrote %s", args.out)
    _warn_if_the_saved_index_differs(result, args.root, args.out)
    payload = _payload(result)
    _warn_of_empty_splits(payload, result.frame)
    if args.json:
        emit_json(payload)
    else:
        _print_text(payload, args.out)
    failed = [p for p in result.problems if p.kind in FAILED_KINDS]
    return EXIT_PARTIAL if failed else 0


def _warn_of_empty_splits(payload: dict[str, Any], frame: Any) -> None:
    """Say so when val or test is empty (one patient's images never straddle splits, so a
    single study or patient gives train only): hemo train and hemo evaluate need them."""
    empty = [name for name, counts in payload["splits"].items() if not counts["total"]]
    if not empty or not payload["total"]:
        return
    patients = ""
    if "patient_id" in frame.columns and frame["patient_id"].notna().any():
        patients = f" from {frame['patient_id'].nunique()} patient(s)"
    log.warning(
        "%s: no %s images: the %d images%s are split by patient, and hemo train needs val "
        "images (hemo evaluate a test split, or --split all)",
        payload["root"],
        " or ".join(repr(name) for name in empty),
        payload["total"],
        patients,
    )


def _warn_if_the_saved_index_differs(result, root: Path, out: Path | None) -> None:
    """Say so when ``root`` holds an ``index.parquet`` (which training, evaluation and the pages
    read) whose splits differ from the ones just printed and that was not just overwritten."""
    import pandas as pd

    from hemo.datasets import load_index
    from hemo.datasets.index import INDEX_FILE
    from hemo.errors import HemoError

    saved = Path(root) / INDEX_FILE
    if not saved.is_file() or (out is not None and Path(out).resolve() == saved.resolve()):
        return
    try:
        before = load_index(saved)
    except (HemoError, OSError) as exc:  # an unreadable old index is the user's to replace
        log.warning("%s: cannot be read (%s); hemo reads it in place of this folder", saved, exc)
        return
    fresh = result.frame[["path", "split"]].astype(str)
    kept = before[["path", "split"]].astype(str)
    merged = pd.merge(fresh, kept, on="path", how="outer", suffixes=("", "_saved"))
    moved = int((merged["split"] != merged["split_saved"]).sum())
    if moved:
        log.warning(
            "%s exists and is what training, evaluation and the pages read; its splits differ "
            "from the ones printed here for %d image(s) (write this index there with --out %s)",
            saved,
            moved,
            saved,
        )
