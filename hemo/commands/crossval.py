"""``hemo crossval --config FILE --folds 5 [--json] [--export models/NAME]``: k-fold CV.

Trains one model per fold through ``hemo train``'s code (runs ``<name>-cv0`` ...), pools the
out-of-fold predictions, chooses the operating threshold on them and reports per-fold and
mean/std accuracy, ROC AUC, sensitivity and specificity (see :mod:`hemo.crossval`). With
``--export`` it then trains the final model on every image with the same recipe and writes it
with a card carrying the cross-validated threshold and metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_FOLDS = 5
DEFAULT_FOLD_SEED = 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``crossval`` subcommand."""
    parser = subparsers.add_parser(
        "crossval",
        help="stratified k-fold cross-validation of a training config (optionally export)",
        description="Train one model per stratified fold with the training config, pool the "
        "out-of-fold predictions, choose the threshold on them and report per-fold and mean/std "
        "accuracy, ROC AUC, sensitivity and specificity. Nothing is selected on a held-out fold. "
        "--export then trains on every image and writes the model with the CV threshold/metrics.",
    )
    parser.add_argument("--config", required=True, type=Path, help="TOML, YAML or JSON config")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="number of folds")
    parser.add_argument(
        "--fold-seed", type=int, default=DEFAULT_FOLD_SEED, help="seed of the fold assignment"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, e.g. --set epochs=2); repeatable",
    )
    parser.add_argument(
        "--export", type=Path, help="also train on every image and write this model (+ card)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Cross-validate (and export); prints the report; returns 0."""
    from hemo.cli import emit_json
    from hemo.crossval import crossval, format_report, train_final
    from hemo.train import load_config_file, parse_overrides, resolve_config

    overrides = parse_overrides([f"--{item}" for item in args.overrides])
    config = resolve_config(load_config_file(args.config), overrides)
    # Keras progress lines go to stdout: keep them on stderr so --json stdout stays pure JSON
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        report = crossval(config, n_folds=args.folds, fold_seed=args.fold_seed)
        payload = report.to_dict()
        if args.export:
            written = train_final(config, report, args.export)
            payload["exported"] = str(written)
            log.info("final model written to %s", written)
    if args.json:
        emit_json(payload)
    else:
        sys.stdout.write(format_report(report) + "\n")
    return 0
