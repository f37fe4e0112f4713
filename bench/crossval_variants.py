"""Would flip TTA or an ensemble of recipes beat one model? Measured on cross-validation folds.

Takes finished ``hemo crossval`` runs (``runs/<NAME>-crossval/`` with its fold models
``runs/<NAME>-cv<k>/model.keras``) and, for every fold, predicts that fold's held-out images with
the fold's own model, plain and left-right flipped (the augmentation the models were trained with,
so a flipped scan is in distribution). From the pooled out-of-fold probabilities it reports, per
recipe, ROC AUC and accuracy at 0.5 plain and with flip TTA (mean of both), and for the ensemble
of all given recipes (mean of their plain probabilities). With ``--soup``, also one network per
fold whose weights are the mean of the recipes' fold models (a "model soup": one network, so one
Grad-CAM, at the cost of one model). Nothing is tuned on the held-out images.

Usage::

    python bench/crossval_variants.py --runs headct_real,headct_real_mask,headct_real_pretrained

Without ``--runs`` it takes the shipped model's members' runs when this machine has them (a fresh
clone has none: it then says so, prints ``{"skipped": reason}`` and exits 0).

Prints a table on stderr and, last, one JSON line on stdout with ``tta_auc_ratio`` (flip TTA over
plain, per recipe), ``ensemble_auc_ratio`` (ensemble over the best single recipe) and, with
``--soup``, ``soup_auc_ratio`` (soup over ensemble).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger("bench.crossval_variants")

PROJECT_DIR = Path(__file__).resolve().parent.parent
FIXED_THRESHOLD = 0.5
HELD_OUT_SPLIT = "val"
SHIPPED_CARD = PROJECT_DIR / "models" / "headct_real.json"


def _held_out(name: str, runs_dir: Path, k: int, spec):
    """(held-out rows of fold ``k`` of crossval run ``name``, their model inputs under ``spec``)."""
    import numpy as np

    from hemo.datasets import load_index
    from hemo.io import read_scan
    from hemo.preprocess import to_model_input

    index = load_index(runs_dir / f"{name}-crossval" / f"fold{k}")
    index = index[index["split"] == HELD_OUT_SPLIT]
    return index, np.stack([to_model_input(read_scan(p), spec) for p in index["path"]])


def _frame(index, k: int, **columns):
    """``DataFrame(path, y, fold, **columns)`` of one fold's held-out rows."""
    import pandas as pd

    return pd.DataFrame(
        {
            "path": [Path(p).name for p in index["path"]],
            "y": index["label_any"].astype(int).to_numpy(),
            "fold": k,
            **columns,
        }
    )


def _pooled(frames: list):
    """The folds' frames as one, in path order (the same order for every recipe)."""
    import pandas as pd

    return pd.concat(frames, ignore_index=True).sort_values("path").reset_index(drop=True)


def _report(name: str, runs_dir: Path) -> dict:
    """``crossval.json`` of crossval run ``name``."""
    report = json.loads((runs_dir / f"{name}-crossval" / "crossval.json").read_text())
    members = report["folds"][0]["run"].split(",")
    if len(members) > 1:
        bases = ",".join(run.rsplit("-cv", 1)[0] for run in members)
        raise SystemExit(
            f"{name} is an ensemble cross-validation; give its members: --runs {bases}"
        )
    return report


def held_out_predictions(name: str, runs_dir: Path):
    """``DataFrame(path, y, fold, plain, flipped)`` over every fold of crossval run ``name``."""
    import numpy as np

    from hemo.model import load_model

    frames = []
    for fold in _report(name, runs_dir)["folds"]:
        k = int(fold["fold"])
        model, card = load_model(runs_dir / fold["run"] / "model.keras")
        index, x = _held_out(name, runs_dir, k, card.input_spec)
        any_column = list(card.labels).index("any")
        plain = np.asarray(model(x, training=False))[:, any_column]
        flipped = np.asarray(model(np.ascontiguousarray(x[:, :, ::-1]), training=False))[
            :, any_column
        ]
        frames.append(_frame(index, k, plain=plain, flipped=flipped))
    return _pooled(frames)


def soup_predictions(names: list[str], runs_dir: Path):
    """``DataFrame(path, y, fold, soup)``: per fold, one network whose weights are the mean of
    the recipes' fold models (a uniform "model soup"; it needs the same architecture and input,
    and is only meaningful for fine-tunings from one initial network)."""
    import numpy as np

    from hemo.model import load_model

    frames = []
    for folds in zip(*(_report(n, runs_dir)["folds"] for n in names), strict=True):
        k = int(folds[0]["fold"])
        members = [load_model(runs_dir / fold["run"] / "model.keras") for fold in folds]
        model, card = members[0]
        if any(c.input_spec != card.input_spec or c.labels != card.labels for _, c in members):
            raise SystemExit(f"--soup: fold {k} models differ in input or labels")
        weights = [m.get_weights() for m, _ in members]
        model.set_weights([np.mean(ws, axis=0) for ws in zip(*weights, strict=True)])
        index, x = _held_out(names[0], runs_dir, k, card.input_spec)
        soup = np.asarray(model(x, training=False))[:, list(card.labels).index("any")]
        frames.append(_frame(index, k, soup=soup))
    return _pooled(frames)


