"""Does the model hold when the same held-out images come exported another way?

The real-scan model is judged on head CT images it has never seen, and those come from other
sites and tools: another JPEG quality, another size, a wider field of view with a black border,
a film's gray frame, another display curve or window level, a tilted head. This bench takes a
finished ``hemo crossval`` run (one recipe, or a seed ensemble from ``--seeds``), and predicts
every fold's held-out images with that fold's own model(s) (an ensemble fold's members merged as
``--export`` merges them), once as stored and once through each of a fixed set of
re-exports. Every re-export is encoded to PNG (JPEG for the JPEG one) and read back through
``hemo.io.read_scan``, the path an upload takes, so the whole preprocessing (head crop included)
sees it. Nothing is tuned on the held-out images: the threshold is the run's pooled OOF one,
chosen on the images as stored.

Per re-export it reports the pooled out-of-fold ROC AUC, the accuracy at the run's threshold,
how many verdicts differ from the ones on the stored images, and the mean absolute change in
probability.

Without ``--runs`` (a fresh clone has no runs) it predicts the images of ``--data`` (default the
real Kaggle set in ``../shared/data``) with the shipped ``--model`` at its card's threshold. The
shipped model was trained on those very images, so its AUC and accuracy there say nothing about
accuracy (``"held_out": false`` in the JSON); the verdicts changed and the probability changes
still measure how stable it is to the re-exports.

Usage::

    python bench/export_robustness.py --runs headct_real_asym_ema99   # held-out fold models
    python bench/export_robustness.py                                  # the shipped model

Prints a table on stderr and, last, one JSON line on stdout with ``<re-export>_auc_ratio`` (its
pooled AUC over the stored images' AUC, measured in the same run) for each re-export, and
``min_auc_ratio``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np

log = logging.getLogger("bench.export_robustness")

PROJECT_DIR = Path(__file__).resolve().parent.parent
JPEG_QUALITY = 50
BORDER = 0.25  # black border on each side, as a share of the image's size
FRAME = 0.08  # gray frame on each side
FRAME_GRAY = 128
LEVEL_SHIFT = 20  # gray levels of 255
CONTRAST = 0.8
TILT_DEGREES = 10.0
NOISE_SD = 5.0  # gray levels of 255
SEED = 0


def _resize(scale: float) -> Callable[[np.ndarray], np.ndarray]:
    def resize(image: np.ndarray) -> np.ndarray:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        return cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation)

    return resize


def _pad(share: float, value: int) -> Callable[[np.ndarray], np.ndarray]:
    def pad(image: np.ndarray) -> np.ndarray:
        top, left = (round(share * n) for n in image.shape[:2])
        fill = (value,) * (image.shape[2] if image.ndim == 3 else 1)
        return cv2.copyMakeBorder(image, top, top, left, left, cv2.BORDER_CONSTANT, value=fill)

    return pad


def _curve(gamma: float = 1.0, gain: float = 1.0, shift: float = 0.0):
    """A display curve applied to the gray levels: gamma first, then gain about mid-gray, then
    a level shift; clipped to 0-255."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    table = 255.0 * levels**gamma
    table = np.clip((table - 127.5) * gain + 127.5 + shift, 0, 255).round().astype(np.uint8)

    def curve(image: np.ndarray) -> np.ndarray:
        return cv2.LUT(image, table)

    return curve


def _tilt(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), TILT_DEGREES, 1.0)
    return cv2.warpAffine(image, turn, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)


def _noise(image: np.ndarray) -> np.ndarray:
    # One seed per image size, so a rerun adds the same noise
    rng = np.random.default_rng(SEED + image.size)
    noise = rng.normal(0.0, NOISE_SD, image.shape[:2])
    if image.ndim == 3:
        noise = noise[..., None]  # the same in every channel: the gray image stays gray
    noisy = image.astype(np.float64) + noise
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def _gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


#: name -> (change to the decoded pixels, file format written)
REEXPORTS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "jpeg_q50": (lambda image: image, ".jpg"),
    "half_size": (_resize(0.5), ".png"),
    "double_size": (_resize(2.0), ".png"),
    "black_border": (_pad(BORDER, 0), ".png"),
    "gray_frame": (_pad(FRAME, FRAME_GRAY), ".png"),
    "gamma_0.8": (_curve(gamma=0.8), ".png"),
    "gamma_1.25": (_curve(gamma=1.25), ".png"),
    "level_up": (_curve(shift=LEVEL_SHIFT), ".png"),
    "level_down": (_curve(shift=-LEVEL_SHIFT), ".png"),
    "contrast_0.8": (_curve(gain=CONTRAST), ".png"),
    "tilt_10": (_tilt, ".png"),
    "noise_5": (_noise, ".png"),
    "single_channel": (_gray, ".png"),
}


