"""Group CT slices into series and order them along the slice normal.

Slices are grouped by (0020,000E) Series Instance UID and ordered by ``slice_z_mm`` (Image
Position (Patient) projected on the slice normal, PS3.3 C.7.6.2.1.1), ascending (inferior ->
superior for axial head CT). When any slice of a series lacks a position, the series is ordered
by (0020,0013) Instance Number (then frame number, for the frames of a multi-frame file)
instead; when that is missing too, by source name (logged).

Two slices at the same position (within :data:`POSITION_TOLERANCE_MM`), or with the same
instance number when ordering by it, are refused: hemo does not guess which copy is right.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from hemo import config
from hemo.dicom import CTSlice
from hemo.errors import LimitError, SeriesError

log = logging.getLogger(__name__)

#: Two slices closer than this along the normal are at the same position (mm).
POSITION_TOLERANCE_MM = 1e-3
#: Neighbouring slices farther apart than this many median spacings: slices missing between.
GAP_FACTOR = 1.5
#: ... and more than this many mm wider than the spacing (one missing thin slice is no gap).
MIN_GAP_MM = 2.5
#: Positions rounded in the file: a step this much over a limit is still within it.
GAP_TOLERANCE_MM = 0.05
#: Steps over this many slice thicknesses (the median step): only some slices of the series.
SPARSE_FACTOR = 2.0
#: Label of slices without a Series Instance UID in messages.
NO_SERIES_UID = "<no Series Instance UID>"


@dataclass(frozen=True, eq=False)
class Series:
    """One ordered series of slices.

    Attributes:
        series_uid: (0020,000E), or ``None`` for slices that carry none.
        study_uid: (0020,000D) of the slices (first non-empty one).
        slices: The slices, ordered by ``slice_z_mm`` ascending (see the module docstring).
    """

    series_uid: str | None
    study_uid: str | None
    slices: tuple[CTSlice, ...]

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def z_mm(self) -> tuple[float | None, ...]:
        """``slice_z_mm`` of each slice, in order."""
        return tuple(s.slice_z_mm for s in self.slices)

    @property
    def coverage_note(self) -> str | None:
        """:func:`coverage_note` of the series: why it looks incomplete, or ``None``."""
        return coverage_note(self.z_mm, [s.slice_thickness_mm for s in self.slices])

    @property
    def slice_spacing_mm(self) -> float | None:
        """Median distance between consecutive slice positions in mm, or ``None`` if unknown."""
        z = [v for v in self.z_mm if v is not None]
        if len(z) < 2 or len(z) != len(self.slices):
            return None
        return float(np.median(np.diff(np.asarray(z, dtype=np.float64))))


class DuplicateSliceError(SeriesError):
    """Two slices of one series at the same place: ``first`` and ``second`` (their labels) at
    ``where`` (``"z = 2.500 mm"``, or ``"Instance Number 3"`` when ordered by it)."""

    def __init__(self, message: str, first: str, second: str, where: str) -> None:
        super().__init__(message)
        self.first, self.second, self.where = first, second, where


def coverage_note(
    z_mm: Sequence[float | None], thickness_mm: Sequence[float | None] = ()
) -> str | None:
    """What a reader must know when a series looks incomplete, from its slice positions.

    Each step between neighbouring slices is judged against what is expected there: the
    series' median spacing, or the two slices' own thickness when larger (a protocol that
    goes from 3 mm slices at the skull base to 10 mm above is complete). Two signs (``None``
    when a position is unknown, or under three slices):

    - a **gap**: a step more than :data:`GAP_FACTOR` times the expected one and over
      :data:`MIN_GAP_MM` (plus :data:`GAP_TOLERANCE_MM`) beyond it: slices missing in between;
      one missing 0.6 mm or 2.5 mm slice is none;
    - **sparse** slices: most steps over :data:`SPARSE_FACTOR` times their slices' thickness
      (every few slices of a thin series, as when some files of a folder were chosen).

    Args:
        z_mm: ``slice_z_mm`` of the slices, in order.
        thickness_mm: Their slice thickness where known (same order), else empty.

    Returns:
        One sentence, ending in what it means for the verdict, or ``None``.
    """
    if len(z_mm) < 3 or any(z is None or not np.isfinite(z) for z in z_mm):
        return None
    steps = np.abs(np.diff(np.asarray(z_mm, dtype=np.float64)))
    spacing = float(np.median(steps))
    if spacing <= 0:
        return None
    thick = np.full(len(z_mm), np.nan)
    if len(thickness_mm) == len(z_mm):
        thick = np.array(
            [t if t is not None and np.isfinite(t) and t > 0 else np.nan for t in thickness_mm],
            dtype=np.float64,
        )
    pair = np.fmax(thick[:-1], thick[1:])  # NaN only where both slices' thickness is unknown
    expected = np.fmax(spacing, np.nan_to_num(pair, nan=0.0))
    limit = np.maximum(GAP_FACTOR * expected, expected + MIN_GAP_MM) + GAP_TOLERANCE_MM
    gaps = steps > limit
    found = []
    if gaps.any():
        found.append(
            f"{int(gaps.sum())} gap(s) in the slice positions (the largest "
            f"{float(steps.max()):.1f} mm where the slices are {spacing:.1f} mm apart)"
        )
    known = np.isfinite(pair)
    if known.any() and float(np.median(steps[known] / pair[known])) > SPARSE_FACTOR:
        found.append(
            f"slices {spacing:.1f} mm apart but {float(np.median(pair[known])):.3g} mm thick "
            "(only some slices of the series?)"
        )
    if not found:
        return None
    return (
        "the series looks incomplete: "
        + "; ".join(found)
        + ". The verdict covers only the slices given."
    )


def _order(uid: str | None, slices: list[CTSlice]) -> list[CTSlice]:
    label = uid or NO_SERIES_UID
    if all(s.slice_z_mm is not None for s in slices):
        ordered = sorted(slices, key=lambda s: (s.slice_z_mm, s.instance_number or 0))
        for a, b in zip(ordered, ordered[1:], strict=False):
            if abs(b.slice_z_mm - a.slice_z_mm) < POSITION_TOLERANCE_MM:  # type: ignore[operator]
                raise DuplicateSliceError(
                    f"series {label}: two slices at the same position z = {a.slice_z_mm:.3f} mm "
                    f"((0020,0032) Image Position (Patient)): {a.label} and {b.label}; remove "
                    "the duplicate",
                    a.label,
                    b.label,
                    f"z = {a.slice_z_mm:.3f} mm",
                )
        return ordered
    if all(s.instance_number is not None for s in slices):
        ordered = sorted(slices, key=lambda s: (s.instance_number, s.frame or 0))  # type: ignore[arg-type,return-value]
        for a, b in zip(ordered, ordered[1:], strict=False):
            if (a.instance_number, a.frame) == (b.instance_number, b.frame):
                raise DuplicateSliceError(
                    f"series {label}: no (0020,0032) Image Position (Patient) on every slice, and "
                    f"two slices share (0020,0013) Instance Number {a.instance_number}: "
                    f"{a.label} and {b.label}; remove the duplicate",
                    a.label,
                    b.label,
                    f"Instance Number {a.instance_number}",
                )
        return ordered
    log.warning(
        "series %s: neither positions nor instance numbers on every slice; ordered by name", label
    )
    return sorted(slices, key=lambda s: (s.source, s.frame or 0))


def group_series(slices: Iterable[CTSlice]) -> list[Series]:
    """Group slices by Series Instance UID and order each series.

    Args:
        slices: Slices in any order. Not modified.

    Returns:
        One :class:`Series` per series UID, sorted by (study UID, series UID); slices without a
        series UID form one series with ``series_uid=None``, listed last.

    Raises:
        DuplicateSliceError: two slices of a series at the same position (or instance number).
        LimitError: a series with more than ``config.MAX_SLICES_PER_SERIES`` slices.
    """
    groups: dict[str | None, list[CTSlice]] = {}
    for s in slices:
        groups.setdefault(s.series_uid, []).append(s)
    out = []
    for uid, members in groups.items():
        if len(members) > config.MAX_SLICES_PER_SERIES:
            raise LimitError(
                f"series {uid or NO_SERIES_UID} has {len(members)} slices, more than the limit "
                f"of {config.MAX_SLICES_PER_SERIES} (config.MAX_SLICES_PER_SERIES)"
            )
        study = next((s.study_uid for s in members if s.study_uid), None)
        out.append(Series(series_uid=uid, study_uid=study, slices=tuple(_order(uid, members))))
    return sorted(out, key=lambda s: (s.series_uid is None, s.study_uid or "", s.series_uid or ""))
