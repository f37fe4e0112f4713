"""How good is a heatmap: localisation against masks and faithfulness to the model.

Localisation (heatmap (H, W) in [0, 1] against a boolean mask (H, W) of the bleed):

- **pointing game** (Zhang et al. 2018, "Top-down neural attention by excitation backprop",
  IJCV 126:1084-1102): a hit when the map's maximum lies in the mask, with a tolerance of
  ``tolerance_px`` pixels (the mask is dilated by a disc of that radius). Zhang et al. use 15 px at
  224 px input; :func:`pointing_tolerance_px` scales that to other input sizes.
- **energy-in-mask** (the "energy-based pointing game" of Score-CAM, Wang et al. 2020): the share
  of the map's mass that falls inside the mask.
- **top-k IoU**: intersection over union of the ``topk`` fraction of highest-valued pixels with
  the mask.

Faithfulness (deletion-style, in the spirit of ROAD, Rong et al. 2022, "A consistent and efficient
evaluation strategy for attribution methods", ICML): the drop of the model's probability when the
``topk`` fraction of the input under the map's highest values is removed, against the drop when a
region of the same shape and size is removed at a random place (the top-k region rolled by a
random offset). Removal is either *air* (the value of air after windowing, 0 in every window
preset) or *blur* (a Gaussian-blurred copy of the input), both in model-input space. A faithful map
gives ``drop_cam > drop_random``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

#: Pointing-game tolerance of Zhang et al. 2018: 15 px at a 224 px input.
POINTING_TOLERANCE_PX_AT_224 = 15.0
POINTING_REFERENCE_SIZE_PX = 224.0
#: Default share of the pixels taken as "the region the map points at".
DEFAULT_TOPK = 0.05
#: Value of air in model-input space: every HU window maps -1000 HU to 0 (window floor).
AIR_VALUE = 0.0
#: Gaussian sigma (pixels of the model input) of the *blur* removal.
BLUR_SIGMA_PX = 8.0
#: Random placements averaged for the random baseline.
DEFAULT_RANDOM_DRAWS = 4
REMOVAL_MODES = ("air", "blur")


def pointing_tolerance_px(size_px: int) -> int:
    """Zhang et al.'s 15 px pointing-game tolerance, scaled from 224 px to ``size_px``."""
    return int(round(POINTING_TOLERANCE_PX_AT_224 * size_px / POINTING_REFERENCE_SIZE_PX))


def _check_pair(heatmap: NDArray, mask: NDArray) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    region = np.asarray(mask).astype(bool)
    if heat.ndim != 2 or heat.shape != region.shape:
        raise ValueError(
            f"heatmap {heat.shape} and mask {region.shape} must be 2-D arrays of the same shape"
        )
    if not region.any():
        raise ValueError("mask is empty: localisation needs at least one positive pixel")
    return heat, region


def dilate(mask: NDArray, radius_px: int) -> NDArray[np.bool_]:
    """A new mask grown by a disc of ``radius_px`` pixels (radius 0: a copy)."""
    region = np.asarray(mask).astype(np.uint8)
    if radius_px <= 0:
        return region.astype(bool)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))
    return cv2.dilate(region, disc).astype(bool)


def pointing_game(heatmap: NDArray, mask: NDArray, tolerance_px: int = 0) -> bool:
    """Whether the map's maximum falls in the mask grown by ``tolerance_px``.

    Ties at the maximum count as a hit when any of them is inside. An all-zero (flat) map points
    nowhere and is a miss.

    Args:
        heatmap: float (H, W), non-negative.
        mask: bool-like (H, W), the lesion.
        tolerance_px: Radius in pixels of the disc the mask is dilated by.

    Returns:
        True for a hit.

    Raises:
        ValueError: Shapes differ or the mask is empty.
    """
    heat, region = _check_pair(heatmap, mask)
    peak = float(heat.max())
    if peak <= 0.0:
        return False
    return bool(np.any(dilate(region, tolerance_px)[heat == peak]))


def energy_in_mask(heatmap: NDArray, mask: NDArray) -> float:
    """Share of the map's mass inside the mask, in [0, 1]; 0.0 for an all-zero map.

    Raises:
        ValueError: Shapes differ or the mask is empty.
    """
    heat, region = _check_pair(heatmap, mask)
    heat = np.maximum(heat, 0.0)
    total = float(heat.sum(dtype=np.float64))
    if total <= 0.0:
        return 0.0
    return float(heat[region].sum(dtype=np.float64) / total)


