"""Downloadable reports of predictions: CSV, JSON and the overlay PNG (pure, no Streamlit).

Reports carry the input's name (the upload's file name or member path), the model's numbers and
the slice position; never patient data and never DICOM UIDs, so a report can be shared as is.
A slice's row names its series (``series``); the CSV also holds one row per series with the
series' verdict (``level`` ``"study"``), and on every row the model and what a reader must know
about the call (``model``, ``note``: a model trained only on phantoms, an image that looks like
one the model was trained on), so the file alone tells what the page says. Every report carries
the research-tool notice (:data:`hemo.config.NOTICE`): the JSON's ``notice``, the CSV's last
column, the PNG's ``Disclaimer`` text chunk (a keyword the PNG standard defines).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from hemo.anatomy import deciding_slices
from hemo.config import NOTICE

#: Digits kept for probabilities in reports.
PROBABILITY_DIGITS = 6
#: Digits kept for slice positions in reports (mm: a micrometre).
MM_DIGITS = 3
#: Columns every report row has, before the per-label probabilities.
BASE_COLUMNS: tuple[str, ...] = (
    "source",
    "slice",
    "slice_z_mm",
    "probability",
    "verdict",
    "threshold",
    "outside_range",
    "frame",
    "uncertain",
    "error",
)
POSITIVE = "hemorrhage"
NEGATIVE = "no hemorrhage"
#: A series' verdict when none of its slices is in the model's range (as the Predict page says).
NO_VERDICT = "none"
#: PNG text chunks of every overlay PNG (``Disclaimer`` is a keyword of the PNG standard).
PNG_DISCLAIMER = "Disclaimer"
#: The CSV's last column: the research-tool notice, on every row (a CSV has no header block).
NOTICE_COLUMN = "notice"
#: The CSV column that says what a row is about (a series as a whole, one slice of it, or a file).
LEVEL_COLUMN = "level"
STUDY_LEVEL = "study"
SLICE_LEVEL = "slice"
FILE_LEVEL = "file"


def verdict(positive: bool) -> str:
    """The verdict word for a positive/negative call."""
    return POSITIVE if positive else NEGATIVE


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), PROBABILITY_DIGITS)


def _round_mm(value: float | None) -> float | None:
    return None if value is None else round(float(value), MM_DIGITS)


def prediction_row(
    prediction: Any,
    slice_number: int | None = None,
    series: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One report row for a :class:`hemo.predict.Prediction`.

    Args:
        prediction: The prediction (``source``, ``probability``, ``probabilities``, ``positive``,
            ``threshold``, ``slice_z_mm``, ``outside_range``; ``frame`` for a frame of a
            multi-frame DICOM; ``uncertain`` when the card has a referral band).
        slice_number: 1-based position of the slice in its series, if it is one.
        series: The name of that series (its study summary's ``source``), if it is one.
        note: What a reader must know about this call (it looks like one of the model's
            training images, say), or ``None``.

    Returns:
        A JSON-ready dict: the base columns, ``p_<label>`` per model output, then ``series``
        (``None`` for a lone scan) and ``note``. A slice outside
        the model's range gets the verdict :data:`NO_VERDICT` and ``uncertain`` ``None``, as on
        the Predict page: its probability is not a finding, so it is no call to refer either.
    """
    outside = getattr(prediction, "outside_range", None)
    row: dict[str, Any] = {
        "source": str(prediction.source),
        "slice": slice_number,
        "slice_z_mm": _round_mm(getattr(prediction, "slice_z_mm", None)),
        "probability": _round(prediction.probability),
        "verdict": NO_VERDICT if outside else verdict(bool(prediction.positive)),
        "threshold": _round(prediction.threshold),
        "outside_range": outside,
        "frame": getattr(prediction, "frame", None),
        "uncertain": None if outside else getattr(prediction, "uncertain", None),
        "error": None,
    }
    for label, value in dict(getattr(prediction, "probabilities", {}) or {}).items():
        row[f"p_{label}"] = _round(value)
    row["series"] = series
    row["note"] = note
    return row


