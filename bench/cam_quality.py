"""Localisation and faithfulness of the CAM methods for a shipped model on unseen phantoms.

Writes a fresh phantom dataset from a seed the model was not trained on
(``hemo.phantom.write_demo_dataset``), then scores every method of ``hemo.cam.METHODS`` with
:func:`hemo.cam.metrics.cam_quality` over the positive slices with masks (all splits: none of
these studies was seen in training): pointing game (Zhang et al. 2018 tolerance, scaled to the
input size), energy-in-mask, top-k IoU and the deletion drop against random regions. With
``--pictures DIR`` it also draws a few panels (slice with the true mask outlined, then the three
methods) for the README.

``--layers A,B`` also scores the methods at other layers of the model (the card's
``cam_layer`` is the one shown and drawn). Choose a layer on one seed (e.g. ``--seed 7001``) and
report on another (the default 9001), so that the reported figure was not used to pick it.

Usage::

    python bench/cam_quality.py [--model models/phantom_rsna3.keras] [--studies 40] [--seed 9001]
                                [--pictures docs/img] [--layers compact_s1_c1,compact_features]

Prints a table on stderr and, last, one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger("bench.cam_quality")

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = PROJECT_DIR / "models" / "phantom_rsna3.keras"
#: Index of the phantoms the shipped model was trained on: no study may be shared with it.
DEFAULT_TRAIN_INDEX = PROJECT_DIR / "data" / "processed" / "phantom_train" / "index.parquet"
#: A seed far from the small seeds used for training and tests.
DEFAULT_SEED = 9001
DEFAULT_STUDIES = 80
DEFAULT_MAX_SLICES = 400
POINTING_TARGET = 0.90
#: Panels drawn with --pictures and how they look.
N_PICTURES = 4
MASK_RGB = (0, 255, 0)
TEXT_RGB = (255, 255, 255)
TEXT_ORIGIN = (6, 16)
TEXT_SCALE = 0.45
PANEL_SCALE = 2
PNG_COMPRESSION = 9
TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM"}
HEATMAP_ALPHA = 0.45
TILE_GAP_PX = 4


def training_seeds(card) -> set[int]:
    """Seeds named anywhere in the card's training summary (to refuse reusing one)."""
    seeds: set[int] = set()

    def walk(value, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, key)
        elif "seed" in key and isinstance(value, int) and not isinstance(value, bool):
            seeds.add(value)

    walk(card.training)
    return seeds