def topk_region(heatmap: NDArray, topk: float = DEFAULT_TOPK) -> NDArray[np.bool_]:
    """The ``topk`` share of pixels with the highest values (positive values only).

    Exactly ``round(topk * H * W)`` pixels (at least one) unless fewer are positive; ties are
    broken by position (stable sort), so the size does not depend on plateaus.

    Args:
        heatmap: float (H, W).
        topk: Share of the pixels, in (0, 1].

    Returns:
        bool (H, W); all False for an all-zero map.

    Raises:
        ValueError: When ``topk`` is outside (0, 1].
    """
    if not 0.0 < topk <= 1.0:
        raise ValueError(f"topk must be in (0, 1]; got {topk}")
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    count = max(1, int(round(topk * heat.size)))
    order = np.argsort(-heat, axis=None, kind="stable")[:count]
    region = np.zeros(heat.size, dtype=bool)
    region[order] = True
    region &= heat.ravel() > 0.0
    return region.reshape(heat.shape)


def iou_topk(heatmap: NDArray, mask: NDArray, topk: float = DEFAULT_TOPK) -> float:
    """IoU of :func:`topk_region` with the mask, in [0, 1].

    Raises:
        ValueError: Shapes differ, the mask is empty, or ``topk`` is outside (0, 1].
    """
    heat, region = _check_pair(heatmap, mask)
    top = topk_region(heat, topk)
    union = int(np.count_nonzero(top | region))
    return float(np.count_nonzero(top & region) / union)


def remove_region(
    x: NDArray, region: NDArray, mode: str = "air", blur_sigma_px: float = BLUR_SIGMA_PX
) -> NDArray[np.float32]:
    """A copy of a model input with ``region`` set to air or blurred.

    Args:
        x: float32 (H, W, C) model input in [0, 1]; not modified.
        region: bool (H, W).
        mode: ``"air"`` (region set to :data:`AIR_VALUE`) or ``"blur"`` (region replaced by a
            Gaussian blur of ``x`` with ``blur_sigma_px``).
        blur_sigma_px: Sigma of the blur, in model-input pixels.

    Returns:
        float32 (H, W, C).

    Raises:
        ValueError: Unknown mode or shapes that do not match.
    """
    if mode not in REMOVAL_MODES:
        raise ValueError(f"unknown removal mode {mode!r}; choose one of {list(REMOVAL_MODES)}")
    out = np.array(x, dtype=np.float32, copy=True)
    where = np.asarray(region).astype(bool)
    if out.ndim != 3 or where.shape != out.shape[:2]:
        raise ValueError(
            f"input {out.shape} must be (H, W, C) with region (H, W); got {where.shape}"
        )
    if mode == "air":
        out[where] = AIR_VALUE
    else:
        blurred = cv2.GaussianBlur(out, (0, 0), sigmaX=blur_sigma_px, sigmaY=blur_sigma_px)
        out[where] = blurred.reshape(out.shape)[where]
    return out


def random_placements(
    region: NDArray, draws: int, rng: np.random.Generator
) -> list[NDArray[np.bool_]]:
    """``draws`` copies of ``region`` rolled by random (row, col) offsets: same shape and size."""
    height, width = np.asarray(region).shape
    return [
        np.roll(region, (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1))
        for _ in range(draws)
    ]


@dataclass(frozen=True)
class DeletionScore:
    """Probabilities before and after removing the map's top region and random regions.

    Attributes:
        probability: P(label) on the intact input.
        after_cam: P(label) with the top-k region of the map removed.
        after_random: Mean P(label) with same-size regions removed at random places.
    """

    probability: float
    after_cam: float
    after_random: float

    @property
    def drop_cam(self) -> float:
        """Confidence drop caused by removing the map's region."""
        return self.probability - self.after_cam

    @property
    def drop_random(self) -> float:
        """Mean confidence drop caused by removing random regions of the same size."""
        return self.probability - self.after_random


def deletion_score(
    predict: Callable[[NDArray[np.float32]], NDArray[np.float32]],
    x: NDArray,
    heatmap: NDArray,
    topk: float = DEFAULT_TOPK,
    mode: str = "air",
    draws: int = DEFAULT_RANDOM_DRAWS,
    seed: int = 0,
) -> DeletionScore:
    """Deletion-style faithfulness of one map (ROAD-like, see the module docstring).

    Args:
        predict: Batch (N, H, W, C) float32 -> (N,) P(label) of the explained output.
        x: float32 (H, W, C) model input; not modified.
        heatmap: float (H, W) at the input size.
        topk: Share of the pixels removed.
        mode: ``"air"`` or ``"blur"`` (see :func:`remove_region`).
        draws: Random placements averaged for the baseline.
        seed: Seed of the random placements.

    Returns:
        A :class:`DeletionScore`; for an all-zero map nothing is removed and both drops are 0.
    """
    region = topk_region(heatmap, topk)
    rng = np.random.default_rng(seed)
    randoms = random_placements(region, draws, rng)
    batch = np.stack(
        [
            np.asarray(x, dtype=np.float32),
            remove_region(x, region, mode),
            *(remove_region(x, r, mode) for r in randoms),
        ]
    )
    probs = np.asarray(predict(batch), dtype=np.float64).reshape(-1)
    return DeletionScore(
        probability=float(probs[0]),
        after_cam=float(probs[1]),
        after_random=float(probs[2:].mean()),
    )
