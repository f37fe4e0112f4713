"""The index table every dataset adapter produces, and the problems it reports.

One row per image (docs/CONTRACTS.md, "Datasets"):

=====================  ==========  =============================================================
column                 dtype       meaning
=====================  ==========  =============================================================
``path``               str         absolute path in memory; relative to the parquet's folder on disk
``source``             str         layout that produced the row (``rsna``, ``cq500``, ...)
``label_any``          int8        1 if any hemorrhage, else 0
``epidural`` ...       Int8        one column per RSNA subtype; ``<NA>`` where the source has none
``patient_id``         str / NA    pseudonym of the patient; ``<NA>`` where the source has none
``study_uid``          str / NA    pseudonym of StudyInstanceUID (0020,000D) where known
``series_uid``         str / NA    pseudonym of SeriesInstanceUID (0020,000E) where known
``slice_z``            float64     position along the slice normal in mm; NaN where unknown
``split``              str         ``train`` / ``val`` / ``test``
``mask_path``          str / NA    optional: per-slice subtype bitmask PNG (phantoms)
=====================  ==========  =============================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hemo.config import SUBTYPES

#: Columns every index has, in this order.
INDEX_COLUMNS: tuple[str, ...] = (
    "path",
    "source",
    "label_any",
    *SUBTYPES,
    "patient_id",
    "study_uid",
    "series_uid",
    "slice_z",
    "split",
)
#: Columns an index may carry in addition.
OPTIONAL_COLUMNS: tuple[str, ...] = ("mask_path",)
#: Label columns: ``label_any`` then the subtypes.
LABEL_COLUMNS: tuple[str, ...] = ("label_any", *SUBTYPES)
#: Identifier columns (nullable strings).
ID_COLUMNS: tuple[str, ...] = ("patient_id", "study_uid", "series_uid")
#: Allowed values of ``split``.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Columns of :func:`hemo.datasets.quality_report`.
PROBLEM_COLUMNS: tuple[str, ...] = ("kind", "path", "reason")

# Kinds of problem an adapter or the quality report can find.
UNREADABLE = "unreadable"
MISSING_IMAGE = "missing_image"
MISSING_LABEL = "missing_label"
BAD_LABEL = "bad_label"
DUPLICATE = "duplicate"
LOOKALIKE = "lookalike"
MISSING_FILE = "missing_file"
UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Problem:
    """One data-quality finding about one file or label row.

    Attributes:
        kind: One of the kinds above (``unreadable``, ``missing_image``, ``missing_label``,
            ``bad_label``, ``duplicate``, ``lookalike``, ``missing_file``, ``unsupported``).
        path: The file (or label row, e.g. ``labels.csv:id=12``) the finding is about.
        reason: What is wrong, in words a person can act on.
    """

    kind: str
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """The problem as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class AdapterResult:
    """What an adapter returns: the rows it could index and the problems it met.

    Attributes:
        frame: Index rows (all :data:`INDEX_COLUMNS` but ``split``, which is left empty).
        problems: Findings that did not stop the indexing.
    """

    frame: pd.DataFrame
    problems: tuple[Problem, ...] = field(default_factory=tuple)


def make_frame(rows: Sequence[Mapping[str, Any]], source: str) -> pd.DataFrame:
    """Build a typed index frame from row dicts (missing keys become missing values).

    Args:
        rows: One mapping per image with any of :data:`INDEX_COLUMNS` / :data:`OPTIONAL_COLUMNS`.
        source: Value of the ``source`` column.

    Returns:
        A new frame with exactly the index columns (plus ``mask_path`` when any row has one),
        typed as described in the module docstring.
    """
    frame = pd.DataFrame(list(rows))
    frame["source"] = source
    return normalize_frame(frame)


def normalize_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``frame`` with the index columns in order and typed.

    Args:
        frame: Any frame holding at least ``path`` and ``label_any``. Not modified.

    Returns:
        A new frame: every index column present (missing ones filled with missing values),
        ``mask_path`` kept when present, other columns dropped.
    """
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    values = frame.reset_index(drop=True)
    for column in INDEX_COLUMNS:
        if column in values:
            out[column] = values[column]
        else:
            out[column] = pd.NA
    out["path"] = out["path"].astype(str)
    out["source"] = out["source"].astype("string").fillna("unknown").astype(str)
    out["label_any"] = pd.to_numeric(out["label_any"]).astype(np.int8)
    for column in SUBTYPES:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype("Int8")
    for column in ID_COLUMNS:
        out[column] = out[column].astype("string")
    out["slice_z"] = pd.to_numeric(out["slice_z"], errors="coerce").astype(np.float64)
    out["split"] = out["split"].astype("string")
    if "mask_path" in values:
        out["mask_path"] = values["mask_path"].astype("string")
    return out


def problems_frame(problems: Iterable[Problem]) -> pd.DataFrame:
    """Problems as a frame with columns :data:`PROBLEM_COLUMNS` (empty frame when none)."""
    rows = [p.to_dict() for p in problems]
    return pd.DataFrame(rows, columns=list(PROBLEM_COLUMNS)).astype(str)
