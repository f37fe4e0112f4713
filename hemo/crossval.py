"""Stratified k-fold cross-validation through the one training path (:func:`hemo.train.train`).

Steps of :func:`crossval`::

    config -> index -> folds (stratified on label_any, grouped by patient and by look-alike
       images (hemo.lookalike), seeded)
    -> per fold: index with the other folds as "train" and the held-out fold as "val"
       -> hemo.train.train (checkpoint "last", no early stopping: nothing is selected on the
          held-out fold) -> held-out predictions through hemo.evaluate (the prediction path)
    -> pooled out-of-fold (OOF) predictions -> operating threshold (hemo.evaluate.choose_threshold)
    -> per-fold and pooled metrics (hemo.evaluate.binary_metrics), mean and spread

:func:`train_final` then trains one model on every image with the same config and writes it with
a card whose threshold and metrics come from the cross-validation: OOF predictions are validation
data for the final model, never test data.

:func:`crossval_ensemble` does this once per seed on the same folds and scores the ensemble (the
mean of the members' OOF logits); :func:`train_final_ensemble` trains one final model per seed
and writes them merged into one graph (:func:`hemo.model.merge_ensemble`). Every training goes
through :func:`finished_run` first: a finished run of the same config and split is reused, so a
stopped cross-validation goes on where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from hemo import runs
from hemo.config import portable_path
from hemo.errors import ConfigError, DatasetError, TrainingError
from hemo.lookalike import DEFAULT_THRESHOLD as DEFAULT_LOOKALIKE
from hemo.referral import DEFAULT_TARGET_ACCURACY as DEFAULT_REFERRAL_ACCURACY

log = logging.getLogger(__name__)

# Settings ---------------------------------------------------------------------------------------
DEFAULT_FOLDS = 5
MIN_FOLDS = 2
#: Seed of the fold assignment (fixed, so every recipe is compared on the same folds).
DEFAULT_FOLD_SEED = 0
LABEL_COLUMN = "label_any"
GROUP_COLUMN = "patient_id"
#: Metrics summarised over folds (attributes of :class:`hemo.evaluate.BinaryMetrics`).
SUMMARY_METRICS = ("accuracy", "roc_auc", "sensitivity", "specificity")
#: Fixed threshold reported beside the OOF-chosen one (no tuning at all).
FIXED_THRESHOLD = 0.5
FOLD_RUN_SUFFIX = "cv{fold}"
FINAL_RUN_SUFFIX = "final"
#: Ensemble members' run names: ``<name>_s<seed>-cv0`` ... and ``<name>_s<seed>-final``.
MEMBER_SUFFIX = "_s{seed}"
#: Probabilities are clipped this far from 0 and 1 before their logits are averaged.
PROB_EPS = 1e-7
#: Folder under the runs folder holding the fold indexes, OOF table and report.
CROSSVAL_DIR_SUFFIX = runs.CROSSVAL_DIR_SUFFIX
INDEX_FILE = "index.parquet"
OOF_FILE = "oof.csv"
REPORT_FILE = runs.CROSSVAL_REPORT_FILE
#: Training options forced for every fold and the final model: the held-out fold is never used
#: to pick a checkpoint or to stop early (patience is set to the number of epochs).
CHECKPOINT_LAST = "last"
SPLIT_TRAIN = "train"
SPLIT_HELD_OUT = "val"
MEASURED_ON = "{folds}-fold stratified CV of the {n} images of {data}, out-of-fold"
#: Appended to MEASURED_ON when look-alike images were kept in one fold.
MEASURED_GROUPED = (
    "; look-alike images kept in one fold (correlation >= {threshold:g}: {images} images in "
    "{multi} groups)"
)
#: Appended to MEASURED_ON when the network's P(any) was blended with density features.
DENSITY_MEASURED_ON = (
    "; P(any) blended with density features (hemo.density: mean of the network's and a "
    "logistic regression's log-odds, the regression fitted on the training folds)"
)
LOOKALIKE_FILE = "lookalikes.csv"
#: Config keys a finished fold run is reused across: the threshold and referral band are chosen
#: here on the pooled OOF predictions, not by the fold runs; ``export`` is never a fold run's.
REUSE_IGNORED = frozenset({"threshold", "export"})


# Results ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldResult:
    """One fold: its run, sizes and metrics on its held-out images.

    Attributes:
        fold: Fold number, 0-based.
        run: Name of the training run (``runs/<run>/``).
        n_train: Training images.
        n_test: Held-out images predicted.
        metrics: ``{metric: value}`` of :data:`SUMMARY_METRICS` at the OOF threshold.
        metrics_fixed: The same at :data:`FIXED_THRESHOLD`.
    """

    fold: int
    run: str
    n_train: int
    n_test: int
    metrics: dict[str, float | None]
    metrics_fixed: dict[str, float | None]


@dataclass(frozen=True)
class CrossValReport:
    """A whole cross-validation.

    Attributes:
        name: Base run name.
        n_folds: Number of folds.
        fold_seed: Seed of the fold assignment.
        threshold: Operating threshold chosen on the pooled OOF predictions.
        threshold_method: ``"youden"`` or ``"sensitivity"`` (from the config).
        folds: Per-fold results.
        summary: ``{metric: {"mean", "std"}}`` over folds at the OOF threshold (std: population).
        summary_fixed: The same at :data:`FIXED_THRESHOLD`.
        pooled: Metrics of all OOF predictions at the OOF threshold (``BinaryMetrics.to_dict``
            without curves), plus ``ci95``: their bootstrap intervals
            (:func:`hemo.evaluate.bootstrap_ci`).
        oof: ``path``, ``label_any``, ``fold``, ``probability`` per image.
        measured_on: What the numbers were measured on.
        lookalike: How look-alike images were grouped into folds (:func:`fold_groups`:
            ``threshold``, ``groups``, ``images_grouped``, ``multi_groups``, ``pairs``), or
            ``None`` when the check was off or every image had a patient id.
        referral: The referral band chosen on the pooled OOF predictions (:mod:`hemo.referral`):
            ``band``, what it does on those predictions (``out_of_fold``, optimistic: chosen on
            them) and held out (``nested``: threshold and band from the other folds), or
            ``error`` when no band reached the target; ``None`` when the config turns it off.
        density: With ``density = true``: the blend of the final model's card
            (:meth:`hemo.density.DensityBlend.to_dict`, its regression fitted on every image);
            the OOF probabilities are then the blend's, each fold's regression fitted on the
            other folds (``oof`` and ``oof.csv``, not ``crossval.json``, keep
            ``probability_network`` and ``probability_density``).
    """

    name: str
    n_folds: int
    fold_seed: int
    threshold: float
    threshold_method: str
    folds: tuple[FoldResult, ...]
    summary: dict[str, dict[str, float | None]]
    summary_fixed: dict[str, dict[str, float | None]]
    pooled: dict[str, Any]
    oof: pd.DataFrame = field(repr=False)
    measured_on: str = ""
    lookalike: dict[str, Any] | None = None
    referral: dict[str, Any] | None = None
    density: dict[str, Any] | None = None

    def band(self) -> dict[str, Any] | None:
        """The referral band for the final model's card, or ``None``."""
        return None if self.referral is None else self.referral.get("band")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (the OOF table as a list of records)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "oof"}
        data["folds"] = [dataclasses.asdict(f) for f in self.folds]
        data["oof"] = [
            {
                "path": str(row.path),
                "label_any": int(row.label_any),
                "fold": int(row.fold),
                "probability": float(row.probability),
            }
            for row in self.oof.itertuples()
        ]
        return data

    def card_metrics(self) -> dict[str, Any]:
        """The ``metrics`` block of the final model's card."""
        return {
            "measured_on": self.measured_on,
            "threshold": self.threshold,
            "threshold_from": f"pooled out-of-fold predictions ({self.threshold_method})",
            "folds": self.n_folds,
            "fold_seed": self.fold_seed,
            "fold_groups": self.lookalike,
            "mean_std_over_folds": self.summary,
            "mean_std_over_folds_at_0.5": self.summary_fixed,
            "pooled_out_of_fold": self.pooled,
            "per_fold": [dataclasses.asdict(f) for f in self.folds],
            "referral": self.referral,
        }


