"""``hemo evaluate --model M --data D [--split test] [--cam METHOD] [--json]``: a model's report.

``D`` is a dataset folder (indexed on the fly) or an ``index.parquet``. The model is evaluated on
one split at its card's threshold (chosen on validation data when it was trained); see
:mod:`hemo.evaluate` for every metric's definition. ``--cam METHOD`` adds Grad-CAM localisation
and faithfulness scores (:func:`hemo.cam.metrics.cam_quality`) over the split's positive slices
with lesion masks; the dataset must have masks (e.g. ``hemo demo-data``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Metrics shown in the text table, in order.
TABLE_METRICS = (
    "accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
)
DEFAULT_SPLIT = "test"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="metrics of a model on a dataset split (optionally Grad-CAM quality)",
        description="Evaluate a model on one split of a dataset at its card's threshold: "
        "accuracy, sensitivity, specificity, PPV, NPV, F1, ROC AUC, PR AUC (average precision), "
        "Brier, calibration (ECE, 10 bins), "
        "confusion matrix, curves, per-label and study-level results, RSNA weighted log loss. "
        "Research tool, not a medical device: these figures describe the data measured on.",
    )
    parser.add_argument("--model", required=True, type=Path, help="models/NAME.keras (card beside)")
    parser.add_argument("--data", required=True, type=Path, help="dataset folder or index.parquet")
    parser.add_argument(
        "--split",
        default=DEFAULT_SPLIT,
        choices=("train", "val", "test", "all"),
        help="default: test; 'all' evaluates every row (a dataset the model never saw)",
    )
    parser.add_argument("--cam", metavar="METHOD", help="also score a CAM method (e.g. gradcam)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout only")
    parser.set_defaults(func=run)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _text(data: dict[str, Any]) -> str:
    """A human-readable table of a report dict (``EvalReport.to_dict`` plus ``cam``)."""
    c = data["confusion"]
    from hemo.config import NOTICE

    lines = [
        NOTICE,
        f"model {data['model']}  split {data['split']}  n {data['n']}  positives "
        f"{data['positives']}  threshold {data['threshold']:.3f}",
        "",
        f"{'metric':<14}{'any':>10}",
    ]
    per_label = data["per_label"]
    labels = [k for k in per_label if k != "any"]
    if labels:
        lines[-1] += "".join(f"{k[:10]:>12}" for k in labels)
    for key in TABLE_METRICS:
        row = f"{key:<14}{_fmt(data[key]):>10}"
        row += "".join(f"{_fmt(per_label[k][key]):>12}" for k in labels)
        lines.append(row)
    lines += [
        "",
        f"confusion   called 0  called 1\n  truth 0 {c['tn']:>10}{c['fp']:>10}\n"
        f"  truth 1 {c['fn']:>10}{c['tp']:>10}",
    ]
    ci = {k: v for k, v in data.get("ci95", {}).items() if v is not None}
    if ci:
        lines.append(
            "95 % CI (stratified bootstrap): "
            + "  ".join(f"{k} {lo:.3f}-{hi:.3f}" for k, (lo, hi) in ci.items())
        )
    referral = data.get("referral")
    if referral:
        band = referral["band"]
        lines.append(
            f"referral band {band['low']:.3f}-{band['high']:.3f}: {referral['referred']} of "
            f"{referral['n']} referred ({referral['errors_referred']} of the {referral['errors']}"
            f" errors); the {referral['decided']} decided: accuracy {_fmt(referral['accuracy'])}"
            f"  sensitivity {_fmt(referral['sensitivity'])}  specificity "
            f"{_fmt(referral['specificity'])}"
        )
    if data["rsna_log_loss"] is not None:
        lines.append(f"RSNA weighted log loss {data['rsna_log_loss']:.4f}")
    for key, title in (("study_max", "max"), ("study_top_k", f"top-{data['top_k']} mean")):
        study = data[key]
        if study is not None:
            lines.append(
                f"study level ({title}, {study['n']} studies): accuracy {_fmt(study['accuracy'])}"
                f"  sensitivity {_fmt(study['sensitivity'])}  specificity "
                f"{_fmt(study['specificity'])}  ROC AUC {_fmt(study['roc_auc'])}"
            )
    if data["n_failed"]:
        lines.append(f"{data['n_failed']} image(s) could not be read: {data['failed'][0]}")
    for note in data["notes"]:
        lines.append(f"note: {note}")
    cam = data.get("cam")
    if cam:
        lines.append("")
        lines.append(
            f"CAM {cam.get('method')} on {cam.get('n_slices')} positive slice(s) with masks:"
        )
        for key in ("pointing_game", "energy_in_mask", "iou_topk", "flat_fraction"):
            lines.append(f"  {key:<16}{_fmt(cam.get(key))}")
    return "\n".join(lines)


def _has_masks(index_df: Any, split: str) -> bool:
    if "mask_path" not in index_df.columns:
        return False
    rows = index_df if split == "all" else index_df.loc[index_df["split"] == split]
    return bool(rows["mask_path"].notna().any())


def run(args: argparse.Namespace) -> int:
    """Load the model and the index, evaluate, print JSON or a table; exit 1 when some images
    could not be read (they are left out of the metrics and counted in ``n_failed``)."""
    from hemo.cli import EXIT_PARTIAL, emit_json, printable_data
    from hemo.config import NOTICE
    from hemo.errors import ConfigError, DatasetError
    from hemo.modelfile import check_model_file

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.cam:
        from hemo.cam.registry import METHODS

        if args.cam not in METHODS:
            raise ConfigError(
                f"--cam: unknown CAM method {args.cam!r}; choose one of {sorted(METHODS)}"
            )
    check_model_file(args.model)  # a wrong --model is named before TensorFlow or the dataset
    from hemo.datasets import load_index

    index_df = load_index(args.data)  # a wrong --data too (TensorFlow starts with hemo.evaluate)
    if args.cam and not _has_masks(index_df, args.split):
        raise DatasetError(
            f"--cam needs lesion masks (a mask_path column) in the {args.split!r} split; this "
            "dataset has none (phantoms from hemo demo-data have them)",
            source=args.data,
        )
    from hemo.evaluate import evaluate_model, training_lookalikes, training_overlap
    from hemo.model import load_model

    model, card = load_model(args.model)
    report = evaluate_model(model, card, index_df, split=args.split, batch_size=args.batch_size)
    overlap = training_overlap(card, args.data, args.split)
    lookalikes = None if overlap else training_lookalikes(card, index_df, args.split)
    if lookalikes:
        overlap = lookalikes[0]
    if overlap:
        log.warning("%s: %s", args.model, overlap)
        report = dataclasses.replace(report, notes=(*report.notes, overlap))
    data = {"notice": NOTICE, **report.to_dict()}
    data["training_lookalikes"] = lookalikes[1] if lookalikes else None
    data["data"] = str(args.data)
    data["cam"] = None
    if args.cam:
        from hemo.cam.metrics import cam_quality

        try:
            cam_split = None if args.split == "all" else args.split
            data["cam"] = cam_quality(model, card, index_df, method=args.cam, split=cam_split)
        except ValueError as exc:  # a label the model does not output, named in the message
            raise ConfigError(f"--cam {args.cam}: {exc}") from exc
    if args.json:
        emit_json(data)
    else:
        print(_text(printable_data(data)))
    return EXIT_PARTIAL if data["n_failed"] else 0


__all__ = ["register", "run"]
