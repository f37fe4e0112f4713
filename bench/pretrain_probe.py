"""How much does a pre-trained network already know about the real images? A linear probe.

For each given model (e.g. phantom pre-trainings, ``runs/<name>/model.keras``), the real Kaggle
images go through its input path and its Grad-CAM layer; the feature maps are pooled (global
average, global max, or both side by side) and a standardised L2 logistic regression is fitted on
four folds and scored on the fifth, over the same fixed folds ``hemo crossval`` uses
(``StratifiedGroupKFold(5, shuffle=True, random_state=0)``). The network itself is not trained,
so this measures the features a pre-training gives before fine-tuning can change them, in
seconds rather than the 15 minutes of a cross-validation. The zero-shot ROC AUC of the model's own
``any`` output is reported too.

Usage::

    python bench/pretrain_probe.py runs/phantom_display_large/model.keras \\
        runs/phantom_display_appear/model.keras

Without arguments it probes ``runs/phantom_display_large/model.keras`` (the shipped recipe's
pre-training) when that run is on the machine, and otherwise prints ``{"skipped": reason}`` and
exits 0, so ``make bench`` goes on.

Prints a table on stderr and, last, one JSON line on stdout: per model its zero-shot AUC and
probe AUCs (pooled out-of-fold), and ``probe_auc_ratio``: each model's mean probe AUC over the
nine pooling/C settings (none picked on the held-out folds) divided by the first model's (the
baseline, measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger("bench.pretrain_probe")

DEFAULT_DATA = "../shared/data/head_ct"
#: The shipped recipe's phantom pre-training (docs/MODELS.md, Reproduce).
DEFAULT_MODEL = "runs/phantom_display_large/model.keras"
POOLINGS = ("average", "max", "both")
#: Inverse L2 strengths tried (each reported; none chosen on the held-out folds).
C_VALUES = (0.01, 0.1, 1.0)


def features(model_path: Path, paths):
    """``(zero-shot P(any), {pooling: (N, F) features})`` of ``paths`` through the model."""
    import keras
    import numpy as np

    from hemo.io import read_scan
    from hemo.model import load_model
    from hemo.preprocess import to_model_input

    model, card = load_model(model_path)
    x = np.stack([to_model_input(read_scan(p), card.input_spec) for p in paths])
    maps = np.asarray(
        keras.Model(model.input, model.get_layer(card.cam_layer).output)(x, training=False)
    )
    any_column = list(card.labels).index("any")
    zero_shot = np.asarray(model(x, training=False))[:, any_column]
    average, largest = maps.mean(axis=(1, 2)), maps.max(axis=(1, 2))
    pooled = {"average": average, "max": largest, "both": np.concatenate([average, largest], 1)}
    return zero_shot, pooled


def probe(x, y, folds, c: float):
    """Out-of-fold probabilities of a standardised logistic regression with inverse L2 ``c``."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = np.zeros(len(y))
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        out[test] = clf.fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return out


def main(argv: list[str] | None = None) -> int:
    """Probe each model's features on the fixed folds; print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "models",
        nargs="*",
        type=Path,
        help=f".keras models, the first the baseline (default: {DEFAULT_MODEL}, the shipped "
        "recipe's phantom pre-training, when it is there)",
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help="labelled images (Kaggle head_ct)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    from sklearn.metrics import roc_auc_score

    from hemo.crossval import DEFAULT_FOLD_SEED, DEFAULT_FOLDS, assign_folds
    from hemo.datasets import load_index
    from hemo.train import resolve_path

    data = resolve_path(args.data)
    if not args.models:
        # make bench runs every script bare: without the run or the data, say what is missing
        default = resolve_path(DEFAULT_MODEL)
        missing = [str(p) for p in (default, data) if not p.exists()]
        if missing:
            reason = (
                f"no models given and {', '.join(missing)} not here; make the pre-training with "
                "the command in docs/MODELS.md (Reproduce) or give model files"
            )
            log.info("%s", reason)
            print(json.dumps({"skipped": reason}))
            return 0
        args.models = [default]
    for path in args.models:
        if not path.is_file():
            parser.error(f"{path}: no such model file")
    if len(set(map(str, args.models))) != len(args.models):
        parser.error("a model is given twice: each is reported under its path")
    if not data.exists():
        parser.error(f"{data}: no such dataset (the real Kaggle images live in ../shared/data)")
    index = load_index(data).reset_index(drop=True)
    folds = assign_folds(index, DEFAULT_FOLDS, DEFAULT_FOLD_SEED)
    y = index["label_any"].astype(int).to_numpy()
    results: dict[str, dict] = {}
    log.info(
        "%-44s %9s  %s",
        "model",
        "zero-shot",
        "  ".join(f"{p}@C={c}" for p in POOLINGS for c in C_VALUES),
    )
    for path in args.models:
        zero_shot, pooled = features(path, list(index["path"]))
        probes = {
            f"{pooling}_c{c}": float(roc_auc_score(y, probe(pooled[pooling], y, folds, c)))
            for pooling in POOLINGS
            for c in C_VALUES
        }
        results[str(path)] = {
            "zero_shot_auc": float(roc_auc_score(y, zero_shot)),
            "probe_auc": probes,
            "mean_probe_auc": sum(probes.values()) / len(probes),
        }
        log.info(
            "%-44s %9.3f  %s",
            path,
            results[str(path)]["zero_shot_auc"],
            "  ".join(f"{v:.3f}" for v in probes.values()),
        )
    baseline = results[str(args.models[0])]["mean_probe_auc"]
    summary = {
        "n_images": len(index),
        "folds": DEFAULT_FOLDS,
        "models": results,
        "probe_auc_ratio": {name: r["mean_probe_auc"] / baseline for name, r in results.items()},
    }
    print(json.dumps(summary, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