# Folds ------------------------------------------------------------------------------------------
def assign_folds(
    index_df: pd.DataFrame,
    n_folds: int,
    seed: int = DEFAULT_FOLD_SEED,
    groups: NDArray | None = None,
) -> NDArray:
    """Fold number of every row: stratified on ``label_any``, one group never in two folds.

    Args:
        index_df: Index table with ``label_any`` and (optionally) ``patient_id``. Not modified.
        n_folds: Number of folds, at least :data:`MIN_FOLDS`.
        seed: Seed of the shuffled assignment (same seed, same folds).
        groups: (N,) group of every row (e.g. :func:`fold_groups`); by default the patient
            (a row without one is its own group).

    Returns:
        int64 (N,) fold numbers in ``[0, n_folds)``, aligned with ``index_df`` rows.

    Raises:
        ConfigError: Fewer than :data:`MIN_FOLDS` folds.
        DatasetError: Unknown labels, a class with fewer cases than folds, or groups that
            leave a fold without one of the classes.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    check_folds(n_folds)
    labels = pd.to_numeric(index_df[LABEL_COLUMN], errors="coerce")
    if labels.isna().any():
        raise DatasetError(
            f"{int(labels.isna().sum())} row(s) have no {LABEL_COLUMN}: cross-validation needs "
            "every label known"
        )
    counts = labels.astype(int).value_counts()
    if len(counts) < 2 or counts.min() < n_folds:
        raise DatasetError(
            f"cannot make {n_folds} stratified folds from {counts.to_dict()} cases per class; "
            "every class needs at least one case per fold"
        )
    groups = _groups(index_df) if groups is None else np.asarray(groups)
    if len(np.unique(groups)) < n_folds:
        raise DatasetError(
            f"cannot make {n_folds} folds from {len(np.unique(groups))} group(s) of images "
            "(patients and look-alike images stay in one fold); use fewer folds"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(index_df), -1, dtype=np.int64)
    for fold, (_, held_out) in enumerate(splitter.split(index_df, labels.astype(int), groups)):
        folds[held_out] = fold
    for fold in range(n_folds):
        held = labels[folds == fold].astype(int)
        if held.nunique() < 2:
            raise DatasetError(
                f"fold {fold} of {n_folds} holds only label {int(held.iloc[0])}: the groups "
                "(patients and look-alike images stay in one fold) are too few or too large "
                "to stratify; use fewer folds, or a higher look-alike threshold "
                "(hemo crossval --lookalike)"
            )
    return folds


def _groups(index_df: pd.DataFrame) -> NDArray:
    """Patient of every row; a row without one is its own group."""
    if GROUP_COLUMN not in index_df.columns:
        return np.arange(len(index_df))
    patients = index_df[GROUP_COLUMN].astype("string")
    own = pd.Series([f"row-{i}" for i in range(len(index_df))], index=index_df.index)
    return patients.fillna(own).to_numpy()


def fold_groups(
    index_df: pd.DataFrame, threshold: float
) -> tuple[NDArray | None, dict[str, Any] | None, pd.DataFrame | None]:
    """Groups for :func:`assign_folds`: patients, joined with their look-alike images.

    A set where every row has a patient id is grouped by patient alone (no images read).
    Otherwise every image is read and look-alike pairs (:mod:`hemo.lookalike`: the same picture
    at another size, or neighbouring slices of one head) are linked, together with rows of one
    patient, so no test fold holds a copy of a training image.

    Args:
        index_df: Index table with ``path`` and (optionally) ``patient_id``. Not modified.
        threshold: Look-alike correlation threshold in (0, 1]; 0 turns the check off.

    Returns:
        (groups, summary, pairs): (N,) group numbers, the report's ``lookalike`` summary and
        the linked pairs as ``path_a``, ``path_b``, ``similarity``; ``(None, None, None)``
        when the check is off, not needed (patients alone decide), or over
        :data:`hemo.lookalike.MAX_IMAGES` images (with a warning).

    Raises:
        ConfigError: A threshold outside [0, 1].
    """
    from hemo.lookalike import MAX_IMAGES, check_threshold, find_lookalikes

    if threshold == 0:
        return None, None, None
    threshold = check_threshold(threshold)
    patients = index_df[GROUP_COLUMN] if GROUP_COLUMN in index_df.columns else None
    if patients is not None and patients.notna().all():
        return None, None, None
    if len(index_df) > MAX_IMAGES:
        log.warning(
            "%d images: too many for the look-alike check (at most %d); folds are grouped by "
            "patient id alone, so copies of one picture may land in different folds (give the "
            "set a patient_id column, or --lookalike 0 to silence this)",
            len(index_df),
            MAX_IMAGES,
        )
        return None, None, None
    paths = index_df["path"].astype(str).tolist()
    found = find_lookalikes(paths, threshold, None if patients is None else patients.tolist())
    _, counts = np.unique(found.groups, return_counts=True)
    summary = {
        "threshold": threshold,
        "groups": found.n_groups,
        "images_grouped": found.n_grouped,
        "multi_groups": int((counts > 1).sum()),
        "pairs": len(found.pairs),
        "unreadable": len(found.failed),
    }
    pairs = pd.DataFrame(
        {
            "path_a": [paths[i] for i in found.pairs["a"]],
            "path_b": [paths[i] for i in found.pairs["b"]],
            "similarity": found.pairs["similarity"].round(4).to_numpy(),
        }
    )
    log.info(
        "look-alike images kept in one fold: %d images in %d groups (%d pairs at correlation "
        ">= %g)",
        summary["images_grouped"],
        summary["multi_groups"],
        summary["pairs"],
        threshold,
    )
    return found.groups, summary, pairs


def fold_index(index_df: pd.DataFrame, folds: NDArray, fold: int) -> pd.DataFrame:
    """Index of one fold: the other folds ``train``, the held-out fold ``val`` (a new frame)."""
    out = index_df.copy()
    out["split"] = np.where(folds == fold, SPLIT_HELD_OUT, SPLIT_TRAIN)
    return out


def final_index(index_df: pd.DataFrame) -> pd.DataFrame:
    """Every image ``train``; the trainer's ``val`` split mirrors them (monitoring only)."""
    train_rows = index_df.assign(split=SPLIT_TRAIN)
    return pd.concat([train_rows, index_df.assign(split=SPLIT_HELD_OUT)], ignore_index=True)


