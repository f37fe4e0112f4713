"""Adapter for Kaggle "Head CT - hemorrhage" (felipekitamura/head-ct-hemorrhage).

Layout as the download unpacks::

    ROOT/labels.csv          header "id, hemorrhage" (note the space after the comma)
    ROOT/head_ct/000.png     file names zero-padded to three digits, ids in labels.csv are not
                             (``ROOT/head_ct/head_ct/`` and ``ROOT/`` are accepted too)

Quirks handled on purpose:

* Column names are stripped (``" hemorrhage"`` -> ``"hemorrhage"``).
* Ids are matched to files by integer value of the file stem, so padding does not matter, and ids
  are never assumed contiguous (the shared sample has 0-69 and 100-169).
* A label row without an image and an image without a label row are reported as problems and
  left out of the index; neither stops the indexing.

The set has no patient, study or series identifiers: each image is its own group for splitting
(``patient_id`` is missing), and the subtype columns are missing (the set only says "any").
Images are already windowed 8-bit PNGs (no Hounsfield units).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hemo.datasets.schema import (
    BAD_LABEL,
    MISSING_IMAGE,
    MISSING_LABEL,
    AdapterResult,
    Problem,
    make_frame,
)
from hemo.errors import DatasetError

log = logging.getLogger(__name__)

LAYOUT = "kaggle_head_ct"
LABELS_FILE = "labels.csv"
IMAGE_DIR = "head_ct"
ID_COLUMN = "id"
LABEL_COLUMN = "hemorrhage"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _read_labels(labels_path: Path) -> pd.DataFrame:
    """Read labels.csv with stripped column names (a UTF-8 byte-order mark dropped, quotes
    read as CSV quotes; a trailing comma never turns the first column into the row labels);
    raise when the columns are not there."""
    try:
        labels = pd.read_csv(
            labels_path, skipinitialspace=True, index_col=False, encoding="utf-8-sig"
        )
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read the labels: {exc}", labels_path) from exc
    labels = labels.rename(columns=lambda c: str(c).strip().lower())
    missing = {ID_COLUMN, LABEL_COLUMN} - set(labels.columns)
    if missing:
        raise DatasetError(
            f"expected columns 'id, hemorrhage', found {list(labels.columns)}", labels_path
        )
    return labels


def looks_like(root: Path) -> bool:
    """Whether ``root`` holds labels.csv with the ``id, hemorrhage`` columns."""
    labels_path = root / LABELS_FILE
    if not labels_path.is_file():
        return False
    try:
        header = labels_path.open(encoding="utf-8", errors="replace").readline()
    except OSError:
        return False
    header = header.lstrip("\ufeff")  # a byte-order mark from a spreadsheet's CSV export
    names = {name.strip().strip('"').strip().lower() for name in header.split(",")}
    return {ID_COLUMN, LABEL_COLUMN} <= names


def _has_images(folder: Path) -> bool:
    """Whether ``folder`` holds a numerically named image (``000.png``)."""
    return any(p.suffix.lower() in IMAGE_SUFFIXES and p.stem.isdigit() for p in folder.iterdir())


def image_dir(root: Path) -> Path:
    """The folder holding the PNGs: ``ROOT/head_ct``, ``ROOT/head_ct/head_ct`` or ``ROOT``.

    Kaggle's archive has been seen unpacked both ways; the first candidate holding numerically
    named images wins (``ROOT`` when none does).
    """
    for candidate in (root / IMAGE_DIR, root / IMAGE_DIR / IMAGE_DIR, root):
        if candidate.is_dir() and _has_images(candidate):
            return candidate
    return root


def _data_lines(labels_path: Path, n_rows: int) -> list[int]:
    """The file line (1-based) of each of the table's ``n_rows`` data rows: pandas skips blank
    lines, so row k is not always line k + 2. Positions past what the file shows (a quoted field
    over several lines) fall back to k + 2."""
    try:
        text = labels_path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except OSError:
        text = []
    found = [n for n, line in enumerate(text[1:], start=2) if line.strip()]
    return [found[k] if k < len(found) else k + 2 for k in range(n_rows)]


def _cell(value: object) -> str:
    """A labels.csv cell as it reads in the file (pandas made blank cells NaN, numbers floats)."""
    if value is None or (isinstance(value, float) and value != value):
        return "(blank)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def index(root: Path, workers: int | None = None) -> AdapterResult:
    """Index a Kaggle head-CT folder.

    Args:
        root: The folder holding ``labels.csv``.
        workers: Unused (no headers to read); accepted for a uniform adapter signature.

    Returns:
        One row per labelled image, and the problems met.

    Raises:
        DatasetError: labels.csv is missing or lacks the ``id``/``hemorrhage`` columns (a row
            whose label is not 0/1 is a ``bad_label`` problem; the other rows are indexed).
    """
    labels_path = root / LABELS_FILE
    labels = _read_labels(labels_path)
    ids = pd.to_numeric(labels[ID_COLUMN], errors="coerce")
    values = pd.to_numeric(labels[LABEL_COLUMN], errors="coerce")
    # A row whose id is not a whole number or whose label is not 0/1 is reported (its line in
    # the file, the text as written) and left out; the other rows are indexed
    whole = ids.notna() & (ids == ids.round())
    bad = ~whole | ~values.isin([0, 1])
    problems: list[Problem] = []
    lines = _data_lines(labels_path, len(labels))
    for position in np.flatnonzero(bad.to_numpy()):
        i = labels.index[position]
        problems.append(
            Problem(
                BAD_LABEL,
                f"{labels_path}:line {lines[position]}",
                f"id {_cell(labels.at[i, ID_COLUMN])}, hemorrhage "
                f"{_cell(labels.at[i, LABEL_COLUMN])}: hemorrhage must be 0 or 1 and id a whole "
                "number",
            )
        )
    # an image whose only rows are bad is reported once (bad_label), not also as unlabelled
    bad_ids = {int(v) for v in ids[bad & whole]}
    ids, values = ids[~bad], values[~bad]

    folder = image_dir(root)
    files: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem.isdigit():
            files.setdefault(int(path.stem), path)

    label_of: dict[int, int] = {}
    conflicting: set[int] = set()
    for image_id, value in zip(ids.astype(int), values.astype(int), strict=True):
        if label_of.get(image_id, value) != value:
            conflicting.add(image_id)
        label_of[image_id] = value
    for image_id in sorted(conflicting):
        del label_of[image_id]
        problems.append(
            Problem(
                BAD_LABEL, f"{labels_path}:id={image_id}", "id has rows with both labels 0 and 1"
            )
        )
    rows = []
    for image_id in sorted(label_of):
        path = files.get(image_id)
        if path is None:
            problems.append(
                Problem(
                    MISSING_IMAGE, f"{labels_path}:id={image_id}", "label row has no image file"
                )
            )
            continue
        rows.append({"path": str(path.resolve()), "label_any": label_of[image_id]})
    for image_id in sorted(set(files) - set(label_of) - conflicting - bad_ids):
        problems.append(
            Problem(MISSING_LABEL, str(files[image_id]), f"id {image_id} has no row in labels.csv")
        )
    for problem in problems:
        log.warning("%s: %s", problem.path, problem.reason)
    return AdapterResult(make_frame(rows, LAYOUT), tuple(problems))