def error_row(name: str, message: str, series: str | None = None) -> dict[str, Any]:
    """One report row for an input that could not be read or predicted (of ``series``, if any)."""
    return {column: None for column in BASE_COLUMNS} | {
        "source": name,
        "error": message,
        "series": series,
        "note": None,
    }


def study_row(study: Mapping[str, Any]) -> dict[str, Any]:
    """The CSV row of a series as a whole, from its :func:`study_summary`.

    ``source`` and ``series`` are the series' name, ``slice`` its deciding slice (1-based),
    ``probability``, ``verdict``, ``threshold`` and ``uncertain`` the series'; ``outside_range``
    says when no slice was in the model's range (then the verdict is :data:`NO_VERDICT`).
    """
    no_slice_in_range = study["slices_in_range"] == 0
    return {column: None for column in BASE_COLUMNS} | {
        "source": study["source"],
        "slice": study["most_suspicious_slice"],
        "probability": study["probability"],
        "verdict": study["verdict"],
        "threshold": study["threshold"],
        "outside_range": "no slice in the model's range" if no_slice_in_range else None,
        "uncertain": study["uncertain"],
        "series": study["source"],
        "note": study.get("note"),
    }


def report_frame(
    rows: Iterable[Mapping[str, Any]],
    studies: Sequence[Mapping[str, Any]] = (),
    model: str | None = None,
    note: str | None = None,
) -> pd.DataFrame:
    """Report rows as a frame, one row per series (:func:`study_row`) first, every row able to
    stand alone (a CSV has no header block).

    Columns: the base columns, ``p_<label>`` in first-seen order, then ``series``, ``level``
    (what the row is about: ``"study"``, a series as a whole; ``"slice"``, a row with a slice
    number; ``"file"``, a lone scan or an input that failed), ``model`` (``model`` on every row),
    ``note`` (``note``, what holds for every call, joined with the row's own) and ``notice``
    (:data:`hemo.config.NOTICE` on every row).
    """
    records = [study_row(s) | {LEVEL_COLUMN: STUDY_LEVEL} for s in studies]
    records += [
        dict(r) | {LEVEL_COLUMN: SLICE_LEVEL if r.get("slice") is not None else FILE_LEVEL}
        for r in rows
    ]
    for record in records:
        record["model"] = model
        record["note"] = "; ".join(n for n in (note, record.get("note")) if n) or None
        record[NOTICE_COLUMN] = NOTICE
    tail = ["series", LEVEL_COLUMN, "model", "note", NOTICE_COLUMN]
    extra = list(
        dict.fromkeys(k for r in records for k in r if k not in BASE_COLUMNS and k not in tail)
    )
    return pd.DataFrame(records, columns=[*BASE_COLUMNS, *extra, *tail])


def report_csv(
    rows: Iterable[Mapping[str, Any]],
    studies: Sequence[Mapping[str, Any]] = (),
    model: str | None = None,
    note: str | None = None,
) -> bytes:
    """The report as UTF-8 CSV bytes: one row per input or slice, after one per series (see
    :func:`report_frame` for ``model`` and ``note``)."""
    return report_frame(rows, studies, model, note).to_csv(index=False).encode("utf-8")


