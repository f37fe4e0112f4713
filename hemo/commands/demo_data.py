"""``hemo demo-data --out DIR``: a synthetic phantom dataset in the RSNA-2019 layout.

Writes ``stage_2_train.csv``, ``stage_2_train/ID_<id>.dcm``, ``masks/ID_<id>.png`` and
``index.parquet`` under ``DIR`` (see :func:`hemo.phantom.write_demo_dataset`). Same arguments,
same bytes. Progress goes to stderr; with ``--json`` stdout carries only the summary.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hemo.config import DEFAULT_SEED

#: Defaults of the command (``make run`` uses ``--n 24 --seed 0``).
DEFAULT_STUDIES = 24
DEFAULT_SLICES_PER_STUDY = 6
DEFAULT_SIZE_PX = 512
#: Largest slice side: a 2048 px slice takes ~2 s and ~0.9 GB to draw, and the cost grows with
#: the square of the side (real CT is 512 px; ``hemo convert`` stops at 4096).
MAX_SIZE_PX = 2048

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo-data`` subcommand."""
    parser = subparsers.add_parser(
        "demo-data",
        help="write a synthetic phantom dataset (RSNA layout + masks)",
        description="Write synthetic head-CT phantoms with the five RSNA hemorrhage subtypes as "
        "CT DICOM in the RSNA-2019 layout, one subtype bitmask PNG per slice, and an "
        "index.parquet split by patient. Same seed, same bytes.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument(
        "--n", type=int, default=DEFAULT_STUDIES, help=f"studies (default {DEFAULT_STUDIES})"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})"
    )
    parser.add_argument(
        "--slices-per-study",
        type=int,
        default=DEFAULT_SLICES_PER_STUDY,
        help=f"slices per study (default {DEFAULT_SLICES_PER_STUDY})",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE_PX,
        help=f"slice side in pixels, at most {MAX_SIZE_PX} (default {DEFAULT_SIZE_PX}, the size "
        "the shipped phantom_rsna3 was trained and tested at; the same head at another size "
        "has another pixel spacing and texture, on which that model does not hold: at 128 px "
        "it called every slice of 8 studies positive)",
    )
    parser.add_argument(
        "--skull-base",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of studies whose slices start at the skull base: orbits, sinuses, "
        "petrous ridges and partial-volume bone that looks like blood (default 0)",
    )
    parser.add_argument(
        "--vertex",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of studies whose slices end at the top of the head, where the skull is "
        "cut tangentially (default 0; at most 1 - skull-base)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset and report its counts; returns the exit status."""
    from hemo.cli import emit_json
    from hemo.errors import ConfigError
    from hemo.phantom import (
        DEFAULT_POSITIVE_FRACTION,
        check_dataset_args,
        summarize,
        write_demo_dataset,
    )

    if args.size > MAX_SIZE_PX:
        raise ConfigError(f"--size must be at most {MAX_SIZE_PX} px, got {args.size}")
    # every argument checked before the folder exists: a refused command leaves nothing behind
    check_dataset_args(
        args.n,
        args.slices_per_study,
        args.size,
        DEFAULT_POSITIVE_FRACTION,
        args.skull_base,
        args.vertex,
    )
    _make_out(args.out)
    try:
        index = write_demo_dataset(
            args.out,
            n_studies=args.n,
            seed=args.seed,
            slices_per_study=args.slices_per_study,
            size=args.size,
            progress=True,
            skull_base=args.skull_base,
            vertex=args.vertex,
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot write the dataset there: {exc.strerror or exc}", exc.filename or args.out
        ) from exc
    summary = {"out": str(args.out.resolve()), "seed": args.seed, **summarize(index)}
    if args.json:
        emit_json(summary)
    else:
        positives = ", ".join(f"{k} {v}" for k, v in summary["positives"].items())
        splits = ", ".join(f"{k} {v}" for k, v in summary["split_studies"].items())
        log.info(
            "%d studies, %d slices in %s; positive slices: %s; studies per split: %s",
            summary["studies"],
            summary["slices"],
            summary["out"],
            positives,
            splits,
        )
    return 0


def _make_out(out: Path) -> None:
    """Create the ``--out`` folder, or refuse it with one line naming it, before any drawing.

    Raises:
        ConfigError: ``out`` is a file, lies under one, or cannot be created.
    """
    from hemo.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError("--out is a file; give a folder for the dataset", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder: {exc.strerror or exc}", out) from exc
