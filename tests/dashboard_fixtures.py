"""Tiny datasets, models and runs for the dashboard tests (AppTest and the browser test).

Plain functions (not fixtures) so both test modules build the same material: a small phantom
dataset (RSNA layout with masks), a Kaggle head-CT layout of synthetic PNGs, two untrained compact
models with their cards (HU windows with the six RSNA outputs; display grayscale with ``any``),
and finished runs on disk as :mod:`hemo.train` writes them.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from hemo import runs
from hemo.config import RSNA_LABELS

PHANTOM_STUDIES = 4
PHANTOM_SLICES = 4
PHANTOM_SIZE_PX = 128
MODEL_SIZE_PX = 64
PNG_PER_CLASS = 6
PNG_SIDE_PX = 96
HU_MODEL = "tiny_hu"
DISPLAY_MODEL = "tiny_display"


def make_phantoms(root: Path, n_studies: int = PHANTOM_STUDIES) -> Path:
    """A phantom dataset of 4 (or n) studies x 4 slices of 128 px under ``root`` (with index)."""
    from hemo.phantom import write_demo_dataset

    write_demo_dataset(
        root,
        n_studies=n_studies,
        seed=0,
        slices_per_study=PHANTOM_SLICES,
        size=PHANTOM_SIZE_PX,
    )
    return root


def make_kaggle_pngs(root: Path, seed: int = 0) -> Path:
    """A Kaggle head-CT layout (``labels.csv`` + ``head_ct/NNN.png``) of synthetic gray discs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = root / "head_ct"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["id, hemorrhage"]
    yy, xx = np.mgrid[:PNG_SIDE_PX, :PNG_SIDE_PX]
    disc = (yy - PNG_SIDE_PX / 2) ** 2 + (xx - PNG_SIDE_PX / 2) ** 2 < (PNG_SIDE_PX / 2.5) ** 2
    for i in range(2 * PNG_PER_CLASS):
        label = int(i < PNG_PER_CLASS)
        pixels = np.where(disc, 120, 0) + rng.integers(0, 40, disc.shape)
        if label:
            pixels[30:45, 30:45] = 230
        Image.fromarray(pixels.astype(np.uint8)).save(images / f"{i:03d}.png")
        lines.append(f"{i}, {label}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


#: Seed of the untrained page-test models' weights.
MODELS_SEED = 0


def make_models(root: Path) -> Path:
    """Two untrained compact models with cards under ``root``: ``tiny_hu`` and ``tiny_display``.

    Seeded, so their weights (and whether a heatmap comes out flat) do not depend on what ran
    before in the process.
    """
    import keras

    from hemo.model import CAM_LAYERS, ModelCard, build_model, save_model
    from hemo.preprocess import InputSpec

    keras.utils.set_random_seed(MODELS_SEED)

    root.mkdir(parents=True, exist_ok=True)
    specs = (
        (HU_MODEL, InputSpec(size=MODEL_SIZE_PX, mode="hu"), RSNA_LABELS),
        (DISPLAY_MODEL, InputSpec(size=MODEL_SIZE_PX, mode="display"), ("any",)),
    )
    for name, spec, labels in specs:
        card = ModelCard(
            name=name,
            architecture="compact",
            input_spec=spec,
            labels=tuple(labels),
            threshold=0.5,
            cam_layer=CAM_LAYERS["compact"],
            metrics={"test": {"roc_auc": 0.75, "sensitivity": 0.8}},
        )
        save_model(build_model("compact", spec, labels), root / name, card)
    return root


def make_finished_run(root: Path, name: str, auc_offset: float = 0.0) -> Path:
    """A finished run as hemo.train leaves it: status, three epochs of history, a report."""
    path = runs.run_dir(name, root)
    path.mkdir(parents=True, exist_ok=True)
    epochs = 3
    runs.write_status(
        path, name=name, state=runs.FINISHED, epoch=epochs, epochs=epochs, message="done"
    )
    rows = ["epoch,loss,auc,accuracy,val_loss,val_auc,val_accuracy"]
    for e in range(epochs):
        auc = 0.6 + 0.1 * e + auc_offset
        rows.append(f"{e},{1.0 - 0.2 * e},{auc},{0.6 + 0.05 * e},{1.1 - 0.2 * e},{auc - 0.05},0.6")
    (path / runs.HISTORY_FILE).write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = {
        "threshold": 0.42,
        "split": "test",
        "confusion": {"tn": 5, "fp": 1, "fn": 2, "tp": 4, "matrix": [[5, 1], [2, 4]]},
        "roc": {"x": [0.0, 0.2, 1.0], "y": [0.0, 0.7, 1.0], "thresholds": [None, 0.5, 0.0]},
        "pr": {"x": [0.0, 0.7, 1.0], "y": [1.0, 0.8, 0.5], "thresholds": [0.9, 0.5, 0.5]},
        "summary": {"roc_auc": 0.81, "sensitivity": 0.67, "specificity": 0.83},
    }
    runs.write_json_atomic(path / runs.REPORT_FILE, report)
    return path


def make_crossval(root: Path, name: str, n_folds: int = 2, per_fold: int = 10) -> Path:
    """A cross-validation as ``hemo crossval`` leaves it: finished fold runs ``NAME-cv0`` ...
    whose data is their fold index in ``NAME-crossval/``, and the report that
    :mod:`hemo.crossval` writes there from seeded out-of-fold probabilities."""
    import pandas as pd

    from hemo import crossval
    from hemo.train import resolve_config

    work = runs.run_dir(f"{name}-{crossval.CROSSVAL_DIR_SUFFIX}", root)
    rng = np.random.default_rng(0)
    parts, meta = [], []
    for fold in range(n_folds):
        run_name = f"{name}-{crossval.FOLD_RUN_SUFFIX.format(fold=fold)}"
        run = make_finished_run(root, run_name)
        fold_index = work / f"fold{fold}" / crossval.INDEX_FILE
        runs.write_json_atomic(run / runs.CONFIG_FILE, {"name": run_name, "data": str(fold_index)})
        labels = np.arange(per_fold) % 2
        parts.append(
            pd.DataFrame(
                {
                    "path": [f"img_{fold}_{i}.png" for i in range(per_fold)],
                    crossval.LABEL_COLUMN: labels,
                    "fold": fold,
                    "probability": np.clip(
                        0.3 * labels + 0.35 + rng.normal(0, 0.15, per_fold), 0, 1
                    ),
                }
            )
        )
        meta.append((fold, run_name, per_fold * (n_folds - 1)))
    work.mkdir(parents=True, exist_ok=True)
    measured_on = crossval.MEASURED_ON.format(folds=n_folds, n=n_folds * per_fold, data="data/x")
    config = resolve_config({"data": "data/x", "name": name})
    crossval._report(config, name, pd.concat(parts, ignore_index=True), meta, 0, measured_on, work)
    return work


def zip_bytes(paths: list[Path], folder: str = "series") -> bytes:
    """The files zipped in memory under ``folder/`` (an upload of a series)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            archive.write(path, f"{folder}/{path.name}")
    return buffer.getvalue()