def report_json(
    rows: Iterable[Mapping[str, Any]],
    model: Mapping[str, Any] | None = None,
    studies: Sequence[Mapping[str, Any]] = (),
    note: str | None = None,
) -> bytes:
    """The report as UTF-8 JSON bytes.

    Args:
        rows: Report rows (:func:`prediction_row`, :func:`error_row`).
        model: What identifies the model (name, architecture, threshold).
        studies: Study-level results (:func:`study_summary`).
        note: What a reader of the report must know about its calls (e.g. a model trained
            only on synthetic phantoms: ``hemo predict --json``'s ``note``), or ``None``.

    Returns:
        ``{"notice": ..., "model": ..., "note": ..., "studies": [...], "results": [...]}``
        encoded (``notice``: :data:`hemo.config.NOTICE`); NaN
        becomes null.
    """
    results = [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]
    payload = {
        "notice": NOTICE,
        "model": dict(model or {}),
        "note": note,
        "studies": list(studies),
        "results": results,
    }
    return json.dumps(payload, indent=2, default=str).encode("utf-8")


def study_summary(
    name: str,
    probabilities: Sequence[float],
    threshold: float,
    outside_range: Sequence[str | None] | None = None,
    referral: Any | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Study-level numbers of a series from its per-slice probabilities.

    The study probability is the highest slice probability (a bleed on any slice makes the study
    positive), the rule of the RSNA-2019 ``any`` label lifted to the study, taken over the
    slices inside the model's range (:mod:`hemo.anatomy`) when some are outside it.

    Args:
        name: The series' name (upload name or folder).
        probabilities: P(any) per slice, in anatomical order.
        threshold: The model's operating threshold.
        outside_range: Per slice, why it is outside the model's range, else ``None``;
            omitted: every slice is in range. When no slice is in range, every slice counts.
        referral: The card's :class:`hemo.referral.ReferralBand`, or ``None``.
        note: What a reader must know about the series as a whole (it looks incomplete:
            :func:`hemo.series.coverage_note`), or ``None``.

    Returns:
        ``source``, ``slices``, ``probability``, ``verdict`` (:data:`NO_VERDICT` when no slice
        is in range: such slices are not findings), ``threshold``,
        ``most_suspicious_slice`` (1-based), ``positive_slices`` (in range),
        ``slices_in_range``, ``outside_range_slices`` (1-based),
        ``probability_all_slices``, ``uncertain`` (the study probability lies in the
        referral band; ``None`` without a band or without a slice in range) and ``note``.

    Raises:
        ValueError: ``probabilities`` is empty, or ``outside_range`` has another length.
    """
    values = np.asarray(probabilities, dtype=np.float64)
    if values.size == 0:
        raise ValueError(f"{name}: a study needs at least one slice probability")
    reasons = [None] * values.size if outside_range is None else list(outside_range)
    if len(reasons) != values.size:
        raise ValueError(
            f"{name}: {len(reasons)} range flags for {values.size} slice probabilities"
        )
    inside = np.array([r is None for r in reasons])
    pooled, top = deciding_slices(values, reasons)  # the rule hemo predict pools by
    return {
        "source": name,
        "slices": int(values.size),
        "probability": _round(values[top]),
        "verdict": verdict(bool(values[top] >= threshold)) if inside.any() else NO_VERDICT,
        "threshold": _round(threshold),
        "most_suspicious_slice": top + 1,
        "positive_slices": int((values[pooled] >= threshold).sum()),
        "slices_in_range": int(inside.sum()),
        "outside_range_slices": [int(i) + 1 for i in np.flatnonzero(~inside)],
        "probability_all_slices": _round(values.max()),
        # no slice in range: no call, so none to refer (as for such a slice's own row)
        "uncertain": (
            None
            if referral is None or not inside.any()
            else bool(referral.refers(float(values[top])))
        ),
        "note": note,
    }


def png_bytes(image: npt.ArrayLike) -> bytes:
    """Encode an image as PNG bytes carrying the research-tool notice (a ``Disclaimer`` chunk).

    Args:
        image: uint8 (H, W) or (H, W, 3), or float in [0, 1] (scaled to 0-255). Not modified.

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: the array is not 2-D or 3-channel.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"a PNG needs an (H, W) or (H, W, 3) array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.rint(np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    info = PngInfo()
    info.add_text(PNG_DISCLAIMER, NOTICE)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
