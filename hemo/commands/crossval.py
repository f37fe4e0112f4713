"""``hemo crossval --config FILE --folds 5 [--seeds 0,1,2] [--json] [--export models/NAME]``.

Trains one model per fold through ``hemo train``'s code (runs ``<name>-cv0`` ...), pools the
out-of-fold predictions, chooses the operating threshold on them and reports per-fold and
mean/std accuracy, ROC AUC, sensitivity and specificity (see :mod:`hemo.crossval`). With
``--export`` it then trains the final model on every image with the same recipe and writes it
with a card carrying the cross-validated threshold and metrics.

Images that look alike (the same picture at another size, neighbouring slices of one head) are
kept in one fold when the set has no patient ids (``--lookalike``, :mod:`hemo.lookalike`).

With ``--seeds`` it does that once per seed (runs ``<name>_s<seed>-cv0`` ...) and reports the
ensemble of those models (the mean of their logits) on the same folds; ``--export`` then trains
one final model per seed and writes them merged into one model. Finished runs of the same
recipe are reused, so a stopped command goes on where it stopped when run again.
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
#: hemo.lookalike.DEFAULT_THRESHOLD (not imported: the parser is built without numpy).
DEFAULT_LOOKALIKE = 0.93


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
        "--lookalike",
        type=float,
        default=DEFAULT_LOOKALIKE,
        metavar="CORRELATION",
        help="keep look-alike images (the same picture at another size, neighbouring slices of "
        "one head; found from the pixels when the set has no patient ids) in one fold: images "
        f"whose head crops correlate at least this much (default {DEFAULT_LOOKALIKE}); 0 "
        "groups by patient id alone",
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
        "--seeds",
        type=_seed_list,
        help="comma-separated seeds (e.g. 0,1,2,3,4): cross-validate one model per seed and "
        "report (and --export) their ensemble, the mean of their logits",
    )
    parser.add_argument(
        "--export", type=Path, help="also train on every image and write this model (+ card)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.set_defaults(func=run)


def _seed_list(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2) (argparse type); an empty item (``0,,1``, ``0,1,``) or a
    negative seed is refused, not dropped."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"seeds must be integers like 0,1,2, got {text!r}"
        ) from exc
    if any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be 0 or more, got {text!r}")
    return seeds


def run(args: argparse.Namespace) -> int:
    """Cross-validate (and export); prints the report; returns 0."""
    from hemo.cli import emit_json
    from hemo.crossval import (
        check_crossval_config,
        check_folds,
        check_seeds,
        crossval,
        crossval_ensemble,
        format_report,
        train_final,
        train_final_ensemble,
    )
    from hemo.errors import ConfigError
    from hemo.train import check_export, load_config_file, parse_overrides, resolve_config

    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=2")
    overrides = parse_overrides([f"--{item}" for item in args.overrides])
    config = resolve_config(load_config_file(args.config), overrides)
    check_crossval_config(config)
    check_folds(args.folds)  # before the dataset is indexed
    seeds = check_seeds(args.seeds) if args.seeds is not None else None
    if args.export:
        check_export(args.export, config["data"])  # before any fold is trained
    # Keras progress lines go to stdout: keep them on stderr so --json stdout stays pure JSON
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    members = []
    with quiet:
        if seeds is None:
            report = crossval(config, args.folds, args.fold_seed, args.lookalike)
        else:
            report, members = crossval_ensemble(
                config, seeds, args.folds, args.fold_seed, args.lookalike
            )
        payload = report.to_dict()
        if members:
            payload["members"] = [
                _member_summary(seed, m) for seed, m in zip(seeds, members, strict=True)
            ]
        if args.export:
            if seeds is None:
                written = train_final(config, report, args.export)
            else:
                written = train_final_ensemble(config, seeds, report, args.export)
            payload["exported"] = str(written)
            log.info("final model written to %s", written)
    if args.json:
        emit_json(payload)
    else:
        for seed, member in zip(seeds or (), members, strict=False):
            sys.stdout.write(f"member seed {seed}: {_member_line(member)}\n")
        if members:
            sys.stdout.write(f"ensemble of {len(members)} (mean logit):\n")
        sys.stdout.write(format_report(report) + "\n")
    return 0


def _member_summary(seed: int, report) -> dict:
    """One ensemble member in ``--json``: its seed, name, threshold and summary metrics."""
    return {
        "seed": seed,
        "name": report.name,
        "threshold": report.threshold,
        "summary": report.summary,
        "pooled": report.pooled,
    }


def _member_line(report) -> str:
    """One member in the text report: mean accuracy and AUC over folds, pooled AUC."""
    acc, auc = report.summary["accuracy"]["mean"], report.summary["roc_auc"]["mean"]
    return (
        f"accuracy {acc:.3f}, ROC AUC {auc:.3f} (mean over folds), "
        f"pooled ROC AUC {report.pooled.get('roc_auc', float('nan')):.3f}"
    )