def reexport(path: Path, name: str) -> bytes:
    """The file at ``path`` decoded, changed as re-export ``name`` says and encoded again."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SystemExit(f"{path}: cannot be read as an image")
    change, suffix = REEXPORTS[name]
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix == ".jpg" else []
    ok, data = cv2.imencode(suffix, change(image), params)
    if not ok:
        raise SystemExit(f"{path}: {name} could not be encoded")
    return data.tobytes()


def fold_models(name: str, runs_dir: Path) -> tuple[float, list[dict]]:
    """(the run's pooled OOF threshold, per fold its member model files and held-out rows)."""
    report = json.loads((runs_dir / f"{name}-crossval" / "crossval.json").read_text())
    if report.get("density"):
        raise SystemExit(
            f"--runs {name}: its threshold is that of a blend with density features fitted per "
            "fold, which the fold models alone do not give; run it on the exported model "
            "(--model) or on a cross-validation without density"
        )
    folds = []
    for fold in report["folds"]:
        rows = [r for r in report["oof"] if r["fold"] == fold["fold"]]
        models = [runs_dir / run / "model.keras" for run in fold["run"].split(",")]
        folds.append({"fold": fold["fold"], "models": models, "rows": rows})
    return float(report["threshold"]), folds


def shipped_model(model: Path, data: Path) -> tuple[float, list[dict]]:
    """(the card's threshold, one "fold": ``model`` and every labelled image of ``data``)."""
    from hemo.datasets import load_index
    from hemo.model import read_card

    index = load_index(data)
    rows = [
        {"path": str(path), "label_any": int(label)}
        for path, label in zip(index["path"], index["label_any"], strict=True)
    ]
    return float(read_card(model).threshold), [{"fold": 0, "models": [model], "rows": rows}]


def predict_fold(models: list[Path], rows: list[dict], names: list[str]) -> dict[str, np.ndarray]:
    """P(any) of the fold's images (held out, or the shipped model's own), as stored and per
    re-export in ``names``."""
    from hemo.io import read_scan
    from hemo.model import load_model, merge_ensemble
    from hemo.preprocess import to_model_input

    loaded = [load_model(path) for path in models]
    if len(loaded) == 1:
        model, card = loaded[0]
    else:
        model = merge_ensemble([m for m, _ in loaded], [c for _, c in loaded])
        card = loaded[0][1]
    any_column = list(card.labels).index("any")
    spec = card.input_spec
    out = {}
    for variant in ["stored", *names]:
        inputs = []
        for row in rows:
            path = Path(row["path"])
            source = path if variant == "stored" else reexport(path, variant)
            inputs.append(to_model_input(read_scan(source, f"{path.name} ({variant})"), spec))
        batch = np.stack(inputs)
        probs = np.asarray(model.predict(batch, batch_size=32, verbose=0))
        p_any = probs[:, any_column].astype(np.float64)
        blend = card.parse_density()  # a card that blends density features: as Predictor does
        out[variant] = p_any if blend is None else blend.blend(p_any, batch[..., 0])
    return out


def scores(y: np.ndarray, p: np.ndarray, stored: np.ndarray, threshold: float) -> dict:
    """Pooled AUC, accuracy at ``threshold``, verdicts changed and mean |change| against the
    stored images' probabilities."""
    from sklearn.metrics import roc_auc_score

    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "accuracy": float(np.mean((p >= threshold) == y)),
        "verdicts_changed": int(np.sum((p >= threshold) != (stored >= threshold))),
        "mean_abs_change": float(np.mean(np.abs(p - stored))),
    }


def main(argv: list[str] | None = None) -> int:
    """Predict every fold's held-out images as stored and re-exported; report the pooled figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", default="", help="a crossval run name (e.g. its ensemble): held-out figures"
    )
    parser.add_argument("--runs-dir", type=Path, default=PROJECT_DIR / "runs")
    parser.add_argument(
        "--model",
        type=Path,
        default=PROJECT_DIR / "models" / "headct_real.keras",
        help="without --runs: this model on --data (its training images: stability only)",
    )
    parser.add_argument(
        "--data", type=Path, default=PROJECT_DIR.parent / "shared" / "data" / "head_ct"
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated re-exports (default all: {', '.join(REEXPORTS)})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    names = [n for n in args.only.split(",") if n] or list(REEXPORTS)
    unknown = sorted(set(names) - set(REEXPORTS))
    if unknown:
        parser.error(f"--only: unknown re-export(s) {', '.join(unknown)}")
    if args.runs:
        report_file = args.runs_dir / f"{args.runs}-crossval" / "crossval.json"
        if not report_file.is_file():
            parser.error(f"--runs {args.runs}: no {report_file} (run hemo crossval first)")
        threshold, folds = fold_models(args.runs, args.runs_dir)
    else:
        if not args.model.is_file():
            parser.error(f"--model {args.model}: no such model file")
        if not args.data.exists():
            parser.error(
                f"--data {args.data}: no such dataset (the real Kaggle images live in "
                "../shared/data)"
            )
        threshold, folds = shipped_model(args.model, args.data)
    y_parts, p_parts = [], {}
    for fold in folds:
        missing = [str(m) for m in fold["models"] if not m.is_file()]
        if missing:
            raise SystemExit(f"fold {fold['fold']}: model file(s) missing: {', '.join(missing)}")
        y_parts.append(np.array([int(r["label_any"]) for r in fold["rows"]]))
        for variant, p in predict_fold(fold["models"], fold["rows"], names).items():
            p_parts.setdefault(variant, []).append(p)
        log.info("fold %d: %d images", fold["fold"], len(fold["rows"]))
    y = np.concatenate(y_parts)
    pooled = {variant: np.concatenate(parts) for variant, parts in p_parts.items()}
    results = {v: scores(y, p, pooled["stored"], threshold) for v, p in pooled.items()}
    base = results["stored"]["roc_auc"]
    log.info("%-16s %8s %9s %9s %10s", "re-export", "ROC AUC", "accuracy", "changed", "mean |dP|")
    for variant, r in results.items():
        log.info(
            "%-16s %8.3f %9.3f %9d %10.3f",
            variant,
            r["roc_auc"],
            r["accuracy"],
            r["verdicts_changed"],
            r["mean_abs_change"],
        )
    summary: dict[str, object] = {
        "run": args.runs or None,
        "model": None if args.runs else str(args.model),
        "held_out": bool(args.runs),
        "images": int(len(y)),
        "threshold": threshold,
        "results": results,
    }
    ratios = {f"{v}_auc_ratio": results[v]["roc_auc"] / base for v in names}
    summary.update(ratios)
    summary["min_auc_ratio"] = min(ratios.values())
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