# Training ---------------------------------------------------------------------------------------
def _train_to_the_end(run_config: Mapping[str, Any]) -> Path:
    """Train one run of the cross-validation; a run stopped by a signal stops it too.

    Raises:
        KeyboardInterrupt: The run was stopped (SIGINT/SIGTERM): the command ends as
            interrupted (exit 130), and running it again resumes that run. A signal after
            the run's last epoch lets it finish and stops here too (raised by ``train``):
            the rerun reuses that run and goes on with the next.
    """
    from hemo.train import train

    path = train(run_config)
    status = runs.read_json(path / runs.STATUS_FILE) or {}
    if status.get("state") == runs.STOPPED:
        log.warning(
            "run %s: %s; run the same command again to resume it",
            run_config["name"],
            status.get("message") or "stopped",
        )
        raise KeyboardInterrupt
    return path


def check_crossval_config(config: Mapping[str, Any]) -> None:
    """Refuse what would let a fold's held-out images steer its training.

    A fold run's validation split is its held-out fold: early stopping and the best checkpoint
    are turned off for it (:func:`fold_config`), and ``lr_schedule = "plateau"``, which lowers
    the learning rate when the validation AUC stalls, is refused here rather than silently
    swapped for another schedule (it is :func:`hemo.train.resolve_config`'s default).

    Also refuses ``density`` for models it does not fit: it blends P(any) of display-grayscale
    input (subtype outputs would stay the network's, beside a blended ``any``; HU input's first
    channel is no display slice).

    Raises:
        ConfigError: ``lr_schedule`` is ``plateau``; ``density`` with ``labels = "rsna"`` or
            ``input.mode = "hu"`` (``labels = "auto"`` is checked against the data:
            :func:`check_density_labels`).
    """
    if config.get("density") and (
        config["labels"] == "rsna" or config["input"]["mode"] != "display"
    ):
        raise ConfigError(
            'density blends the P(any) of a display-grayscale model: set labels = "any" and '
            f'input.mode = "display" (got labels {config["labels"]!r}, input.mode '
            f"{config['input']['mode']!r})"
        )
    if config["lr_schedule"] == "plateau":
        raise ConfigError(
            'lr_schedule = "plateau" (train\'s default) lowers the learning rate when the '
            "validation AUC stalls, and a crossval fold's validation images are its held-out "
            'fold: set lr_schedule = "cosine" or "constant" (--set lr_schedule=cosine; every '
            "config in configs/ does)"
        )