def draw_panels(model, card, index_df, out_dir: Path, n_pictures: int) -> list[str]:
    """Panels ``cam_<subtype>.png``: the slice, then one overlay per method; true mask in green."""
    import cv2
    import numpy as np

    from hemo.cam import METHODS, overlay
    from hemo.cam.metrics import mask_to_input, read_mask
    from hemo.config import SUBTYPES
    from hemo.io import read_scan
    from hemo.preprocess import to_model_input

    out_dir.mkdir(parents=True, exist_ok=True)
    explainers = {
        name: cls(model, layer=card.cam_layer or None, labels=card.labels)
        for name, cls in METHODS.items()
    }
    written: list[str] = []
    positives = index_df[index_df["label_any"] == 1].sort_values("path")
    for subtype in SUBTYPES:
        if len(written) >= n_pictures:
            break
        # A slice with only this subtype, the largest such lesion
        only = positives[(positives[subtype] == 1) & (positives[list(SUBTYPES)].sum(axis=1) == 1)]
        if only.empty:
            continue
        best, best_area = None, 0
        for row in only.itertuples(index=False):
            area = int(read_mask(row.mask_path, subtype).sum())
            if area > best_area:
                best, best_area = row, area
        scan = read_scan(best.path)
        x = to_model_input(scan, card.input_spec)
        mask = mask_to_input(read_mask(best.mask_path, subtype), scan, card.input_spec)
        # Tiles at PANEL_SCALE x the model input, the true mask outlined on each
        side = x.shape[0] * PANEL_SCALE
        gray = cv2.resize(x[..., 0], (side, side), interpolation=cv2.INTER_LINEAR)
        big_mask = cv2.resize(mask.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(big_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        heatmaps = {"slice + mask": np.zeros_like(gray)}
        for name, explainer in explainers.items():
            (result,) = explainer(x, label="any")
            heatmaps[TITLES[name]] = result.heatmap
        tiles = []
        for title, heatmap in heatmaps.items():
            alpha = 0.0 if title == "slice + mask" else HEATMAP_ALPHA
            tile = overlay(gray, heatmap, alpha=alpha)
            cv2.drawContours(tile, contours, -1, MASK_RGB, 1)
            cv2.putText(tile, title, TEXT_ORIGIN, cv2.FONT_HERSHEY_SIMPLEX, TEXT_SCALE, TEXT_RGB, 1)
            tiles += [tile, np.zeros((side, TILE_GAP_PX, 3), np.uint8)]
        panel = np.concatenate(tiles[:-1], axis=1)
        path = out_dir / f"cam_{subtype}.png"
        bgr = cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
        written.append(str(path))
        log.info("wrote %s (%s, P(any) %.3f)", path, Path(best.path).name, result.probability)
    return written


def _log_row(method: str, r: dict) -> None:
    """One table row of a method's scores."""
    air = r["faithfulness"].get("air", {})
    log.info(
        "%-10s %8.3f %8.3f %8.3f %8.3f %8.3f/%.3f",
        method,
        r["pointing_game"],
        r["energy_in_mask"],
        r["iou_topk"],
        r["flat_fraction"],
        air.get("drop_cam") or 0.0,
        air.get("drop_random") or 0.0,
    )


def main(argv: list[str] | None = None) -> int:
    """Score the three methods; print the table (stderr) and one JSON line (stdout)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--studies", type=int, default=DEFAULT_STUDIES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--size", type=int, default=None, help="phantom size (default: 512)")
    parser.add_argument("--max-slices", type=int, default=DEFAULT_MAX_SLICES)
    parser.add_argument("--pictures", type=Path, default=None, help="folder for cam_*.png panels")
    parser.add_argument("--data", type=Path, default=None, help="keep the phantoms in this folder")
    parser.add_argument(
        "--train-index",
        type=Path,
        default=DEFAULT_TRAIN_INDEX,
        help="index of the training phantoms; shared study UIDs are refused",
    )
    parser.add_argument(
        "--layers",
        default="",
        help="comma-separated layer names to score besides the card's cam_layer",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    import pandas as pd

    from hemo.cam import METHODS
    from hemo.cam.metrics import cam_quality
    from hemo.datasets import load_index
    from hemo.model import load_model
    from hemo.phantom import DEFAULT_SIZE_PX, write_demo_dataset

    model, card = load_model(args.model)
    layers = [name for name in args.layers.split(",") if name and name != card.cam_layer]
    names = {layer.name for layer in model.layers}
    unknown = [name for name in layers if name not in names]
    if unknown:
        parser.error(f"--layers: {unknown} not in the model")
    used = training_seeds(card)
    if args.seed in used:
        parser.error(f"seed {args.seed} appears in the model card's training summary: pick another")
    with tempfile.TemporaryDirectory(prefix="hemo-camq-") as tmp:
        root = args.data or Path(tmp)
        start = time.perf_counter()
        write_demo_dataset(
            root, n_studies=args.studies, seed=args.seed, size=args.size or DEFAULT_SIZE_PX
        )
        index_df = load_index(root / "index.parquet")
        if args.train_index.is_file():
            seen = set(pd.read_parquet(args.train_index, columns=["study_uid"])["study_uid"])
            shared = seen & set(index_df["study_uid"])
            if shared:
                parser.error(f"{len(shared)} studies of seed {args.seed} are in {args.train_index}")
            log.info("no study shared with the training index %s", args.train_index)
        log.info(
            "%d phantom slices (%d positive) from seed %d in %.0f s; model %s (%s, %d px)",
            len(index_df),
            int(index_df["label_any"].sum()),
            args.seed,
            time.perf_counter() - start,
            card.name,
            card.architecture,
            card.input_spec.size,
        )
        by_layer = {
            layer: {
                method: cam_quality(
                    model,
                    dataclasses.replace(card, cam_layer=layer),
                    index_df,
                    method,
                    split=None,
                    max_slices=args.max_slices,
                    seed=args.seed,
                )
                for method in METHODS
            }
            for layer in [card.cam_layer, *layers]
        }
        reports = by_layer[card.cam_layer]
        pictures = (
            draw_panels(model, card, index_df, args.pictures, N_PICTURES) if args.pictures else []
        )
    first = next(iter(reports.values()))
    log.info(
        "%d positive slices, pointing tolerance %d px, top-k %.0f %%",
        first["n_slices"],
        first["tolerance_px"],
        100 * first["topk"],
    )
    log.info(
        "%-10s %8s %8s %8s %8s %16s",
        "method",
        "pointing",
        "energy",
        "IoU",
        "flat",
        "air drop cam/rnd",
    )
    for layer, layer_reports in by_layer.items():
        if len(by_layer) > 1:
            log.info("layer %s%s", layer, " (the card's)" if layer == card.cam_layer else "")
        for method, r in layer_reports.items():
            _log_row(method, r)
    summary = {
        "model": card.name,
        "seed": args.seed,
        "studies": args.studies,
        "pointing_target": POINTING_TARGET,
        "gradcam_pointing_met": (reports["gradcam"]["pointing_game"] or 0.0) >= POINTING_TARGET,
        "layer": card.cam_layer,
        "methods": reports,
        "by_layer": by_layer if len(by_layer) > 1 else None,
        "pictures": pictures,
    }
    print(json.dumps(summary, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
