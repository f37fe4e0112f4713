"""Adapter for a plain manifest CSV.

The manifest has at least the columns ``path`` and ``label_any`` (0/1), and may carry any other
index column (``epidural`` ... ``subdural``, ``patient_id``, ``study_uid``, ``series_uid``,
``slice_z``, ``split``, ``mask_path``); other columns are ignored. Relative paths are relative to
the manifest's folder. ``root`` is the CSV itself, or a folder holding ``manifest.csv`` (or a
single CSV with those two columns).

A row whose file does not exist (``missing_image``) or whose label is not 0/1 (``bad_label``) is
reported and left out. When every row has a valid ``split`` (train/val/test), the manifest's
split is kept as given; otherwise splits are assigned by :func:`hemo.datasets.build_index`.
Rows without ``patient_id`` fall back to ``study_uid``, then to the file, for grouping.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hemo.datasets.schema import (
    BAD_LABEL,
    INDEX_COLUMNS,
    MISSING_IMAGE,
    OPTIONAL_COLUMNS,
    AdapterResult,
    Problem,
    normalize_frame,
)
from hemo.errors import DatasetError

log = logging.getLogger(__name__)

LAYOUT = "manifest"
MANIFEST_FILE = "manifest.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "label_any")


def _columns(csv_path: Path) -> set[str]:
    """Stripped column names of a CSV's header line (empty when unreadable)."""
    try:
        header = csv_path.open(encoding="utf-8", errors="replace").readline()
    except OSError:
        return set()
    return {name.strip().strip('"') for name in header.split(",")}


def find_manifest(root: Path) -> Path | None:
    """The manifest CSV that ``root`` is or holds, else ``None``."""
    if root.is_file():
        return root if root.suffix.lower() == ".csv" else None
    if not root.is_dir():
        return None
    named = root / MANIFEST_FILE
    if named.is_file():
        return named
    candidates = [p for p in sorted(root.glob("*.csv")) if set(REQUIRED_COLUMNS) <= _columns(p)]
    return candidates[0] if len(candidates) == 1 else None


def looks_like(root: Path) -> bool:
    """Whether ``root`` is, or holds, a CSV with ``path`` and ``label_any`` columns."""
    csv_path = find_manifest(root)
    return csv_path is not None and set(REQUIRED_COLUMNS) <= _columns(csv_path)


def index(root: Path, workers: int | None = None) -> AdapterResult:
    """Index a manifest CSV.

    Args:
        root: The CSV, or a folder holding it.
        workers: Unused (nothing to read but the CSV); accepted for a uniform signature.

    Returns:
        One row per valid manifest row (absolute paths), and the problems met.

    Raises:
        DatasetError: no manifest found, or it lacks ``path``/``label_any``.
    """
    csv_path = find_manifest(root)
    if csv_path is None:
        raise DatasetError(f"no {MANIFEST_FILE} (a CSV with columns path,label_any)", root)
    try:
        raw = pd.read_csv(csv_path, dtype={"path": str}, skipinitialspace=True)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read the manifest: {exc}", csv_path) from exc
    raw = raw.rename(columns=lambda c: str(c).strip())
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise DatasetError(
            f"missing columns {missing}: a manifest needs at least path,label_any", csv_path
        )
    keep = [c for c in (*INDEX_COLUMNS, *OPTIONAL_COLUMNS) if c in raw.columns]
    frame = raw[keep].copy()
    base = csv_path.parent.resolve()
    frame["path"] = [str((base / p).resolve()) for p in frame["path"].astype(str)]
    if "mask_path" in frame:
        frame["mask_path"] = [
            None if pd.isna(p) else str((base / str(p)).resolve()) for p in frame["mask_path"]
        ]

    problems: list[Problem] = []
    labels = pd.to_numeric(frame["label_any"], errors="coerce")
    bad_label = ~labels.isin([0, 1])
    exists = pd.Series([Path(p).is_file() for p in frame["path"]], index=frame.index)
    for i in frame.index[bad_label]:
        problems.append(
            Problem(
                BAD_LABEL,
                f"{csv_path}:{frame.at[i, 'path']}",
                f"label_any must be 0 or 1, got {_plain(raw.at[i, 'label_any'])!r}",
            )
        )
    for i in frame.index[~exists & ~bad_label]:
        problems.append(Problem(MISSING_IMAGE, frame.at[i, "path"], f"listed in {csv_path.name}"))
    frame = frame[exists & ~bad_label]
    frame["source"] = LAYOUT
    if "split" in frame and not frame["split"].isin(["train", "val", "test"]).all():
        log.info("%s: split column incomplete or invalid; splits will be assigned", csv_path)
        frame = frame.drop(columns="split")
    for problem in problems:
        log.warning("%s: %s: %s", problem.kind, problem.path, problem.reason)
    return AdapterResult(normalize_frame(frame), tuple(problems))


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds (``2``, not ``np.int64(2)``), for messages."""
    return value.item() if isinstance(value, np.generic) else value