def check_density_labels(config: Mapping[str, Any], index_df: pd.DataFrame) -> None:
    """Refuse ``density`` when ``labels = "auto"`` gives the model subtype outputs on this data
    (their probabilities would stay the network's beside a blended ``any``).

    Raises:
        ConfigError: The data knows every subtype and ``labels`` is not ``"any"``.
    """
    from hemo.train import select_labels

    if config.get("density") and select_labels(config["labels"], index_df) != ("any",):
        raise ConfigError(
            'density blends P(any) alone, and labels = "auto" gives this data\'s models the '
            'six RSNA outputs: set labels = "any" (--set labels=any)'
        )


def fold_config(config: Mapping[str, Any], name: str, data: Path) -> dict[str, Any]:
    """A copy of ``config`` for one training: its name, data, last-epoch weights, no early stop,
    and no export (a config's ``export`` key would have every fold overwrite that model;
    ``hemo crossval --export`` writes the final model itself)."""
    out = copy.deepcopy(dict(config))
    out.update(
        name=name,
        data=str(data),
        export="",
        checkpoint=CHECKPOINT_LAST,
        early_stopping_patience=int(config["epochs"]) + 1,
        density=False,  # blended by the cross-validation, out of fold, not by a run
    )
    return out


def _summary(folds: Sequence[FoldResult], attr: str) -> dict[str, dict[str, float | None]]:
    """Mean and population std of each summary metric over folds (``None`` when undefined)."""
    out: dict[str, dict[str, float | None]] = {}
    for metric in SUMMARY_METRICS:
        values = [getattr(f, attr)[metric] for f in folds]
        if any(v is None for v in values):
            out[metric] = {"mean": None, "std": None}
        else:
            out[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return out


def _metric_values(metrics: Any) -> dict[str, float | None]:
    """The summary metrics of one :class:`~hemo.evaluate.BinaryMetrics`."""
    return {
        m: (None if getattr(metrics, m) is None else float(getattr(metrics, m)))
        for m in SUMMARY_METRICS
    }


def crossval(
    config: Mapping[str, Any],
    n_folds: int = DEFAULT_FOLDS,
    fold_seed: int = DEFAULT_FOLD_SEED,
    lookalike: float = DEFAULT_LOOKALIKE,
) -> CrossValReport:
    """Train one model per fold with ``config`` and evaluate on the pooled held-out predictions.

    Args:
        config: Resolved training configuration (:func:`hemo.train.resolve_config`); its
            ``name`` is the base of the fold runs (``<name>-cv0`` ...) and its ``threshold``
            table says how the OOF threshold is chosen.
        n_folds: Number of folds.
        fold_seed: Seed of the fold assignment.
        lookalike: Look-alike correlation threshold (:func:`fold_groups`): images at least
            this alike stay in one fold; 0 groups by patient alone.

    Returns:
        The :class:`CrossValReport`; also written with the OOF table under
        ``runs/<name>-crossval/``.

    Raises:
        ConfigError, DatasetError, ModelError, TrainingError: As the training raises them.
    """
    from hemo.datasets import load_index, save_index
    from hemo.evaluate import predict_index
    from hemo.model import load_model
    from hemo.train import resolve_path

    check_crossval_config(config)
    name = runs.check_run_name(config["name"] or "crossval")
    data = resolve_path(config["data"])
    index_df = load_index(data).reset_index(drop=True)
    check_density_labels(config, index_df)
    groups, grouped, pairs = fold_groups(index_df, lookalike)
    folds = assign_folds(index_df, n_folds, fold_seed, groups)
    work = runs.run_dir(f"{name}-{CROSSVAL_DIR_SUFFIX}")
    work.mkdir(parents=True, exist_ok=True)
    (work / LOOKALIKE_FILE).unlink(missing_ok=True)
    if pairs is not None:
        pairs.to_csv(work / LOOKALIKE_FILE, index=False)
    # One training per fold; predictions of its held-out images through the prediction path
    parts: list[pd.DataFrame] = []
    fold_meta: list[tuple[int, str, int]] = []
    for fold in range(n_folds):
        run_name = f"{name}-{FOLD_RUN_SUFFIX.format(fold=fold)}"
        fold_df = fold_index(index_df, folds, fold)
        fold_file = work / runs.CROSSVAL_FOLD_DIR.format(fold=fold) / INDEX_FILE
        run_config = fold_config(config, run_name, fold_file)
        path = finished_run(run_config, fold_file, fold_df)
        save_index(fold_df, fold_file)
        log.info(
            "fold %d/%d: %d train, %d held out -> run %s%s",
            fold + 1,
            n_folds,
            int((fold_df["split"] == SPLIT_TRAIN).sum()),
            int((fold_df["split"] == SPLIT_HELD_OUT).sum()),
            run_name,
            " (finished before: reused)" if path else "",
        )
        path = path or _train_to_the_end(run_config)
        model, card = load_model(path / runs.MODEL_FILE)
        rows, probs, failed = predict_index(model, card, load_index(fold_file), SPLIT_HELD_OUT)
        if failed:
            log.warning("fold %d: %d held-out image(s) failed: %s", fold, len(failed), failed[0])
        parts.append(
            pd.DataFrame(
                {
                    "path": rows["path"].astype(str).to_numpy(),
                    LABEL_COLUMN: rows[LABEL_COLUMN].astype(int).to_numpy(),
                    "fold": fold,
                    "probability": probs[:, card.labels.index("any")],
                }
            )
        )
        fold_meta.append((fold, run_name, int((fold_df["split"] == SPLIT_TRAIN).sum())))
    oof = pd.concat(parts, ignore_index=True)
    measured_on = MEASURED_ON.format(
        folds=n_folds, n=len(index_df), data=portable_path(data, config["data"])
    )
    if grouped:
        measured_on += MEASURED_GROUPED.format(
            threshold=grouped["threshold"],
            images=grouped["images_grouped"],
            multi=grouped["multi_groups"],
        )
    return _report(config, name, oof, fold_meta, fold_seed, measured_on, work, grouped)


def _report(
    config: Mapping[str, Any],
    name: str,
    oof: pd.DataFrame,
    fold_meta: Sequence[tuple[int, str, int]],
    fold_seed: int,
    measured_on: str,
    work: Path,
    lookalike: dict[str, Any] | None = None,
) -> CrossValReport:
    """Threshold on the pooled OOF predictions, metrics per fold and pooled; written to ``work``.

    With ``density = true`` the OOF probabilities are first blended with density features
    (:func:`blend_density`).
    """
    from hemo.evaluate import binary_metrics, bootstrap_ci, choose_threshold

    density = None
    if config.get("density"):
        oof, density = blend_density(config, oof)
        measured_on += DENSITY_MEASURED_ON
    n_folds = len(fold_meta)
    # Operating threshold on the pooled OOF predictions, then metrics per fold and pooled
    method = str(config["threshold"]["method"])
    target = float(config["threshold"].get("target_sensitivity", 0.9))
    y, p = oof[LABEL_COLUMN].to_numpy(), oof["probability"].to_numpy()
    threshold = float(choose_threshold(y, p, method, target))
    results = []
    for fold, run_name, n_train in fold_meta:
        held = oof[oof["fold"] == fold]
        yf, pf = held[LABEL_COLUMN].to_numpy(), held["probability"].to_numpy()
        results.append(
            FoldResult(
                fold=fold,
                run=run_name,
                n_train=n_train,
                n_test=len(held),
                metrics=_metric_values(binary_metrics(yf, pf, threshold)),
                metrics_fixed=_metric_values(binary_metrics(yf, pf, FIXED_THRESHOLD)),
            )
        )
    pooled = binary_metrics(y, p, threshold).to_dict()
    for curve in ("roc", "pr"):
        pooled.pop(curve, None)
    # How much the pooled figures could move on another sample of this size (the threshold
    # was chosen on these same predictions, so the threshold metrics' intervals are optimistic)
    pooled["ci95"] = bootstrap_ci(y, p, threshold)
    referral = _referral(config, y, p, threshold, oof["fold"].to_numpy(), measured_on)
    report = CrossValReport(
        name=name,
        n_folds=n_folds,
        fold_seed=fold_seed,
        threshold=threshold,
        threshold_method=method,
        folds=tuple(results),
        summary=_summary(results, "metrics"),
        summary_fixed=_summary(results, "metrics_fixed"),
        pooled=pooled,
        oof=oof,
        measured_on=measured_on,
        lookalike=lookalike,
        referral=referral,
        density=density,
    )
    oof.to_csv(work / OOF_FILE, index=False)
    runs.write_json_atomic(work / REPORT_FILE, report.to_dict())
    return report


def blend_density(
    config: Mapping[str, Any], oof: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Blend the OOF probabilities with density features, out of fold (``density = true``).

    Every image's :func:`hemo.density.features` are measured on its model input (the config's
    input spec); per fold, a :class:`hemo.density.DensityModel` is fitted on the other folds'
    images and blended (:class:`hemo.density.DensityBlend`, fixed weight) with the held-out
    images' network probabilities. The final model's blend is fitted on every image.

    Args:
        config: The resolved config (its input spec).
        oof: ``path``, ``label_any``, ``fold``, ``probability`` (the network's) per image.

    Returns:
        (the OOF table with ``probability`` the blend's and ``probability_network``,
        ``probability_density`` beside it; the final blend's card entry).

    Raises:
        DatasetError: An image that was predicted cannot be read again, or a fold's training
            images hold one class only.
    """
    from scipy.special import expit

    from hemo.density import DensityBlend, DensityModel, features
    from hemo.errors import HemoError
    from hemo.io import read_scan
    from hemo.preprocess import to_model_input
    from hemo.train import input_spec

    spec = input_spec(config)
    rows = []
    for path in oof["path"].astype(str):
        try:
            rows.append(features(to_model_input(read_scan(path), spec)[..., 0]))
        except (HemoError, ValueError) as exc:
            raise DatasetError(f"{path}: cannot measure its density features: {exc}") from exc
    x = np.stack(rows)
    y = oof[LABEL_COLUMN].to_numpy(dtype=int)
    folds = oof["fold"].to_numpy()
    network = oof["probability"].to_numpy(dtype=float)
    blended = np.zeros(len(oof))
    density = np.zeros(len(oof))
    for fold in np.unique(folds):
        train, held = folds != fold, folds == fold
        try:
            blend = DensityBlend(DensityModel.fit(x[train], y[train]))
        except ConfigError as exc:
            raise DatasetError(f"fold {fold}: density features: {exc}") from exc
        blended[held] = blend.blend_features(network[held], x[held])
        density[held] = expit(blend.model.logit(x[held]))
    final = DensityBlend(DensityModel.fit(x, y))
    log.info(
        "density features blended out of fold (weight %g): pooled AUC network %.3f -> blend %.3f",
        final.weight,
        _auc(y, network),
        _auc(y, blended),
    )
    out = oof.assign(probability=blended, probability_network=network, probability_density=density)
    return out, final.to_dict()


def _auc(y: NDArray, p: NDArray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def _referral(
    config: Mapping[str, Any],
    y: NDArray,
    p: NDArray,
    threshold: float,
    folds: NDArray,
    measured_on: str,
) -> dict[str, Any] | None:
    """The referral band on the pooled OOF predictions, and its nested held-out estimate."""
    from hemo.referral import choose_band, nested_estimate, selective_metrics

    section = config["threshold"]
    target = float(section.get("referral_accuracy", DEFAULT_REFERRAL_ACCURACY))
    if target <= 0:
        return None
    try:
        band = choose_band(
            y, p, threshold, target, f"pooled out-of-fold predictions: {measured_on}"
        )
    except DatasetError as exc:
        log.warning("no referral band: %s", exc)
        return {"error": str(exc), "target_accuracy": target}
    method = str(section["method"])
    target_sensitivity = float(section.get("target_sensitivity", 0.9))
    return {
        "band": band.to_dict(),
        "out_of_fold": selective_metrics(y, p, threshold, band),
        "nested": nested_estimate(y, p, folds, method, target_sensitivity, target),
    }


def finished_run(
    run_config: Mapping[str, Any], index_file: Path, index_df: pd.DataFrame
) -> Path | None:
    """The folder of a finished training of exactly this config and split, else ``None``
    (:data:`REUSE_IGNORED` keys may differ).

    So a cross-validation that was stopped or killed goes on where it stopped when the same
    command is run again: finished fold runs are reused, an unfinished one resumes from its
    backup (:func:`hemo.train.train`). Checked before ``index_file`` is rewritten.

    Args:
        run_config: The run's resolved config (:func:`fold_config`), its ``name`` the run.
        index_file: Where the run's index is (was) written.
        index_df: The index the run would be trained on now.

    Raises:
        TrainingError: The run finished with another config or split, or without its model.
    """
    from hemo.train import DEFAULTS

    path = runs.run_dir(run_config["name"])
    if (runs.read_json(path / runs.STATUS_FILE) or {}).get("state") != runs.FINISHED:
        return None
    # A key the run's hemo did not know yet counts as its default (what that run did); keys
    # that do not change what a fold run trains are not compared
    saved = runs.laid_over(_plain(DEFAULTS), runs.read_json(path / runs.CONFIG_FILE) or {})
    wanted = _plain(run_config)
    differ = sorted(
        key
        for key in set(saved) | set(wanted)
        if key not in REUSE_IGNORED
        and saved.get(key) != wanted.get(key)
        and not (key == "data" and _same_fold_file(saved[key], wanted[key]))
    )
    if differ:
        why = f"with another config (differs in {', '.join(differ)})"
    elif not index_file.is_file() or _split_rows(index_df) not in _saved_rows(
        index_file, saved.get("data")
    ):
        why = "on another split of the data"
    elif not (path / runs.MODEL_FILE).is_file():
        why = f"but has no {runs.MODEL_FILE}"
    else:
        return path
    raise TrainingError(
        f"run {run_config['name']!r} already finished {why} in {path}; choose another name "
        "(--set name=...) or remove that run"
    )


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as its JSON text reads back (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(dict(config), default=str))


def check_folds(n_folds: int) -> None:
    """Refuse fewer than :data:`MIN_FOLDS` folds (before any data is read).

    Raises:
        ConfigError: Naming the count.
    """
    if n_folds < MIN_FOLDS:
        raise ConfigError(f"--folds is {n_folds}: cross-validation needs at least {MIN_FOLDS}")


def _same_fold_file(saved: Any, wanted: Any) -> bool:
    """Whether two ``data`` paths name the same fold index (``<crossval dir>/fold<k>/index``)
    in runs folders that may lie in different places: a runs folder copied or moved elsewhere
    keeps its finished folds (the index's rows are compared on their own)."""
    return Path(str(saved)).parts[-3:] == Path(str(wanted)).parts[-3:]


def _saved_rows(index_file: Path, saved_data: Any) -> list[list[tuple[str, str, int]]]:
    """:func:`_split_rows` of the fold index a finished run was trained on, its relative paths
    read from the index's folder and, when the runs folder has moved since the run trained,
    also from the folder the run's config names (``saved_data``: where the index was then)."""
    from hemo.datasets import load_index

    saved = load_index(index_file)
    readings = [_split_rows(saved)]
    trained_in = Path(str(saved_data)).parent if saved_data else index_file.parent
    if trained_in != index_file.parent:
        stored = pd.read_parquet(index_file, columns=["path"])["path"]
        moved = [str(p) if Path(p).is_absolute() else str(trained_in / p) for p in stored]
        readings.append(_split_rows(saved.assign(path=moved)))
    return readings


def _split_rows(index_df: pd.DataFrame) -> list[tuple[str, str, int]]:
    """(resolved path, split, label) per row: what a training run saw of its index."""
    return [
        (str(Path(path).resolve()), str(split), int(label))
        for path, split, label in zip(
            index_df["path"], index_df["split"], index_df[LABEL_COLUMN], strict=True
        )
    ]


# Ensembles --------------------------------------------------------------------------------------
def member_config(config: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The config of the ensemble member with ``seed``: run names ``<name>_s<seed>-...``."""
    name = runs.check_run_name(config["name"] or "crossval")
    out = copy.deepcopy(dict(config))
    # the ensemble blends density features once, over the members' mean
    out.update(seed=int(seed), name=f"{name}{MEMBER_SUFFIX.format(seed=int(seed))}", density=False)
    return out


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """Distinct seeds, at least :data:`hemo.model.MIN_ENSEMBLE` of them.

    Raises:
        ConfigError: Too few or repeated seeds.
    """
    from hemo.model import MIN_ENSEMBLE

    seeds = tuple(int(seed) for seed in seeds)
    if len(seeds) < MIN_ENSEMBLE or len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"an ensemble needs at least {MIN_ENSEMBLE} distinct seeds, got {list(seeds)}"
        )
    return seeds


def crossval_ensemble(
    config: Mapping[str, Any],
    seeds: Sequence[int],
    n_folds: int = DEFAULT_FOLDS,
    fold_seed: int = DEFAULT_FOLD_SEED,
    lookalike: float = DEFAULT_LOOKALIKE,
) -> tuple[CrossValReport, list[CrossValReport]]:
    """Cross-validate one member per seed on the same folds, then their logit-mean ensemble.

    Each member is :func:`crossval` of ``config`` with its seed (runs ``<name>_s<seed>-cv0``
    ...). The ensemble's out-of-fold probability of an image is the sigmoid of the mean of the
    members' out-of-fold logits: every member that predicts it was trained without it, so the
    ensemble's OOF predictions are as held out as each member's. Threshold and metrics follow
    as in :func:`crossval`; the report goes to ``runs/<name>-crossval/`` (its ``oof.csv`` also
    has each member's probability).

    Returns:
        (the ensemble's report, the members' reports in seed order).

    Raises:
        ConfigError: Fewer than two distinct seeds.
        DatasetError: The members' held-out images differ.
    """
    seeds = check_seeds(seeds)
    name = runs.check_run_name(config["name"] or "crossval")
    if config.get("density"):  # said before the members train, not after
        from hemo.datasets import load_index
        from hemo.train import resolve_path

        check_crossval_config(config)
        check_density_labels(config, load_index(resolve_path(config["data"])))
    members = [
        crossval(member_config(config, seed), n_folds, fold_seed, lookalike) for seed in seeds
    ]
    base = members[0].oof[["path", LABEL_COLUMN, "fold"]].reset_index(drop=True)
    logits = []
    for seed, member in zip(seeds, members, strict=True):
        rows = member.oof[["path", LABEL_COLUMN, "fold"]].reset_index(drop=True)
        if not rows.equals(base):
            raise DatasetError(
                f"ensemble member with seed {seed} predicted other held-out images than the "
                f"member with seed {seeds[0]} (a file that failed in one run?)"
            )
        p = np.clip(member.oof["probability"].to_numpy(dtype=float), PROB_EPS, 1 - PROB_EPS)
        logits.append(np.log(p / (1 - p)))
    oof = base.assign(probability=1 / (1 + np.exp(-np.mean(logits, axis=0))))
    for seed, member in zip(seeds, members, strict=True):
        oof[f"probability{MEMBER_SUFFIX.format(seed=seed)}"] = member.oof["probability"].to_numpy()
    fold_meta = [
        (fold.fold, ",".join(m.folds[i].run for m in members), fold.n_train)
        for i, fold in enumerate(members[0].folds)
    ]
    measured_on = (
        f"{members[0].measured_on}; ensemble: mean logit of {len(seeds)} models "
        f"(seeds {', '.join(map(str, seeds))})"
    )
    work = runs.run_dir(f"{name}-{CROSSVAL_DIR_SUFFIX}")
    work.mkdir(parents=True, exist_ok=True)
    first = runs.run_dir(f"{members[0].name}-{CROSSVAL_DIR_SUFFIX}") / LOOKALIKE_FILE
    (work / LOOKALIKE_FILE).unlink(missing_ok=True)
    if members[0].lookalike and first.is_file():
        shutil.copyfile(first, work / LOOKALIKE_FILE)
    report = _report(
        config, name, oof, fold_meta, fold_seed, measured_on, work, members[0].lookalike
    )
    return report, members


# Final model ------------------------------------------------------------------------------------
def train_final(
    config: Mapping[str, Any], report: CrossValReport, export: str | os.PathLike
) -> Path:
    """Train on every image with ``config``; write the model with the CV threshold and metrics.

    Args:
        config: The resolved configuration the cross-validation used.
        report: Its :class:`CrossValReport` (threshold and metrics for the card).
        export: Model path without or with ``.keras`` (e.g. ``models/headct_real``).

    Returns:
        The written ``.keras`` path (its card ``.json`` beside it).
    """
    from hemo.model import save_model
    from hemo.train import resolve_path

    model, card, summary = _train_on_every_image(config)
    return save_model(model, resolve_path(export), _final_card(card, report, export, summary))


def train_final_ensemble(
    config: Mapping[str, Any],
    seeds: Sequence[int],
    report: CrossValReport,
    export: str | os.PathLike,
) -> Path:
    """Train one model per seed on every image, merge them, write with the ensemble's CV card.

    The members are runs ``<name>_s<seed>-final`` (reused when finished with the same config);
    :func:`hemo.model.merge_ensemble` makes one flat model whose logits are their mean, the
    combination the ensemble's cross-validation (:func:`crossval_ensemble`) measured.

    Returns:
        The written ``.keras`` path (its card ``.json`` beside it).
    """
    from hemo.model import merge_ensemble, save_model
    from hemo.train import resolve_path

    seeds = check_seeds(seeds)
    trained = [_train_on_every_image(member_config(config, seed)) for seed in seeds]
    models, cards, summaries = zip(*trained, strict=True)
    merged = merge_ensemble(models, cards)
    card = _final_card(cards[0], report, export, summaries[0])
    card = dataclasses.replace(
        card,
        training={
            **card.training,
            "ensemble": {
                "members": len(seeds),
                "seeds": list(seeds),
                "runs": [c.training.get("run", "") for c in cards],
                "combine": "mean of the members' logits (one merged graph)",
            },
        },
    )
    return save_model(merged, resolve_path(export), card)


def _train_on_every_image(config: Mapping[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """Train (or reuse) run ``<name>-final`` on every image; (model, card, data summary)."""
    from hemo.datasets import load_index, save_index
    from hemo.model import load_model
    from hemo.train import resolve_path, training_slice_range

    name = runs.check_run_name(config["name"] or "crossval")
    data = resolve_path(config["data"])
    index_df = load_index(data).reset_index(drop=True)
    work = runs.run_dir(f"{name}-{CROSSVAL_DIR_SUFFIX}")
    final_file = work / runs.CROSSVAL_FINAL_DIR / INDEX_FILE
    run_config = fold_config(config, f"{name}-{FINAL_RUN_SUFFIX}", final_file)
    all_rows = final_index(index_df)
    path = finished_run(run_config, final_file, all_rows)
    save_index(all_rows, final_file)
    path = path or _train_to_the_end(run_config)
    model, card = load_model(path / runs.MODEL_FILE)
    # Measured again here: a reused run may predate the slice range
    card = dataclasses.replace(card, slice_range=training_slice_range(run_config, index_df))
    positives = int(pd.to_numeric(index_df[LABEL_COLUMN]).sum())
    summary = {
        "images": {"train": len(index_df)},
        "positives_any": {"train": positives},
        "data": portable_path(data, config["data"]),
        "data_summary": (
            f"{len(index_df)} images ({positives} hemorrhage, {len(index_df) - positives} "
            "without), every image in training; threshold and metrics from cross-validation"
        ),
    }
    return model, card, summary


def _final_card(card: Any, report: CrossValReport, export: str | os.PathLike, summary: dict) -> Any:
    """The exported model's card: the run's card with the CV threshold, metrics and command."""
    training = {
        **card.training,
        **summary,
        "command": shlex.join(["hemo", *sys.argv[1:]]) if sys.argv[1:] else "",
    }
    if report.density is not None and isinstance(training.get("config"), dict):
        # the final run trained the network alone; the card's model is the blend
        training["config"] = {**training["config"], "density": True}
    return dataclasses.replace(
        card,
        name=Path(export).name.removesuffix(".keras"),
        threshold=report.threshold,
        metrics=report.card_metrics(),
        training=training,
        referral=report.band(),
        density=report.density,
    )


def format_report(report: CrossValReport) -> str:
    """A short human-readable table of the report (per fold, mean +/- std, pooled)."""
    lines = [f"{'fold':>6} " + " ".join(f"{m:>12}" for m in SUMMARY_METRICS)]
    for f in report.folds:
        lines.append(f"{f.fold:>6} " + " ".join(_cell(f.metrics[m]) for m in SUMMARY_METRICS))
    lines.append(
        f"{'mean':>6} "
        + " ".join(
            _cell(report.summary[m]["mean"], report.summary[m]["std"]) for m in SUMMARY_METRICS
        )
    )
    lines.append(f"{'pooled':>6} " + " ".join(_cell(report.pooled.get(m)) for m in SUMMARY_METRICS))
    ci = {k: v for k, v in report.pooled.get("ci95", {}).items() if v is not None}
    if ci:
        lines.append(
            "pooled 95 % CI (stratified bootstrap): "
            + "  ".join(f"{k} {lo:.3f}-{hi:.3f}" for k, (lo, hi) in ci.items())
        )
    lines.append(f"threshold {report.threshold:.4f} ({report.threshold_method}, out-of-fold)")
    if report.lookalike:
        grouped = report.lookalike
        lines.append(
            f"look-alike images kept in one fold: {grouped['images_grouped']} images in "
            f"{grouped['multi_groups']} groups (correlation >= {grouped['threshold']:g}; "
            f"pairs in {LOOKALIKE_FILE})"
        )
    lines += _referral_lines(report.referral)
    return "\n".join(lines)


def _referral_lines(referral: dict[str, Any] | None) -> list[str]:
    """The referral band's lines of :func:`format_report`."""
    if not referral:
        return []
    if "band" not in referral:
        return [f"no referral band: {referral['error']}"]
    band = referral["band"]
    lines = [
        f"referral band {band['low']:.4f}-{band['high']:.4f} (decided calls to reach accuracy "
        f"{band['target_accuracy']:g} out-of-fold):"
    ]
    for key, title in (("out_of_fold", "out-of-fold"), ("nested", "held out (nested)")):
        r = referral[key]
        lines.append(
            f"  {title}: {r['referred']} of {r['n']} referred, {r['errors_referred']} of "
            f"{r['errors']} errors among them; decided accuracy {_share(r['accuracy'])}, "
            f"sensitivity {_share(r['sensitivity'])}, specificity {_share(r['specificity'])}"
        )
    return lines


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(value: float | None, spread: float | None = None) -> str:
    """One right-aligned table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'n/a':>12}"
    text = f"{value:.3f}" if spread is None else f"{value:.3f}+/-{spread:.3f}"
    return f"{text:>12}"


def report_json(report: CrossValReport) -> str:
    """The report as JSON text (stdout of ``hemo crossval --json``)."""
    return json.dumps(report.to_dict(), indent=2, default=str)


__all__ = [
    "CrossValReport",
    "FoldResult",
    "assign_folds",
    "check_folds",
    "check_seeds",
    "crossval",
    "crossval_ensemble",
    "final_index",
    "finished_run",
    "fold_index",
    "format_report",
    "member_config",
    "report_json",
    "train_final",
    "train_final_ensemble",
]
