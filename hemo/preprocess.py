"""One preprocessing for training, evaluation, prediction, Grad-CAM and the pages.

An :class:`InputSpec` says what a model eats; :func:`to_model_input` turns any scan into it:

* mode ``"hu"`` (DICOM only): HU (optionally without what lies outside the head,
  ``dicom_head_only``) -> optional crop to the head -> pad to square with air ->
  resize once with ``cv2.INTER_AREA`` to ``size`` -> one linear window per channel
  (:func:`hemo.windowing.window` maths, in float32). Windowing after the resize costs one resize
  instead of one per window; it is the same everywhere, so training and prediction agree.
* mode ``"display"``: display grayscale (an image's pixels, or a DICOM -- optionally without
  what lies outside the head -- through ``display_window``) -> optional crop -> pad to square
  with black -> resize -> repeated to ``channels``; with ``asymmetry`` the last channel is instead the left-right asymmetry map
  ``max(0, x - mirror(x))``: how much brighter each pixel is than the pixel facing it across
  the vertical centre line. After the head crop that line is close to the midline, and a bleed,
  which is usually on one side, stands out against the normal brain facing it. With
  ``hyperdensity`` the channel before the asymmetry map (or the last, without it) is the
  hyperdensity map: how far each pixel inside the skull lies above the brain's median level
  (:func:`hyperdensity_map`); fresh blood is denser than brain, so a bleed is bright in it
  wherever it lies, also across the midline.

Optional brain-level normalisation (``brain_level``, mode ``"display"``): after the resize the
grayscale is multiplied so that the median of its soft-tissue pixels (display value in
:data:`TISSUE_GRAY_RANGE`: brain, blood and scalp, not the black background or white bone) lands
on ``brain_level``, the gain kept within :data:`BRAIN_GAIN_RANGE`. Exported images come through
many windows and display curves (the Kaggle PNGs' brain sits anywhere from 0.3 to 0.6), a DICOM
through one; black stays black, so in a brain window whose lower edge is 0 HU this is a change of
window width. Too little tissue (under :data:`MIN_TISSUE_FRACTION` of the pixels) leaves the
image as is. The asymmetry and hyperdensity maps are computed after it.

Optional black background (``black_background``, mode ``"display"``), first of all: an exported
image whose background is a flat gray (a photographed film, a screenshot, a gray frame) gets
everything outside the head's outline set to black, as air is in a DICOM through any brain
window (:func:`blacken_background`: the background's level is the median of a ring along the
image's edge; the head is the largest region brighter than it by
:data:`BACKGROUND_HEAD_MARGIN`). The head crop then finds the head instead of the whole gray
picture. An image whose background is black already, or not one flat gray, is left as it is.

Optional head only (``dicom_head_only``), DICOM input only (NIfTI slices too: they are
``CTSlice``), first of all: everything outside the head's outline (:func:`head_only` on the HU:
the largest 8-connected region above :data:`HEAD_ONLY_HU_THRESHOLD`, with its holes filled)
becomes air, in both modes, so the model input, the overlay view and lesion masks agree. A
DICOM holds the scanner's whole field of view: the head holder's arcs, the table, cables, which
the square crop around the head takes in at its corners; exported images (the Kaggle PNGs) are
framed without them. Images are fed as they are, so a model trained on exported images sees
them exactly as it was trained.

Crop to the head: threshold (HU > :data:`HEAD_HU_THRESHOLD` for HU, gray >
:data:`HEAD_GRAY_THRESHOLD` for display grayscale), keep the largest 8-connected component
(``cv2.connectedComponentsWithStats``), which drops borders and burned-in panel letters, then a
square box around it with a :data:`HEAD_MARGIN_FRACTION` margin. Every function is pure: inputs
are never modified.

Optional midline alignment (``align_midline``, with the crop): before cropping, the slice is
turned and moved so that the head's left-right symmetry axis (:func:`midline_transform`: the
tilt and position across which the head best mirrors itself) becomes the vertical centre line,
and the crop's box is widened to be symmetric about it. A head scanned tilted then comes out
upright and centred on its midline, so the asymmetry map compares each pixel with the one truly
facing it instead of showing a tilted skull's rim.

Optional mask outside the head (``mask_outside_head``), after the crop: bone (HU >
:data:`SKULL_HU_THRESHOLD`, gray > :data:`SKULL_GRAY_THRESHOLD`) -> its largest 8-connected
component plus every other one at least :data:`SKULL_MIN_PART_FRACTION` of its area (a skull cut
in pieces) -> their convex hull; everything outside the hull becomes background (air / black).
This removes panel letters, grey figure backgrounds and scalp that the crop's box keeps. When the
hull is implausibly small (under :data:`SKULL_MIN_HULL_FRACTION` of the image: no skull found) the
image is left as is.

:func:`prepare_many` is the batch path (training, evaluation, benchmarks): files -> read ->
:func:`to_model_input`, in chunks over a process pool, one (N, size, size, C) float32 array out;
a bad file is reported in the result and never stops the batch.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from hemo import config
from hemo.dicom import CTSlice
from hemo.errors import ConfigError, HemoError, InputError
from hemo.images import Image2D
from hemo.windowing import COMPOSITES, Window, get_window

log = logging.getLogger(__name__)

Scan = CTSlice | Image2D

MODES = ("hu", "display")
MIN_INPUT_SIZE = 16
MAX_INPUT_SIZE = 2048
MAX_CHANNELS = 4
#: Window used to render a DICOM to display grayscale when none is given.
DEFAULT_DISPLAY_WINDOW = "brain"
#: Tissue of the head (skin, fat, brain, bone) is above this; air and foam pillows are below.
HEAD_HU_THRESHOLD = -500.0
#: ``dicom_head_only``: the head's outline is found above this HU. Fat (about -100 HU) and skin
#: belong to the head, so the scalp stays whole; foam pads, blankets and air lie below it, so a
#: holder that touches the head only through its pad is cut off.
HEAD_ONLY_HU_THRESHOLD = -200.0
#: In display grayscale the black background is below this.
HEAD_GRAY_THRESHOLD = 0.05
#: Margin added on each side of the head box, as a fraction of its longer side.
HEAD_MARGIN_FRACTION = 0.05
#: Bone: HU above this is skull for ``mask_outside_head``.
SKULL_HU_THRESHOLD = 300.0
#: Bone in display grayscale (the brain window saturates bone to white).
SKULL_GRAY_THRESHOLD = 0.9
#: Bone is also anything above this fraction of the image's 99.5th percentile (figures whose
#: skull is not white).
SKULL_RELATIVE_THRESHOLD = 0.8
#: Bone components at least this fraction of the largest one are part of the skull.
SKULL_MIN_PART_FRACTION = 0.2
#: A skull hull smaller than this fraction of the image means no skull was found: no mask.
SKULL_MIN_HULL_FRACTION = 0.3
#: Pixels connect to their 8 neighbours in the head mask.
CONNECTIVITY = 8
#: Value outside the image when padding display grayscale (black).
GRAY_FILL = 0.0
#: ``black_background``: the edge ring whose median is the background's level, as a fraction of
#: the image's shorter side (at least one pixel).
BACKGROUND_RING_FRACTION = 0.01
#: ``black_background``: side of the median filter the background is judged on (noise, grain).
BACKGROUND_FILTER_SIZE = 5
#: ``black_background``: images with a shorter side than this are left as they are.
BACKGROUND_MIN_SIDE = 16
#: ``black_background``: a background brighter than this is not one (a head filling the image).
BACKGROUND_MAX_LEVEL = 0.4
#: ``black_background``: at least this share of the edge ring must lie within
#: :data:`BACKGROUND_TOLERANCE` of the background's level (one flat level, not a cut head).
BACKGROUND_MIN_EDGE_SHARE = 0.5
#: ``black_background``: edge pixels this close to the background's level are background.
BACKGROUND_TOLERANCE = 0.06
#: ``black_background``: the head is brighter than the background by this much (scalp, skull).
BACKGROUND_HEAD_MARGIN = 0.1
#: ``brain_level``: display values counted as soft tissue (above the background, below bone).
TISSUE_GRAY_RANGE = (0.1, 0.9)
#: ``brain_level``: the gain applied is clipped to this range.
BRAIN_GAIN_RANGE = (0.5, 2.0)
#: ``brain_level``: below this fraction of tissue pixels the image is left as is.
MIN_TISSUE_FRACTION = 0.05
#: Files per task of :func:`prepare_many`'s pool: enough to amortise sending a task and its
#: (CHUNK_FILES, size, size, C) result between processes, few enough to keep the workers busy
#: to the end.
CHUNK_FILES = 16
#: RAM-backed folder (Linux) for the pool's shared output; the system temp folder elsewhere.
SHARED_MEMORY_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class InputSpec:
    """What a model eats; saved in its card so it is always fed the same way.

    Attributes:
        size: Output is (size, size, channels) pixels.
        mode: ``"hu"`` (windows of HU, DICOM only) or ``"display"`` (display grayscale).
        windows: Mode ``"hu"``: one window per channel (preset names or ``"C/W"`` in HU); a
            composite name such as ``"rsna3"`` is expanded.
        channels: Number of output channels; in mode ``"hu"`` it must equal ``len(windows)``.
        display_window: Mode ``"display"``: how a DICOM is rendered to grayscale.
        crop_head: Crop to the head's bounding box before resizing.
        mask_outside_head: After the crop, set everything outside the skull's convex hull to
            background (see the module docstring); off by default, and a card without the key
            means off.
        asymmetry: Mode ``"display"``: the last of the ``channels`` (at least 2) is the
            left-right asymmetry map (see the module docstring), the others the grayscale
            (and the hyperdensity map, with ``hyperdensity``); off by default, and a card
            without the key means off.
        hyperdensity: Mode ``"display"``: one channel (before the asymmetry map, when both)
            is the hyperdensity map (:func:`hyperdensity_map`), the others the grayscale;
            needs a gray channel besides the maps (``channels`` >= 2, >= 3 with
            ``asymmetry``). Off by default, and a card without the key means off.
        align_midline: Turn and centre the head on its symmetry axis before the crop (see the
            module docstring); needs ``crop_head``. Off by default, and a card without the key
            means off.
        brain_level: Mode ``"display"``: scale the grayscale so that the median of its soft
            tissue lands here (see the module docstring), in (0, 1); 0 (the default, and a card
            without the key) leaves it as is.
        black_background: Mode ``"display"``: set a flat gray background to black before
            anything else (see the module docstring); off by default, and a card without the key
            means off.
        dicom_head_only: DICOM input: set everything outside the head's outline to air
            first (:func:`head_only`; black in display grayscale), removing the scanner's head
            holder and table (see the module docstring); images are fed as they are. Off by
            default, and a card without the key means off.

    Raises:
        ConfigError: any field out of its range (checked on construction).
    """

    size: int = 256
    mode: str = "hu"
    windows: tuple[str, ...] = ("brain", "subdural", "soft_tissue")
    channels: int = 3
    display_window: str = "brain"
    crop_head: bool = False
    mask_outside_head: bool = False
    asymmetry: bool = False
    hyperdensity: bool = False
    align_midline: bool = False
    brain_level: float = 0.0
    black_background: bool = False
    dicom_head_only: bool = False

    def __post_init__(self) -> None:
        windows = self.windows
        if isinstance(windows, str):
            windows = COMPOSITES.get(windows, (windows,))
        try:
            windows = tuple(str(w) for w in windows)
        except TypeError as exc:
            raise ConfigError(f"InputSpec.windows must be window names, got {windows!r}") from exc
        object.__setattr__(self, "windows", windows)
        if isinstance(self.size, bool) or not isinstance(self.size, int | np.integer):
            raise ConfigError(f"InputSpec.size must be an integer, got {self.size!r}")
        if not MIN_INPUT_SIZE <= self.size <= MAX_INPUT_SIZE:
            raise ConfigError(
                f"InputSpec.size is {self.size}: must be in [{MIN_INPUT_SIZE}, {MAX_INPUT_SIZE}]"
            )
        if self.mode not in MODES:
            raise ConfigError(f"InputSpec.mode is {self.mode!r}: must be one of {', '.join(MODES)}")
        if not windows:
            raise ConfigError("InputSpec.windows is empty: give at least one window")
        for name in (*windows, self.display_window):
            get_window(name)
        if isinstance(self.channels, bool) or not isinstance(self.channels, int | np.integer):
            raise ConfigError(f"InputSpec.channels must be an integer, got {self.channels!r}")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ConfigError(
                f"InputSpec.channels is {self.channels}: must be in [1, {MAX_CHANNELS}]"
            )
        if self.mode == "hu" and self.channels != len(windows):
            raise ConfigError(
                f"InputSpec: mode 'hu' makes one channel per window, but windows has "
                f"{len(windows)} and channels is {self.channels}; set channels={len(windows)}"
            )
        if not isinstance(self.crop_head, bool):
            raise ConfigError(f"InputSpec.crop_head must be true or false, got {self.crop_head!r}")
        if not isinstance(self.mask_outside_head, bool):
            raise ConfigError(
                f"InputSpec.mask_outside_head must be true or false, got {self.mask_outside_head!r}"
            )
        if not isinstance(self.align_midline, bool):
            raise ConfigError(
                f"InputSpec.align_midline must be true or false, got {self.align_midline!r}"
            )
        if self.align_midline and not self.crop_head:
            raise ConfigError(
                "InputSpec.align_midline needs crop_head = true (it centres the crop)"
            )
        if not isinstance(self.asymmetry, bool):
            raise ConfigError(f"InputSpec.asymmetry must be true or false, got {self.asymmetry!r}")
        level = self.brain_level
        if isinstance(level, bool) or not isinstance(level, int | float | np.number):
            raise ConfigError(f"InputSpec.brain_level must be a number, got {level!r}")
        if level and (not 0.0 < float(level) < 1.0 or self.mode != "display"):
            raise ConfigError(
                "InputSpec.brain_level scales display grayscale: it needs mode 'display' and a "
                f"level in (0, 1), or 0 for off (got mode {self.mode!r}, brain_level {level!r})"
            )
        object.__setattr__(self, "brain_level", float(level))
        if not isinstance(self.black_background, bool):
            raise ConfigError(
                f"InputSpec.black_background must be true or false, got {self.black_background!r}"
            )
        if self.black_background and self.mode != "display":
            raise ConfigError(
                "InputSpec.black_background blackens the gray background of display grayscale: "
                f"it needs mode 'display' (got {self.mode!r}; in HU, air is already air)"
            )
        if not isinstance(self.dicom_head_only, bool):
            raise ConfigError(
                f"InputSpec.dicom_head_only must be true or false, got {self.dicom_head_only!r}"
            )
        if self.asymmetry and (self.mode != "display" or self.channels < 2):
            raise ConfigError(
                "InputSpec.asymmetry adds the asymmetry map as the last channel of a display "
                f"input: it needs mode 'display' and channels >= 2 (got mode {self.mode!r}, "
                f"channels {self.channels})"
            )

        if not isinstance(self.hyperdensity, bool):
            raise ConfigError(
                f"InputSpec.hyperdensity must be true or false, got {self.hyperdensity!r}"
            )
        if self.hyperdensity and (
            self.mode != "display" or self.channels < 2 + int(self.asymmetry)
        ):
            raise ConfigError(
                "InputSpec.hyperdensity adds the hyperdensity map as a channel of a display "
                "input beside the gray one: it needs mode 'display' and channels >= "
                f"{2 + int(self.asymmetry)} (got mode {self.mode!r}, channels {self.channels}"
                f"{', with asymmetry' if self.asymmetry else ''})"
            )

    @property
    def window_objects(self) -> tuple[Window, ...]:
        """The windows of mode ``"hu"`` as :class:`~hemo.windowing.Window` objects."""
        return tuple(get_window(name) for name in self.windows)

    @property
    def map_channels(self) -> int:
        """How many of the last channels are derived maps (hyperdensity, asymmetry), not gray."""
        return int(self.hyperdensity) + int(self.asymmetry)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(size, size, channels): the model's input shape."""
        return (self.size, self.size, self.channels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (windows as a list)."""
        out = asdict(self)
        out["windows"] = list(self.windows)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"InputSpec: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"InputSpec: {exc}") from exc


def head_bbox(
    gray: npt.ArrayLike, threshold: float = HEAD_GRAY_THRESHOLD
) -> tuple[int, int, int, int]:
    """Bounding box of the largest connected region above ``threshold`` (the head).

    Args:
        gray: (H, W) image; display grayscale in [0, 1] with the default threshold, or HU with
            ``threshold=HEAD_HU_THRESHOLD``. Not modified. NaN counts as background.
        threshold: Pixels strictly above it are foreground.

    Returns:
        ``(row0, row1, col0, col1)``, half-open; the whole image when nothing is above the
        threshold.

    Raises:
        InputError: ``gray`` is not a non-empty 2-D array.
    """
    arr = np.asarray(gray)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"head_bbox needs a non-empty (H, W) image, got shape {arr.shape}")
    found = largest_component(arr > threshold)
    if found is None:
        return (0, arr.shape[0], 0, arr.shape[1])
    _, _, box = found
    return box


def largest_component(
    mask: npt.ArrayLike,
) -> tuple[npt.NDArray[np.int32], int, tuple[int, int, int, int]] | None:
    """The largest :data:`CONNECTIVITY`-connected region of a binary mask (the head's search).

    Args:
        mask: (H, W) bool or 0/1 array; non-zero is foreground.

    Returns:
        ``(labels, label, box)``: the component label image, the largest region's label in it
        (``labels == label`` is the region) and its box ``(row0, row1, col0, col1)``, half-open;
        ``None`` when the mask has no foreground.
    """
    binary = np.asarray(mask).astype(np.uint8, copy=False)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=CONNECTIVITY)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top, width, height = (int(v) for v in stats[largest, :4])
    return labels, largest, (top, top + height, left, left + width)


def flat_background(gray: npt.ArrayLike) -> float | None:
    """The level of a flat gray background, or ``None`` when there is none.

    On a copy median-filtered over :data:`BACKGROUND_FILTER_SIZE` pixels (JPEG noise, film
    grain): the median of a ring along the image's edge, :data:`BACKGROUND_RING_FRACTION` of its
    shorter side wide. It is a flat gray background when that level is above
    :data:`HEAD_GRAY_THRESHOLD` (not black) and at most :data:`BACKGROUND_MAX_LEVEL`, and at
    least :data:`BACKGROUND_MIN_EDGE_SHARE` of the ring lies within
    :data:`BACKGROUND_TOLERANCE` of it.

    Args:
        gray: (H, W) display grayscale in [0, 1]. Not modified. NaN counts as black.

    Returns:
        The level, or ``None``: a black background, an edge that is not one flat level (a head
        cut by the image's edge), or an image under :data:`BACKGROUND_MIN_SIDE` pixels a side.

    Raises:
        InputError: ``gray`` is not a non-empty 2-D array.
    """
    arr = np.asarray(gray, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"flat_background needs a non-empty (H, W) image, got shape {arr.shape}")
    if min(arr.shape) < BACKGROUND_MIN_SIDE:
        return None
    width = max(1, round(BACKGROUND_RING_FRACTION * min(arr.shape)))
    ring = np.zeros(arr.shape, dtype=bool)
    ring[:width] = ring[-width:] = True
    ring[:, :width] = ring[:, -width:] = True
    edge = cv2.medianBlur(np.nan_to_num(arr, nan=GRAY_FILL), BACKGROUND_FILTER_SIZE)[ring]
    level = float(np.median(edge))
    if not HEAD_GRAY_THRESHOLD < level <= BACKGROUND_MAX_LEVEL:
        return None
    if np.mean(np.abs(edge - level) <= BACKGROUND_TOLERANCE) < BACKGROUND_MIN_EDGE_SHARE:
        return None
    return level


def blacken_background(gray: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Everything outside the head's outline set to black when the background is a flat gray.

    See the module docstring. When :func:`flat_background` finds a flat gray background, the
    head is the largest 8-connected region of the image brighter than it by
    :data:`BACKGROUND_HEAD_MARGIN`, and every pixel outside the head's outer outline becomes 0.

    Args:
        gray: (H, W) display grayscale in [0, 1]. Not modified. NaN counts as black.

    Returns:
        float32 (H, W): a new array with the background black, or ``gray`` itself (as float32)
        when the background is already black, not one flat level, or no head stands out of it.

    Raises:
        InputError: ``gray`` is not a non-empty 2-D array.
    """
    arr = np.asarray(gray, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(
            f"blacken_background needs a non-empty (H, W) image, got shape {arr.shape}"
        )
    level = flat_background(arr)
    if level is None:
        return arr
    # the outline on the pixels themselves, so that not one pixel of the head's rim is lost
    found = largest_component(np.nan_to_num(arr, nan=GRAY_FILL) > level + BACKGROUND_HEAD_MARGIN)
    if found is None:
        return arr
    labels, label, _ = found
    return np.where(_filled(labels == label), arr, np.float32(GRAY_FILL)).astype(np.float32)


def _filled(region: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """``region`` with its holes filled: everything inside its outer outline."""
    outline, _ = cv2.findContours(
        region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    inside = np.zeros(region.shape, dtype=np.uint8)
    cv2.drawContours(inside, outline, -1, 1, thickness=cv2.FILLED)
    return inside > 0


def head_only(
    image: npt.ArrayLike, threshold: float = HEAD_ONLY_HU_THRESHOLD, fill: float = config.HU_AIR
) -> npt.NDArray[np.float32]:
    """Everything outside the head's outline set to ``fill``: the scanner's head holder, table
    and cables that a DICOM's field of view holds beside the head.

    The head is the largest 8-connected region above ``threshold``, with everything inside its
    outer outline (ventricles, sinuses, a dark bleed). What touches the head above the
    threshold stays; a holder lying apart from it, or touching it only through a foam pad
    (below the default threshold), goes.

    Args:
        image: (H, W) HU with the defaults; any image with another ``threshold`` and
            ``fill`` (display grayscale: ``HEAD_GRAY_THRESHOLD``, ``GRAY_FILL``). Not modified.
            NaN counts as background.
        threshold: Pixels strictly above it are tissue.
        fill: Value outside the head.

    Returns:
        float32 (H, W), a new array; ``image`` unchanged (as float32) when nothing is above the
        threshold.

    Raises:
        InputError: ``image`` is not a non-empty 2-D array.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"head_only needs a non-empty (H, W) image, got shape {arr.shape}")
    found = largest_component(np.nan_to_num(arr, nan=-np.inf) > threshold)
    if found is None:
        return np.array(arr, dtype=np.float32, copy=True)
    labels, label, _ = found
    return np.where(_filled(labels == label), arr, np.float32(fill)).astype(np.float32)


def skull_hull_mask(
    gray: npt.ArrayLike, threshold: float = SKULL_GRAY_THRESHOLD
) -> npt.NDArray[np.bool_]:
    """Inside of the skull: the filled convex hull of its bone (True inside).

    Args:
        gray: (H, W) image; display grayscale in [0, 1] with the default threshold, or HU with
            ``threshold=SKULL_HU_THRESHOLD``. Not modified. NaN counts as background.
        threshold: Pixels strictly above it are bone.

    Returns:
        bool (H, W), a new array: the convex hull of the largest bone component and of every
        other bone component at least :data:`SKULL_MIN_PART_FRACTION` of its area; all True when
        no bone is found or the hull covers less than :data:`SKULL_MIN_HULL_FRACTION` of the
        image (the image is then left unmasked).

    Raises:
        InputError: ``gray`` is not a non-empty 2-D array.
    """
    arr = np.asarray(gray)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"skull_hull_mask needs a non-empty (H, W) image, got shape {arr.shape}")
    everything = np.ones(arr.shape, dtype=bool)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return everything
    # Bone is the brightest tissue; a figure that never saturates it to white gets a lower cut
    threshold = min(threshold, SKULL_RELATIVE_THRESHOLD * float(np.percentile(finite, 99.5)))
    bone = (arr > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bone, connectivity=CONNECTIVITY)
    if count <= 1:
        return everything
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= SKULL_MIN_PART_FRACTION * areas.max())
    rows, cols = np.nonzero(np.isin(labels, keep))
    points = np.stack([cols, rows], axis=1).astype(np.int32)
    hull = cv2.convexHull(points)
    mask = np.zeros(arr.shape, dtype=np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    if mask.sum() < SKULL_MIN_HULL_FRACTION * arr.size:
        return everything
    return mask.astype(bool)


def _mask_outside_head(
    image: npt.NDArray[np.float32], threshold: float, fill: float
) -> npt.NDArray[np.float32]:
    """``image`` with everything outside the skull's hull set to ``fill`` (a new array)."""
    return np.where(skull_hull_mask(image, threshold), image, np.float32(fill)).astype(np.float32)


def _square_crop(
    image: npt.NDArray[np.float32], box: tuple[int, int, int, int], fill: float
) -> npt.NDArray[np.float32]:
    """A square around ``box`` with a margin, padded with ``fill`` outside the image (new array)."""
    top, left, side = _square_box(box)
    out = np.full((side, side), fill, dtype=np.float32)
    src_r0, src_c0 = max(top, 0), max(left, 0)
    src_r1, src_c1 = min(top + side, image.shape[0]), min(left + side, image.shape[1])
    out[src_r0 - top : src_r1 - top, src_c0 - left : src_c1 - left] = image[
        src_r0:src_r1, src_c0:src_c1
    ]
    return out


def _square_box(box: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """``(top, left, side)`` of the square :func:`_square_crop` cuts around ``box``."""
    row0, row1, col0, col1 = box
    side = max(row1 - row0, col1 - col0)
    side += 2 * int(round(HEAD_MARGIN_FRACTION * side))
    return (row0 + row1 - side) // 2, (col0 + col1 - side) // 2, side


def _pad_square(image: npt.NDArray[np.float32], fill: float) -> npt.NDArray[np.float32]:
    """Centre a non-square image on a square canvas of ``fill``; a square image is returned as is."""
    height, width = image.shape
    if height == width:
        return image
    side = max(height, width)
    out = np.full((side, side), fill, dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    out[top : top + height, left : left + width] = image
    return out


def _resize(image: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    """(size, size) float32 with ``cv2.INTER_AREA`` (a new array, even at the same size)."""
    if image.shape == (size, size):
        return np.array(image, dtype=np.float32, copy=True)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


#: Side of the small copy on which the midline is searched.
MIDLINE_SEARCH_SIZE = 64
#: Tilts searched, in degrees either way.
MIDLINE_MAX_ANGLE = 20.0
#: Tilt steps in degrees: every tilt, then around the best one.
MIDLINE_ANGLE_STEPS = (1.0, 0.25)
#: Shifts of the mirror axis searched, as a fraction of the copy's side, either way.
MIDLINE_MAX_SHIFT_FRACTION = 0.125
#: HU scored by the midline search: air and fat 0, brain about 0.7, bone 1.
MIDLINE_HU_RANGE = (-100.0, 100.0)
#: Display grayscale scored by the midline search: as it is.
MIDLINE_GRAY_RANGE = (0.0, 1.0)


def _mirror_errors(
    images: npt.NDArray[np.float32], known: npt.NDArray[np.float32], max_shift: int
) -> npt.NDArray[np.float64]:
    """Mean |x - mirror(x)| of each of ``images`` (N, H, W) for mirror axes at the centre column
    moved by shift / 2 pixels, shift from ``-max_shift`` to ``max_shift``: (N, 2 * max_shift +
    1). The mean is over the pixels that are ``known`` (1; 0 where the copy holds no image) and
    whose mirror is too, so the image's own border never counts as an edge."""
    width = images.shape[2]
    flipped, known_flipped = images[:, :, ::-1], known[:, :, ::-1]
    errors = []
    for shift in range(-max_shift, max_shift + 1):
        # x[:, c] faces flipped[:, c - shift], across the axis at column (width - 1 + shift) / 2
        if shift >= 0:
            mine, theirs = np.s_[:, :, shift:], np.s_[:, :, : width - shift]
        else:
            mine, theirs = np.s_[:, :, : width + shift], np.s_[:, :, -shift:]
        both = known[mine] * known_flipped[theirs]
        total = np.einsum("nhw,nhw->n", np.abs(images[mine] - flipped[theirs]), both)
        errors.append(total / np.maximum(both.sum(axis=(1, 2)), 1.0))
    return np.stack(errors, axis=1)


def _best_tilt(
    small: npt.NDArray[np.float32], known: npt.NDArray[np.float32], angles: npt.NDArray[np.float64]
) -> tuple[float, int]:
    """The tilt among ``angles`` whose turned ``small`` best mirrors itself, and its shift;
    ``known`` is 1 where ``small`` holds the image, 0 where it was padded."""
    side = small.shape[0]
    centre = ((side - 1) / 2.0, (side - 1) / 2.0)
    max_shift = int(round(MIDLINE_MAX_SHIFT_FRACTION * side))
    turns = [cv2.getRotationMatrix2D(centre, float(a), 1.0) for a in angles]
    turned = np.stack([cv2.warpAffine(small, t, (side, side)) for t in turns])
    # a pixel is known when all of what it was interpolated from is
    known_turned = np.stack([cv2.warpAffine(known, t, (side, side)) for t in turns]) > 0.999
    errors = _mirror_errors(turned, known_turned.astype(np.float32), max_shift)
    which, shift = np.unravel_index(int(np.argmin(errors)), errors.shape)
    return float(angles[which]), int(shift) - max_shift


def midline_transform(
    image: npt.ArrayLike,
    threshold: float = HEAD_GRAY_THRESHOLD,
    value_range: tuple[float, float] = MIDLINE_GRAY_RANGE,
) -> tuple[npt.NDArray[np.float64], int]:
    """Affine map that turns the head's left-right symmetry axis into the centre column.

    The axis is the line across which the head best mirrors itself: on a
    :data:`MIDLINE_SEARCH_SIZE`-pixel copy of the head crop, slightly blurred, every tilt within
    :data:`MIDLINE_MAX_ANGLE` degrees (1-degree steps, then quarter degrees around the best:
    :data:`MIDLINE_ANGLE_STEPS`) and every axis position within
    :data:`MIDLINE_MAX_SHIFT_FRACTION` of the centre is scored by the mean absolute difference
    between the copy and its mirror; the smallest wins. The skull and the scalp, bright and
    symmetric, mostly decide it; a large one-sided bleed can pull the tilt by a few degrees.

    Args:
        image: (H, W) display grayscale, or HU with ``threshold=HEAD_HU_THRESHOLD`` and
            ``value_range=MIDLINE_HU_RANGE``. Not modified. NaN counts as background.
        threshold: Head pixels are above it (as in :func:`head_bbox`).
        value_range: Values are clipped to this range and scaled to [0, 1] before scoring.

    Returns:
        ``(matrix, side)``: a 2x3 matrix for ``cv2.warpAffine`` onto a (side, side) canvas that
        holds the whole turned image, with the symmetry axis vertical through the canvas's
        centre (x = ``(side - 1) / 2``). When no head is found, the matrix only centres the
        image on the canvas.

    Raises:
        InputError: ``image`` is not a non-empty 2-D array.
    """
    arr = np.asarray(image, dtype=np.float32)
    box = head_bbox(arr, threshold)
    height, width = arr.shape
    side = int(np.ceil(np.hypot(height, width))) + 2
    if not np.any(arr > threshold):
        return np.array([[1.0, 0.0, (side - width) / 2], [0.0, 1.0, (side - height) / 2]]), side
    low, high = value_range
    crop = _square_crop(np.clip((np.nan_to_num(arr, nan=low) - low) / (high - low), 0, 1), box, 0)
    fine_side = MIDLINE_SEARCH_SIZE
    coarse_step, fine_step = MIDLINE_ANGLE_STEPS
    small = cv2.GaussianBlur(_resize(crop, fine_side), (3, 3), 0)
    # the crop's padding is unknown, not black: a head cut by the image's border is common
    inside = _resize(_square_crop(np.ones_like(arr), box, 0.0), fine_side)
    known = cv2.erode((inside > 0.999).astype(np.float32), np.ones((3, 3), np.uint8))
    angles = np.arange(-MIDLINE_MAX_ANGLE, MIDLINE_MAX_ANGLE + 1e-6, coarse_step)
    angle, shift = _best_tilt(small, known, angles)
    # then the quarter degrees up to 0.75 degrees either side of it (itself included)
    angle, shift = _best_tilt(
        small, known, angle + np.arange(-coarse_step + fine_step, coarse_step, fine_step)
    )
    # A point of the axis in the turned copy, back to the copy, then to the image's pixels
    # (copy pixel i covers the crop's pixels around (i + 0.5) * scale - 0.5)
    centre = ((fine_side - 1) / 2.0, (fine_side - 1) / 2.0)
    back = cv2.invertAffineTransform(cv2.getRotationMatrix2D(centre, angle, 1.0))
    qx, qy = back @ np.array([(fine_side - 1 + shift) / 2.0, centre[1], 1.0])
    top, left, crop_side = _square_box(box)
    scale = crop_side / fine_side
    px, py = left + (qx + 0.5) * scale - 0.5, top + (qy + 0.5) * scale - 0.5
    matrix = cv2.getRotationMatrix2D((float(px), float(py)), angle, 1.0)
    matrix[:, 2] += (side - 1) / 2.0 - np.array([px, py])
    return matrix, side


def _align(
    image: npt.NDArray[np.float32], matrix: npt.NDArray[np.float64], side: int, fill: float
) -> npt.NDArray[np.float32]:
    """``image`` warped by ``matrix`` onto a (side, side) canvas of ``fill``."""
    return cv2.warpAffine(
        np.asarray(image, dtype=np.float32),
        matrix,
        (side, side),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=float(fill),
    )


def _symmetric_box(box: tuple[int, int, int, int], side: int) -> tuple[int, int, int, int]:
    """``box`` widened to be symmetric about the centre column of a (side, side) canvas."""
    row0, row1, col0, col1 = box
    half = max(side / 2.0 - col0, col1 - side / 2.0)
    return row0, row1, int(np.floor(side / 2.0 - half)), int(np.ceil(side / 2.0 + half))


def _prepare(
    image: npt.NDArray[np.float32],
    size: int,
    crop: bool,
    threshold: float,
    fill: float,
    mask_threshold: float | None = None,
    align_range: tuple[float, float] | None = None,
) -> npt.NDArray[np.float32]:
    """Align the midline and crop (when ``align_range``, the values the midline search scores,
    is given) or crop (optional) -> mask outside the skull (when ``mask_threshold`` is given)
    -> pad -> resize."""
    image = np.asarray(image, dtype=np.float32)
    if align_range is not None:
        matrix, side = midline_transform(image, threshold, align_range)
        image = _align(image, matrix, side, fill)
        image = _square_crop(image, _symmetric_box(head_bbox(image, threshold), side), fill)
    elif crop:
        image = _square_crop(image, head_bbox(image, threshold), fill)
    if mask_threshold is not None:
        image = _mask_outside_head(image, mask_threshold, fill)
    return _resize(_pad_square(image, fill), size)


def window_stack(
    hu: npt.NDArray[np.float32], windows: tuple[Window, ...]
) -> npt.NDArray[np.float32]:
    """Windows of an (H, W) HU image stacked as channels, in one float32 pass.

    Same maths as :func:`hemo.windowing.window` (``clip((hu - low) / width, 0, 1)``, NaN -> 0).

    Args:
        hu: float32 (H, W) HU. Not modified.
        windows: One window per output channel.

    Returns:
        float32 (H, W, C) in [0, 1], a new array.
    """
    arr = np.asarray(hu, dtype=np.float32)
    if np.isnan(arr).any():
        arr = np.where(np.isnan(arr), np.float32(-np.inf), arr)
    planes = []
    for w in windows:
        # (hu - low) / width as one multiply-add per pixel, contiguous float32 planes
        scale = np.float32(1.0 / w.width_hu)
        plane = arr * scale
        plane += np.float32(-(w.center_hu - w.width_hu / 2.0)) * scale
        np.clip(plane, 0.0, 1.0, out=plane)
        planes.append(plane)
    if len(planes) == 1:
        return planes[0][:, :, None]
    return cv2.merge(planes)  # interleave the planes as (H, W, C) in one pass


def to_display(scan: Scan, window: Window | str | None = None) -> npt.NDArray[np.float32]:
    """Display grayscale of a scan.

    Args:
        scan: A DICOM slice (rendered through ``window``) or an image (its pixels).
        window: Window for a DICOM: a ``Window``, a preset name or ``"C/W"``; ``None`` means
            :data:`DEFAULT_DISPLAY_WINDOW`. Ignored for images.

    Returns:
        float32 (H, W) in [0, 1]; read-only for images, a new array for DICOM.

    Raises:
        ConfigError: unknown window.
        InputError: ``scan`` is neither a ``CTSlice`` nor an ``Image2D``.
    """
    if isinstance(scan, Image2D):
        return scan.pixels
    if isinstance(scan, CTSlice):
        w = get_window(DEFAULT_DISPLAY_WINDOW if window is None else window)
        return window_stack(scan.hu, (w,))[:, :, 0]
    raise InputError(f"cannot display a {type(scan).__name__}: give a CTSlice or an Image2D")


def to_model_input(scan: Scan, spec: InputSpec) -> npt.NDArray[np.float32]:
    """Preprocess one scan exactly as the model with ``spec`` expects.

    Args:
        scan: A DICOM slice or an image. Not modified.
        spec: The model's input spec.

    Returns:
        float32 (size, size, C) in [0, 1], a new writable array.

    Raises:
        InputError: mode ``"hu"`` given an image (no HU), or an unknown scan type.
    """
    if not isinstance(scan, CTSlice | Image2D):
        raise InputError(f"cannot preprocess a {type(scan).__name__}: give a CTSlice or an Image2D")
    scan = _head_only_scan(scan, spec)
    if spec.mode == "hu":
        if not isinstance(scan, CTSlice):
            raise InputError(
                f"model expects HU windows ({', '.join(spec.windows)}) but this is a "
                f"{scan.kind.upper()} image without Hounsfield units; give a DICOM, or use a "
                "model trained on display grayscale",
                scan.source,
            )
        small = _prepare(
            scan.hu,
            spec.size,
            spec.crop_head,
            HEAD_HU_THRESHOLD,
            config.HU_AIR,
            SKULL_HU_THRESHOLD if spec.mask_outside_head else None,
            MIDLINE_HU_RANGE if spec.align_midline else None,
        )
        return window_stack(small, spec.window_objects)
    gray = _display_basis(scan, spec)
    small = _prepare(
        gray,
        spec.size,
        spec.crop_head,
        HEAD_GRAY_THRESHOLD,
        GRAY_FILL,
        SKULL_GRAY_THRESHOLD if spec.mask_outside_head else None,
        MIDLINE_GRAY_RANGE if spec.align_midline else None,
    )
    np.clip(small, 0.0, 1.0, out=small)
    if spec.brain_level:
        small = normalize_brain_level(small, spec.brain_level)
    maps = []
    if spec.hyperdensity:
        maps.append(hyperdensity_map(small))
    if spec.asymmetry:
        maps.append(asymmetry_map(small))
    gray_channels = np.repeat(small[:, :, None], spec.channels - len(maps), axis=2)
    if not maps:
        return gray_channels
    return np.concatenate([gray_channels, np.stack(maps, axis=2)], axis=2)


def _display_basis(scan: Scan, spec: InputSpec) -> npt.NDArray[np.float32]:
    """The scan in display grayscale through ``spec.display_window``, its gray background
    blackened when ``spec.black_background``: what display-mode geometry is found on."""
    gray = to_display(scan, spec.display_window)
    if spec.black_background:
        gray = blacken_background(gray)
    return gray


def _head_only_scan(scan: Scan, spec: InputSpec) -> Scan:
    """``scan`` as ``spec`` sees it: a DICOM slice without what lies outside the head when
    ``spec.dicom_head_only`` (a new slice; the original is not modified), anything else as is."""
    if spec.dicom_head_only and isinstance(scan, CTSlice):
        hu = head_only(scan.hu)
        hu.setflags(write=False)
        return replace(scan, hu=hu)
    return scan


def normalize_brain_level(gray: npt.ArrayLike, level: float) -> npt.NDArray[np.float32]:
    """Scale display grayscale so that the median of its soft tissue lands on ``level``.

    Soft tissue is every pixel in :data:`TISSUE_GRAY_RANGE`; the gain is clipped to
    :data:`BRAIN_GAIN_RANGE`, and an image with under :data:`MIN_TISSUE_FRACTION` of such
    pixels (a blank or bone-only image) is returned unchanged.

    Args:
        gray: (H, W) display grayscale in [0, 1].
        level: Where the tissue's median goes, in (0, 1).

    Returns:
        float32 (H, W) in [0, 1], a new array; 0 stays 0.
    """
    x = np.asarray(gray, dtype=np.float32)
    low, high = TISSUE_GRAY_RANGE
    tissue = x[(x > low) & (x < high)]
    if tissue.size < MIN_TISSUE_FRACTION * x.size:
        return x.copy()
    gain = float(np.clip(level / float(np.median(tissue)), *BRAIN_GAIN_RANGE))
    return np.clip(x * gain, 0.0, 1.0)


def asymmetry_map(gray: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``max(0, x - mirror(x))``: how much brighter each pixel is than the one facing it across
    the image's vertical centre line (the midline, once the head is cropped and centred).

    Args:
        gray: (H, W) display grayscale in [0, 1].

    Returns:
        float32 (H, W) in [0, 1]; 0 wherever the pixel is no brighter than its mirror.
    """
    x = np.asarray(gray, dtype=np.float32)
    return np.clip(x - x[:, ::-1], 0.0, 1.0)


#: The hyperdensity map starts this far above the brain's median level: normal gray matter
#: lies within it of the median, so the brain's own texture stays dark.
HYPERDENSITY_FLOOR = 0.06
#: Span above the floor that the hyperdensity map stretches to [0, 1]: fresh blood lies about
#: 0.1-0.4 above brain in a brain window (hemo.density.STEPS).
HYPERDENSITY_SPAN = 0.34


def hyperdensity_map(gray: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """How far each pixel inside the skull lies above the brain's median level.

    The inside of the skull is :func:`hemo.density.masks`' (what the skull's ring encloses,
    eroded away from the bone; the head's outline eroded where the skull is open), the level
    the median there; the map is ``clip((x - level - HYPERDENSITY_FLOOR) / HYPERDENSITY_SPAN,
    0, 1)`` inside and 0 elsewhere (bone, scalp, background). A slice too small for the
    skull's inside to be found (:func:`hemo.density.masks` then falls back to the whole head)
    gives a map of zeros, as a blank one does; NaN counts as black.

    Args:
        gray: (H, W) display grayscale in [0, 1].

    Returns:
        float32 (H, W) in [0, 1].
    """
    from hemo import density

    x = np.nan_to_num(np.asarray(gray, dtype=np.float32))  # an unknown pixel is black
    head, skull, inside = density.masks(x)
    # Too small a slice to find an inside (a few pixels across): masks then gives the whole
    # head, bone and scalp included, so no pixel of it is known to be inside the skull
    if not inside.any() or np.array_equal(inside, head):
        return np.zeros_like(x)
    inside &= ~skull
    level = float(np.median(x[inside]))
    out = np.clip((x - level - HYPERDENSITY_FLOOR) / HYPERDENSITY_SPAN, 0.0, 1.0)
    out[~inside] = 0.0
    return out


def input_view(scan: Scan, spec: InputSpec, size: int | None = None) -> npt.NDArray[np.float32]:
    """The scan in display grayscale with the model input's geometry, for heatmap overlays.

    A heatmap lives on the model input's pixel grid: after the head crop, the mask outside the
    skull and the square padding of ``spec``. Drawing it over the original slice misplaces it
    whenever the crop or the padding moved the head; this view applies the same geometry (the
    crop box and skull hull found exactly as :func:`to_model_input` finds them) to the display
    image, so ``overlay(input_view(...), heatmap)`` lines up.

    Args:
        scan: A DICOM slice or an image. Not modified.
        spec: The model's input spec.
        size: Side of the view in pixels (default ``spec.size``); larger gives a sharper picture
            with the same geometry.

    Returns:
        float32 (size, size) in [0, 1]: DICOM through ``spec.display_window``, images as they are.
    """
    side = spec.size if size is None else int(size)
    scan = _head_only_scan(scan, spec)
    gray = _display_basis(scan, spec)
    view = _with_input_geometry(scan, spec, gray, GRAY_FILL, side, gray)
    return np.clip(view, 0.0, 1.0, out=view)


def mask_to_model_input(
    mask: npt.ArrayLike, scan: Scan, spec: InputSpec
) -> npt.NDArray[np.float32]:
    """A lesion mask drawn on ``scan`` carried onto the model input's pixel grid.

    The mask goes through the geometry :func:`to_model_input` gives the scan (midline alignment,
    head crop, skull mask, square padding, ``INTER_AREA`` resize; boxes and hulls found on the
    scan itself), so that pixel ``(i, j)`` of the result describes pixel ``(i, j)`` of the
    model input: a training target for where the lesion is, or a reference for a heatmap.

    Args:
        mask: (H, W) at the scan's size; bool, or a lesion fraction in [0, 1].
        scan: The ``CTSlice`` or ``Image2D`` the mask belongs to. Not modified.
        spec: The model's input spec.

    Returns:
        float32 (size, size) in [0, 1]: the share of each input pixel that is lesion.

    Raises:
        InputError: The mask is not 2-D or not the scan's shape.
    """
    area = np.asarray(mask, dtype=np.float32)
    scan = _head_only_scan(scan, spec)
    gray = _display_basis(scan, spec)
    if area.shape != gray.shape:
        raise InputError(
            f"the lesion mask is {area.shape} but the scan is {gray.shape}: a mask must be "
            "drawn on the scan it belongs to",
            scan.source,
        )
    carried = _with_input_geometry(scan, spec, area, 0.0, spec.size, gray)
    return np.clip(carried, 0.0, 1.0, out=carried)


def _with_input_geometry(
    scan: Scan,
    spec: InputSpec,
    image: npt.NDArray[np.float32],
    fill: float,
    side: int,
    gray: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """``image`` (the scan's shape) aligned, cropped, skull-masked, padded and resized to
    ``side`` as :func:`to_model_input` treats ``scan``; ``gray`` is the scan through
    ``spec.display_window`` (the basis of display-mode geometry). A new array."""
    if isinstance(scan, CTSlice) and spec.mode == "hu":
        basis, basis_fill, basis_range = scan.hu, config.HU_AIR, MIDLINE_HU_RANGE
        head_threshold, skull_threshold = HEAD_HU_THRESHOLD, SKULL_HU_THRESHOLD
    else:
        basis, basis_fill, basis_range = gray, GRAY_FILL, MIDLINE_GRAY_RANGE
        head_threshold, skull_threshold = HEAD_GRAY_THRESHOLD, SKULL_GRAY_THRESHOLD
    image = np.asarray(image, dtype=np.float32)
    if spec.align_midline:
        matrix, canvas = midline_transform(basis, head_threshold, basis_range)
        basis = _align(np.asarray(basis, dtype=np.float32), matrix, canvas, basis_fill)
        image = _align(image, matrix, canvas, fill)
        box = _symmetric_box(head_bbox(basis, head_threshold), canvas)
        basis = _square_crop(basis, box, basis_fill)
        image = _square_crop(image, box, fill)
    elif spec.crop_head:
        box = head_bbox(basis, head_threshold)
        basis = _square_crop(np.asarray(basis, dtype=np.float32), box, basis_fill)
        image = _square_crop(image, box, fill)
    if spec.mask_outside_head:
        image = np.where(skull_hull_mask(basis, skull_threshold), image, np.float32(fill))
    return _resize(_pad_square(np.asarray(image, dtype=np.float32), fill), side)


@dataclass(frozen=True, eq=False)
class PreparedBatch:
    """Model inputs of a batch of files, with the files that failed.

    Attributes:
        inputs: float32 (N, size, size, C) in [0, 1], row ``i`` from ``sources[i]``.
        sources: The N files prepared, in input order.
        failures: ``(file, reason)`` for each file that could not be read or preprocessed, in
            input order.
    """

    inputs: npt.NDArray[np.float32] = field(repr=False)
    sources: tuple[str, ...]
    failures: tuple[tuple[str, str], ...]


def _prepare_into(
    paths: Sequence[str], spec: InputSpec, out: npt.NDArray[np.float32]
) -> list[str | None]:
    """Read and preprocess ``paths[i]`` into ``out[i]``; the failure reason per file, or None."""
    from hemo.io import read_scan

    reasons: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            out[i] = to_model_input(read_scan(path), spec)
        except HemoError as exc:
            reasons.append(exc.reason)
            continue
        except Exception as exc:  # a decoder bug must not stop a batch: report it
            log.exception("unexpected failure preparing %s", path)
            reasons.append(f"unexpected {type(exc).__name__}: {exc}")
            continue
        reasons.append(None)
    return reasons


def _prepare_chunk_into_file(
    file: str, shape: tuple[int, ...], start: int, paths: Sequence[str], spec: InputSpec
) -> list[str | None]:
    """Worker task: prepare ``paths`` into rows ``start:`` of the float32 ``shape`` file."""
    row = np.dtype(np.float32).itemsize * int(np.prod(shape[1:]))
    out = np.memmap(
        file, dtype=np.float32, mode="r+", offset=start * row, shape=(len(paths), *shape[1:])
    )
    try:
        return _prepare_into(paths, spec, out)
    finally:
        del out  # unmaps: the rows are in the shared file


def _scratch_dir() -> str | None:
    """Folder for the pool's shared output: RAM-backed when the system has one."""
    return str(SHARED_MEMORY_DIR) if SHARED_MEMORY_DIR.is_dir() else None


def prepare_many(
    paths: Sequence[str | os.PathLike[str]],
    spec: InputSpec,
    *,
    workers: int | None = 1,
    chunk_files: int = CHUNK_FILES,
) -> PreparedBatch:
    """Read and preprocess many files exactly as :func:`to_model_input` does, in parallel.

    Files are read with :func:`hemo.io.read_scan` (DICOM or image, sniffed from the bytes).
    With a pool, workers take chunks of ``chunk_files`` and write their rows straight into one
    shared output file (RAM-backed under :data:`SHARED_MEMORY_DIR` when present) that the
    parent maps, so a 256x256x3 input is never pickled through a pipe (which cost about as
    much as preparing it).

    Args:
        paths: Files to read.
        spec: The model's input spec.
        workers: Processes; 1 runs in this process, ``None`` uses every core. A single chunk
            always runs in this process (a pool would cost more than it saves).
        chunk_files: Files per worker task, >= 1.

    Returns:
        The inputs of the files that could be read, and the failures (never raised).

    Raises:
        ConfigError: ``workers`` or ``chunk_files`` below 1.
    """
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    if n_workers < 1:
        raise ConfigError(f"prepare_many: workers is {workers}: must be at least 1")
    if chunk_files < 1:
        raise ConfigError(f"prepare_many: chunk_files is {chunk_files}: must be at least 1")
    names = [os.fspath(p) for p in paths]
    shape = (len(names), *spec.input_shape)
    starts = range(0, len(names), chunk_files)
    if n_workers == 1 or len(starts) <= 1:
        out = np.empty(shape, dtype=np.float32)
        reasons = _prepare_into(names, spec, out)
    else:
        with tempfile.TemporaryDirectory(prefix="hemo-prepare-", dir=_scratch_dir()) as tmp:
            file = os.path.join(tmp, "inputs.f32")
            np.memmap(file, dtype=np.float32, mode="w+", shape=shape).flush()
            with ProcessPoolExecutor(max_workers=min(n_workers, len(starts))) as pool:
                tasks = [
                    pool.submit(
                        _prepare_chunk_into_file, file, shape, i, names[i : i + chunk_files], spec
                    )
                    for i in starts
                ]
                reasons = [reason for task in tasks for reason in task.result()]
            out = np.fromfile(file, dtype=np.float32).reshape(shape)
    ok = [i for i, reason in enumerate(reasons) if reason is None]
    inputs = out if len(ok) == len(names) else out[ok]
    return PreparedBatch(
        inputs=inputs,
        sources=tuple(names[i] for i in ok),
        failures=tuple(
            (name, reason) for name, reason in zip(names, reasons, strict=True) if reason
        ),
    )


__all__ = [
    "CHUNK_FILES",
    "DEFAULT_DISPLAY_WINDOW",
    "HEAD_GRAY_THRESHOLD",
    "HEAD_HU_THRESHOLD",
    "HEAD_ONLY_HU_THRESHOLD",
    "InputSpec",
    "PreparedBatch",
    "SKULL_GRAY_THRESHOLD",
    "SKULL_HU_THRESHOLD",
    "blacken_background",
    "flat_background",
    "head_bbox",
    "head_only",
    "largest_component",
    "midline_transform",
    "prepare_many",
    "skull_hull_mask",
    "to_display",
    "to_model_input",
    "window_stack",
]
