"""Do density features add to the networks? Out-of-fold, on the folds a crossval used.

:mod:`hemo.density` measures, without learning, how much of the inside of the skull is
brighter than the brain and how lopsided the slice is. This script takes a finished
``hemo crossval`` (its ``oof.csv``: every image's out-of-fold probability and fold) and, on the
same folds, fits per fold:

- ``density``: a logistic regression over the density features of the training folds' images,
  scored on the held-out fold;
- ``stack``: a logistic regression over the same features plus the network's out-of-fold logit
  (the training folds' OOF logits, each from a model that did not see that image), scored on the
  held-out fold with the held-out images' OOF logits;
- ``mean``: the mean of the network's logit and the density logit (nothing fitted on top).

The regressions' settings are fixed in advance (:data:`hemo.density.DEFAULT_C`, standardised
inputs), never chosen on a held-out fold. Every figure is pooled over the folds, the threshold
chosen once on the pooled predictions (Youden, as ``hemo crossval`` does) and the accuracy at
it reported with sensitivity, specificity and the images called wrong. (The network's OOF logits
of the training folds come from fold models that saw the held-out fold: the usual stacking
compromise, a mild optimism of the ``stack`` row.)

The features are measured on the gray channel of the model input of ``--card``'s input spec
(the shipped real-scan model's by default: 96 px, head crop); ``--side 192`` measures on the same
crop drawn at 192 px, the size the features were designed at.

Usage::

    python bench/density_stack.py --crossval runs/headct_real_asym_ema99-crossval

Prints a table on stderr and, last, one JSON line on stdout with every variant's figures and
``auc_ratio`` (each variant's pooled AUC over the network's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger("bench.density_stack")

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_CARD = PROJECT_DIR / "models" / "headct_real.json"
PROB_EPS = 1e-6


def model_inputs(paths, card: Path, side: int | None):
    """Every image in the geometry of ``card``'s model input: its gray channel, or at ``side``
    pixels the same crop drawn sharper (:func:`hemo.preprocess.input_view`)."""
    import numpy as np

    from hemo.io import read_scan
    from hemo.preprocess import InputSpec, input_view, to_model_input

    spec = InputSpec.from_dict(json.loads(card.read_text())["input_spec"])
    if side is None:
        return np.stack([to_model_input(read_scan(p), spec)[..., 0] for p in paths])
    return np.stack([input_view(read_scan(p), spec, side) for p in paths])


def pooled(y, score, ids):
    """Pooled AUC, the Youden threshold's accuracy/sensitivity/specificity, and the errors."""
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, thresholds = roc_curve(y, score)
    best = int(np.argmax(tpr - fpr))
    called = score >= thresholds[best]
    wrong = [ids[i] for i in np.flatnonzero(called != y.astype(bool))]
    return {
        "auc": round(float(roc_auc_score(y, score)), 4),
        "accuracy": round(float((called == y.astype(bool)).mean()), 4),
        "sensitivity": round(float(called[y == 1].mean()), 4),
        "specificity": round(float((~called[y == 0]).mean()), 4),
        "errors": sorted(wrong),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crossval", type=Path, required=True, help="a hemo crossval folder")
    parser.add_argument("--card", type=Path, default=DEFAULT_CARD, help="whose input spec")
    parser.add_argument(
        "--side",
        type=int,
        default=None,
        help="measure on the input's crop drawn at this many pixels (default: the model input)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    import numpy as np
    import pandas as pd

    from hemo.density import FEATURE_NAMES, DensityModel, many_features

    oof = pd.read_csv(args.crossval / "oof.csv")
    y = oof["label_any"].to_numpy(dtype=int)
    folds = oof["fold"].to_numpy(dtype=int)
    ids = [Path(p).stem for p in oof["path"]]
    column = "probability_network" if "probability_network" in oof else "probability"
    p = np.clip(oof[column].to_numpy(dtype=float), PROB_EPS, 1 - PROB_EPS)
    network = np.log(p / (1 - p))
    feats = many_features(model_inputs(oof["path"], args.card, args.side))
    density = np.zeros(len(y))
    stack = np.zeros(len(y))
    both = np.column_stack([feats, network])
    names = (*FEATURE_NAMES, "network_logit")
    for fold in np.unique(folds):
        train, held = folds != fold, folds == fold
        density[held] = DensityModel.fit(feats[train], y[train]).logit(feats[held])
        stack[held] = DensityModel.fit(both[train], y[train], names).logit(both[held])
    variants = {
        "network": network,
        "density": density,
        "mean": (network + density) / 2,
        "stack": stack,
    }
    results = {name: pooled(y, score, ids) for name, score in variants.items()}
    base = results["network"]["auc"]
    log.info("%-8s %6s %6s %6s %6s  errors", "variant", "AUC", "acc", "sens", "spec")
    for name, r in results.items():
        r["auc_ratio"] = round(r["auc"] / base, 4)
        log.info(
            "%-8s %6.3f %6.3f %6.3f %6.3f  %s",
            name,
            r["auc"],
            r["accuracy"],
            r["sensitivity"],
            r["specificity"],
            " ".join(r["errors"]),
        )
    print(
        json.dumps({"crossval": str(args.crossval), "side": args.side, "images": len(y), **results})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
