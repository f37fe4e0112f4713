"""Where in the head a slice lies, read from its pixels, and the range of slices a model knows.

A model trained on mid-brain slices (the Kaggle head-CT images) has never seen the skull base
(orbits, sinuses, petrous bones) or the vertex (the skull cut tangentially, then only scalp), and
its output there is not a finding: the shipped real-scan model calls every vertex slice of a real
negative series positive, so a whole series would be called positive by slices it cannot read.

Two numbers describe a slice in display grayscale (the brain window for DICOM):

- ``soft_tissue_fraction``: the share of the head's cross-section (its largest connected region
  above the head crop's gray threshold, holes filled) that is neither air nor saturated bone. About
  0.6-1.0 on mid-brain slices; lower where bone and air sinuses fill the section (skull base) or
  the skull is cut tangentially (vertex).
- ``head_area_px``: that section's area. Within one series (one pixel spacing), a slice whose
  section is under :data:`MIN_RELATIVE_HEAD_AREA` of the series' largest is an end of the head.

A :class:`SliceRange` fitted on a model's training images (:func:`fit_slice_range`: the lowest
soft-tissue fraction seen, less :data:`RANGE_MARGIN`) goes in the model card; predictions then
mark slices and images outside it, and a series' verdict is taken over the slices inside it.

Whatever the card, a DICOM localizer (scout) and a sagittal or coronal reformat are outside
every model's range too (:func:`plane_reason`, read from the header): the models were trained
on axial slices.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from hemo.errors import HemoError, InputError, ModelError
from hemo.preprocess import HEAD_GRAY_THRESHOLD, largest_component

log = logging.getLogger(__name__)

#: Display gray of soft tissue: above air and fat, below bone saturated by the brain window.
SOFT_TISSUE_GRAY_RANGE = (0.10, 0.98)
#: Taken off the lowest soft-tissue fraction of the training images, so that slices like the
#: least typical training image are still in range.
RANGE_MARGIN = 0.03
#: A slice whose head section is under this share of its series' largest is an end of the head.
MIN_RELATIVE_HEAD_AREA = 0.4
#: Slices are measured on every k-th pixel, k chosen so the longer side is at most this: the
#: shares are the same to about 0.005 and a 512 x 512 slice costs 0.1 ms instead of 1.8 ms.
MEASURE_SIDE_PX = 128
#: Training images read by :func:`fit_slice_range` at most (a seeded sample beyond): the lowest
#: share of 2000 images is within the margin of a whole RSNA set's, read in seconds, not hours.
MAX_FIT_IMAGES = 2000
#: Seed of that sample.
FIT_SEED = 0
#: A slice whose plane is tilted more than this from axial is a sagittal or coronal reformat
#: (degrees; head CT gantry tilt stays within about 30).
MAX_AXIAL_TILT_DEG = 45.0
#: (0008,0008) Image Type value of a localizer (scout) image.
LOCALIZER = "LOCALIZER"
#: Threads reading training images for :func:`fit_slice_range`.
FIT_WORKERS = 4


@dataclass(frozen=True)
class SliceAnatomy:
    """What a slice shows of the head.

    Attributes:
        soft_tissue_fraction: Share of the head section neither air nor bone, in [0, 1]
            (0 when no head is found).
        head_area_px: Area of the head section in pixels of the slice (0 when none is found;
            counted on the subsampled grid, so a multiple of the stride squared).
    """

    soft_tissue_fraction: float
    head_area_px: int


@dataclass(frozen=True)
class SliceRange:
    """The slices a model was trained on, as :class:`SliceAnatomy` bounds (stored in its card).

    Attributes:
        min_soft_tissue_fraction: Slices below it are outside the range.
        min_relative_head_area: Series slices whose head section is under this share of the
            series' largest are outside the range.
        lowest_seen: The lowest soft-tissue fraction among the training images.
        images: Training images measured.
    """

    min_soft_tissue_fraction: float
    min_relative_head_area: float
    lowest_seen: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict for the model card."""
        return {
            "min_soft_tissue_fraction": round(self.min_soft_tissue_fraction, 4),
            "min_relative_head_area": self.min_relative_head_area,
            "lowest_seen": round(self.lowest_seen, 4),
            "images": self.images,
            "rule": (
                "a slice or image is outside the model's range when its soft-tissue fraction is "
                "under min_soft_tissue_fraction or, in a series, its head section is under "
                "min_relative_head_area of the series' largest; series verdicts use the "
                "slices in range"
            ),
        }

    @classmethod
    def from_dict(cls, data: Any) -> SliceRange:
        """The range from :meth:`to_dict` output.

        Raises:
            ModelError: a field is missing or not a number in [0, 1].
        """
        try:
            values = (
                float(data["min_soft_tissue_fraction"]),
                float(data["min_relative_head_area"]),
                float(data["lowest_seen"]),
            )
            images = int(data["images"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model card: slice_range is malformed ({exc!r})") from exc
        if not all(0.0 <= v <= 1.0 for v in values) or images < 1:
            raise ModelError(f"model card: slice_range values out of range: {data}")
        return cls(*values, images)

    def reason(self, anatomy: SliceAnatomy, largest_area_px: int | None = None) -> str | None:
        """Why a slice is outside the range, or ``None`` when it is inside.

        Args:
            anatomy: The slice's :class:`SliceAnatomy`.
            largest_area_px: The largest head section of its series; ``None`` for a lone slice
                (the area rule is then not applied).
        """
        fraction = anatomy.soft_tissue_fraction
        if fraction < self.min_soft_tissue_fraction:
            value, limit = _percent_pair(fraction, self.min_soft_tissue_fraction)
            return (
                f"soft tissue is {value} of the head section, under the {limit} minimum "
                "learned from the images the model was trained on (skull base or vertex)"
            )
        if largest_area_px:
            share = anatomy.head_area_px / largest_area_px
            if share < self.min_relative_head_area:
                value, limit = _percent_pair(share, self.min_relative_head_area)
                return (
                    f"the head section is {value} of the series' largest, under {limit} "
                    "(top or bottom of the head)"
                )
        return None

    def reasons(self, anatomies: Sequence[SliceAnatomy]) -> list[str | None]:
        """:meth:`reason` for every slice of one series (the area rule over the series)."""
        largest = max((a.head_area_px for a in anatomies), default=0)
        return [self.reason(a, largest) for a in anatomies]


def slice_anatomy(gray: npt.ArrayLike) -> SliceAnatomy:
    """The :class:`SliceAnatomy` of one display-grayscale slice.

    Measured on every k-th pixel in both directions (the longer side at most
    :data:`MEASURE_SIDE_PX`), the same way for training images and for slices to predict.

    Args:
        gray: (H, W) display grayscale in [0, 1] (an image, or a DICOM slice through the brain
            window: :func:`hemo.preprocess.to_display`). Not modified.

    Returns:
        The slice's soft-tissue fraction and head area; zeros when no head is found.

    Raises:
        InputError: ``gray`` is not a non-empty 2-D array.
    """
    arr = np.asarray(gray, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"slice_anatomy needs a non-empty (H, W) image, got shape {arr.shape}")
    stride = _stride(arr.shape)
    arr = arr[::stride, ::stride]
    found = largest_component(arr > HEAD_GRAY_THRESHOLD)
    if found is None:
        return SliceAnatomy(0.0, 0)
    labels, largest, _ = found
    contours, _ = cv2.findContours(
        (labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    head = np.zeros(arr.shape, dtype=np.uint8)
    cv2.drawContours(head, contours, -1, 1, thickness=cv2.FILLED)
    inside = head.astype(bool)
    area = int(inside.sum())
    low, high = SOFT_TISSUE_GRAY_RANGE
    tissue = int(np.count_nonzero((arr > low) & (arr < high) & inside))
    return SliceAnatomy(tissue / area if area else 0.0, area * stride * stride)


def scan_anatomy(scan: Any) -> SliceAnatomy:
    """:func:`slice_anatomy` of a ``CTSlice`` (through the brain window) or an ``Image2D``.

    A CT slice is windowed on the subsampled grid only (the same pixels
    :func:`slice_anatomy` would keep), which is what makes this cheap beside the model.
    """
    from hemo.preprocess import to_display

    hu = getattr(scan, "hu", None)
    if hu is None:
        return slice_anatomy(to_display(scan))
    stride = _stride(hu.shape)
    small = dataclasses.replace(scan, hu=hu[::stride, ::stride])
    anatomy = slice_anatomy(to_display(small))
    return dataclasses.replace(anatomy, head_area_px=anatomy.head_area_px * stride * stride)


def plane_reason(scan: Any) -> str | None:
    """Why a DICOM slice is not an axial cross-section like every model's training slices.

    Read from the header, for every model whatever its card: a localizer (scout, topogram) is a
    projection, not a slice ((0008,0008) Image Type holds ``LOCALIZER``), and a slice whose plane
    is more than :data:`MAX_AXIAL_TILT_DEG` from axial ((0020,0037) Image Orientation (Patient))
    is a sagittal or coronal reformat. Gantry tilt on head CT stays well inside that angle.

    Args:
        scan: A ``CTSlice``; images (no header) and slices without orientation give ``None``.

    Returns:
        The reason in words, or ``None`` for an axial slice (or when the header cannot tell).
    """
    metadata = getattr(scan, "metadata", None) or {}
    image_type = metadata.get("ImageType")
    values = image_type if isinstance(image_type, list | tuple) else [image_type]
    if any(str(v).strip().upper() == LOCALIZER for v in values if v is not None):
        return (
            "a localizer (scout) image, not a cross-sectional slice ((0008,0008) Image Type "
            "LOCALIZER)"
        )
    orientation = getattr(scan, "orientation", None)
    if orientation is None or len(orientation) != 6:
        return None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    norm = float(np.linalg.norm(normal))
    if norm == 0.0:
        return None
    tilt = float(np.degrees(np.arccos(min(1.0, abs(normal[2]) / norm))))
    if tilt > MAX_AXIAL_TILT_DEG:
        return (
            f"not an axial slice: its plane is {tilt:.0f} degrees from axial ((0020,0037) Image "
            "Orientation (Patient); a sagittal or coronal reformat), and the models were trained "
            "on axial slices"
        )
    return None


def outside_reasons(
    planes: Sequence[str | None],
    slice_range: SliceRange | None = None,
    anatomies: Sequence[SliceAnatomy] | None = None,
) -> list[str | None]:
    """Per slice of one series: its :func:`plane_reason`, else the slice range's reason.

    Args:
        planes: :func:`plane_reason` of each slice.
        slice_range: The model's range, or ``None`` (then only the plane counts).
        anatomies: The slices' anatomies, aligned with ``planes``; needed with ``slice_range``.
            The area rule compares axial slices only (a localizer's area is not a section's).
    """
    if slice_range is None or anatomies is None:
        return list(planes)
    axial = [a for a, plane in zip(anatomies, planes, strict=True) if plane is None]
    largest = max((a.head_area_px for a in axial), default=0)
    return [
        plane or slice_range.reason(anatomy, largest)
        for plane, anatomy in zip(planes, anatomies, strict=True)
    ]


#: Most decimals :func:`_percent_pair` gives a percentage.
MAX_PERCENT_DECIMALS = 4


def _percent_pair(value: float, limit: float) -> tuple[str, str]:
    """``value`` and ``limit`` as percentages with one decimal, or as many more as it takes
    for a value under its limit not to read as the limit ("55.5% under the 55.5%")."""
    for decimals in range(1, MAX_PERCENT_DECIMALS + 1):
        shown = f"{value:.{decimals}%}", f"{limit:.{decimals}%}"
        if shown[0] != shown[1]:
            break
    return shown


def deciding_slices(
    probabilities: npt.ArrayLike, reasons: Sequence[str | None]
) -> tuple[list[int], int]:
    """The slices of one series that decide its verdict, and the one among them that does.

    The one pooling rule of a series (``hemo predict``, the Predict page and its reports): the
    slices in the model's range count (``reasons`` ``None``: :func:`outside_reasons`); when none
    is, every slice is pooled, and the series gets no verdict (its numbers are not a finding).

    Args:
        probabilities: P(any) per slice, shape (N,), in the series' order.
        reasons: Per slice, why it is outside the model's range, else ``None``; length N.

    Returns:
        (indices of the pooled slices, in order; the index of the highest probability among
        them, the first one on a tie; a NaN probability, a model's failure, never decides
        unless every pooled one is NaN).

    Raises:
        ValueError: No slice, or ``reasons`` of another length.
    """
    values = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if values.size == 0 or len(reasons) != values.size:
        raise ValueError(
            f"a series verdict needs one range flag per slice probability, got {len(reasons)} "
            f"for {values.size}"
        )
    pooled = [i for i, reason in enumerate(reasons) if reason is None] or list(range(values.size))
    ranked = np.where(np.isnan(values[pooled]), -np.inf, values[pooled])
    return pooled, pooled[int(np.argmax(ranked))]


def _stride(shape: tuple[int, ...]) -> int:
    """Every how many pixels a slice of ``shape`` is measured (longer side <= MEASURE_SIDE_PX)."""
    return max(1, -(-max(shape) // MEASURE_SIDE_PX))


def fit_slice_range(
    sources: Iterable[Any],
    *,
    margin: float = RANGE_MARGIN,
    workers: int = FIT_WORKERS,
    max_images: int = MAX_FIT_IMAGES,
) -> SliceRange | None:
    """The range of a model's training images: their lowest soft-tissue fraction less ``margin``.

    Args:
        sources: Paths of the training images or DICOM slices.
        margin: Taken off the lowest fraction seen.
        workers: Reading threads.
        max_images: Beyond this many, a seeded sample of that size is measured.

    Returns:
        The range, or ``None`` when no image could be read. Unreadable files are logged and
        left out (training already reported them).
    """
    from hemo.io import read_scan

    def measure(source: Any) -> float | None:
        try:
            return scan_anatomy(read_scan(source)).soft_tissue_fraction
        except HemoError as exc:
            log.warning("slice range: %s left out: %s", source, exc)
            return None

    sources = list(sources)
    if len(sources) > max_images:
        keep = np.random.default_rng(FIT_SEED).choice(len(sources), max_images, replace=False)
        sources = [sources[i] for i in sorted(keep)]
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="hemo-range") as pool:
        fractions = [f for f in pool.map(measure, sources) if f is not None]
    if not fractions:
        return None
    lowest = min(fractions)
    return SliceRange(
        min_soft_tissue_fraction=max(0.0, lowest - margin),
        min_relative_head_area=MIN_RELATIVE_HEAD_AREA,
        lowest_seen=lowest,
        images=len(fractions),
    )