def scores(y, p) -> dict[str, float]:
    """ROC AUC and accuracy at the fixed 0.5 threshold."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "accuracy_at_0_5": float(np.mean((np.asarray(p) >= FIXED_THRESHOLD) == np.asarray(y))),
    }


def shipped_member_runs(card_file: Path) -> list[str]:
    """The crossval runs of the shipped model's members, from its card's per-fold run names
    (``NAME_s0-cv0,NAME_s1-cv0,...`` -> ``NAME_s0``, ``NAME_s1``, ...); [] when it names none."""
    if not card_file.is_file():
        return []
    per_fold = json.loads(card_file.read_text()).get("metrics", {}).get("per_fold") or []
    if not per_fold:
        return []
    return [run.rsplit("-cv", 1)[0] for run in str(per_fold[0]["run"]).split(",")]


def main(argv: list[str] | None = None) -> int:
    """Score each recipe plain and with flip TTA, and the ensemble of the recipes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        default="",
        help="comma-separated crossval run names (default: the shipped model's members' runs, "
        "when this machine has them)",
    )
    parser.add_argument("--runs-dir", type=Path, default=PROJECT_DIR / "runs")
    parser.add_argument(
        "--soup",
        action="store_true",
        help="also score the mean of the recipes' weights, fold by fold (same initial network)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    names = [n for n in args.runs.split(",") if n]
    if not names:
        names = shipped_member_runs(SHIPPED_CARD)
        missing = [n for n in names if not (args.runs_dir / f"{n}-crossval").is_dir()]
        if not names or missing:
            # A fresh clone has no runs: say what would make them rather than fail make bench
            reason = (
                f"no --runs given and the shipped model's member runs are not in {args.runs_dir} "
                f"({', '.join(missing) or 'none named in its card'}); make them with the "
                "command in docs/MODELS.md (Reproduce) or give --runs"
            )
            log.info("%s", reason)
            print(json.dumps({"skipped": reason}))
            return 0
    predictions = {name: held_out_predictions(name, args.runs_dir) for name in names}
    first = predictions[names[0]]
    for name, frame in predictions.items():
        if list(frame["path"]) != list(first["path"]):
            parser.error(f"{name} was cross-validated on other images than {names[0]}")
    results: dict[str, dict] = {}
    log.info("%-28s %10s %10s %12s %12s", "recipe", "AUC", "acc@0.5", "TTA AUC", "TTA acc@0.5")
    for name, frame in predictions.items():
        plain = scores(frame["y"], frame["plain"])
        tta = scores(frame["y"], (frame["plain"] + frame["flipped"]) / 2)
        results[name] = {
            "plain": plain,
            "flip_tta": tta,
            "tta_auc_ratio": tta["roc_auc"] / plain["roc_auc"],
        }
        log.info(
            "%-28s %10.3f %10.3f %12.3f %12.3f",
            name,
            plain["roc_auc"],
            plain["accuracy_at_0_5"],
            tta["roc_auc"],
            tta["accuracy_at_0_5"],
        )
    summary: dict = {"n_images": len(first), "recipes": results}
    if len(names) > 1:
        mean = sum(frame["plain"] for frame in predictions.values()) / len(names)
        ensemble = scores(first["y"], mean)
        best = max(r["plain"]["roc_auc"] for r in results.values())
        summary["ensemble"] = ensemble
        summary["ensemble_auc_ratio"] = ensemble["roc_auc"] / best
        log.info(
            "%-28s %10.3f %10.3f",
            "ensemble (mean)",
            ensemble["roc_auc"],
            ensemble["accuracy_at_0_5"],
        )
    if args.soup and len(names) > 1:
        soup = soup_predictions(names, args.runs_dir)
        if list(soup["path"]) != list(first["path"]):
            parser.error("--soup: the recipes' held-out folds differ")
        summary["soup"] = scores(soup["y"], soup["soup"])
        summary["soup_auc_ratio"] = summary["soup"]["roc_auc"] / summary["ensemble"]["roc_auc"]
        log.info(
            "%-28s %10.3f %10.3f",
            "soup (mean of weights)",
            summary["soup"]["roc_auc"],
            summary["soup"]["accuracy_at_0_5"],
        )
    print(json.dumps(summary, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
