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

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

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


# Aggregation over a dataset ---------------------------------------------------------------------
#: Slices explained per model call in :func:`cam_quality`.
QUALITY_BATCH = 16
#: Default cap on the slices :func:`cam_quality` scores (seeded sample beyond it).
DEFAULT_MAX_SLICES = 200
ANY_LABEL = "any"
ANY_COLUMN = "label_any"
#: Share of a resized mask pixel that must be lesion for the pixel to count (INTER_AREA resize).
MASK_AREA_THRESHOLD = 0.5


def read_mask(mask_path: str | Path, label: str) -> NDArray[np.bool_]:
    """The lesion mask of ``label`` from a bitmask PNG (bit ``i`` = ``SUBTYPES[i]``).

    Args:
        mask_path: ``masks/ID_<id>.png``, uint8 (H, W) (see docs/CONTRACTS.md, Phantoms).
        label: A subtype, or ``"any"`` for the union of all subtypes.

    Returns:
        bool (H, W) at the scan's original size.

    Raises:
        DatasetError: The file cannot be read or ``label`` is not a subtype.
    """
    from hemo.config import SUBTYPES
    from hemo.errors import DatasetError

    bits = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    if bits is None or bits.ndim != 2:
        raise DatasetError("cannot read the mask as a one-channel bitmask PNG", source=mask_path)
    if label == ANY_LABEL:
        return bits > 0
    if label not in SUBTYPES:
        raise DatasetError(f"no mask bit for label {label!r}; masks have {list(SUBTYPES)}")
    return ((bits >> SUBTYPES.index(label)) & 1).astype(bool)


def mask_to_input(mask: NDArray, scan: Any, spec: Any) -> NDArray[np.bool_]:
    """A mask at the scan's size carried through the geometry of ``to_model_input``.

    :func:`hemo.preprocess.mask_to_model_input` (the same alignment, crop, skull mask, padding
    and ``INTER_AREA`` resize as the pixels get); a pixel is lesion when at least
    :data:`MASK_AREA_THRESHOLD` of it was.

    Args:
        mask: bool (H, W) at the scan's size.
        scan: The ``CTSlice`` or ``Image2D`` the mask belongs to.
        spec: The model's ``InputSpec``.

    Returns:
        bool (size, size).

    Raises:
        DatasetError: The mask does not have the scan's shape.
    """
    from hemo.errors import DatasetError, InputError
    from hemo.preprocess import mask_to_model_input

    try:
        area = mask_to_model_input(mask, scan, spec)
    except InputError as exc:
        raise DatasetError(str(exc)) from exc
    return area >= MASK_AREA_THRESHOLD


def _label_column(label: str) -> str:
    return ANY_COLUMN if label == ANY_LABEL else label


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def cam_quality(
    model: Any,
    card: Any,
    index_df: Any,
    method: str = "gradcam",
    split: str | None = "test",
    max_slices: int = DEFAULT_MAX_SLICES,
    label: str = ANY_LABEL,
    topk: float = DEFAULT_TOPK,
    tolerance_px: int | None = None,
    removal: tuple[str, ...] = REMOVAL_MODES,
    draws: int = DEFAULT_RANDOM_DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """Localisation and faithfulness of one CAM method over the positive slices with masks.

    Slices are the rows of ``index_df`` in ``split`` that are positive for ``label`` and have a
    ``mask_path``; for a subtype its own mask bit is used, for ``any`` the union of all. Beyond
    ``max_slices`` a seeded sample is taken. A slice that cannot be read is skipped and counted.

    Args:
        model: The Keras model (never modified).
        card: Its ``ModelCard`` (``input_spec``, ``labels``, ``cam_layer``).
        index_df: Dataset index (docs/CONTRACTS.md), absolute paths (``load_index``).
        method: A key of ``hemo.cam.METHODS``.
        split: ``"train"``, ``"val"``, ``"test"``, or ``None`` for all rows.
        max_slices: Most slices scored.
        label: ``"any"`` or a subtype in ``card.labels``.
        topk: Share of the pixels in the top region (IoU, deletion).
        tolerance_px: Pointing-game tolerance; default :func:`pointing_tolerance_px` of the
            input size.
        removal: Deletion modes to measure (``"air"``, ``"blur"``).
        draws: Random placements per slice for the deletion baseline.
        seed: Seed of the sample and the random placements.

    Returns:
        A JSON-ready dict: ``method, label, layer, split, n_slices, n_errors, tolerance_px, topk,
        pointing_game, energy_in_mask, iou_topk, flat_fraction, seconds_per_slice`` and
        ``faithfulness: {mode: {drop_cam, drop_random, gain}}``; the means are ``None`` when no
        slice qualifies.

    Raises:
        ValueError: Unknown method or a label the model does not output.
        DatasetError: The index lacks the label column.
    """
    import time

    from hemo.cam.registry import get_method
    from hemo.errors import DatasetError, HemoError
    from hemo.io import read_scan
    from hemo.preprocess import to_model_input

    spec = card.input_spec
    explainer = get_method(method)(model, layer=card.cam_layer or None, labels=card.labels)
    index = tuple(card.labels).index(label) if label in card.labels else None
    if index is None:
        raise ValueError(
            f"label {label!r} is not an output of this model; outputs: {list(card.labels)}"
        )
    column = _label_column(label)
    if column not in index_df.columns:
        raise DatasetError(f"the index has no {column!r} column; cannot select positive slices")
    rows = index_df
    if split is not None and "split" in rows.columns:
        rows = rows[rows["split"] == split]
    rows = rows[(rows[column] == 1)]
    rows = rows[rows["mask_path"].notna()] if "mask_path" in rows.columns else rows.iloc[:0]
    rows = rows.sort_values("path")
    if len(rows) > max_slices:
        rows = rows.sample(n=max_slices, random_state=seed).sort_values("path")
    tolerance = pointing_tolerance_px(spec.size) if tolerance_px is None else tolerance_px

    def predict(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return 1.0 / (1.0 + np.exp(-explainer.logits(batch)[:, index].astype(np.float64)))

    hits: list[float] = []
    energies: list[float] = []
    ious: list[float] = []
    flats: list[float] = []
    drops: dict[str, list[DeletionScore]] = {mode: [] for mode in removal}
    errors = 0
    start = time.perf_counter()
    items = list(rows[["path", "mask_path"]].itertuples(index=False))
    for first in range(0, len(items), QUALITY_BATCH):
        inputs, masks = [], []
        for path, mask_path in items[first : first + QUALITY_BATCH]:
            try:
                scan = read_scan(path)
                x = to_model_input(scan, spec)
                mask = mask_to_input(read_mask(mask_path, label), scan, spec)
            except HemoError as exc:
                log.warning("cam_quality: skipping %s: %s", path, exc)
                errors += 1
                continue
            if not mask.any():
                log.warning("cam_quality: skipping %s: mask empty at the input size", path)
                errors += 1
                continue
            inputs.append(x)
            masks.append(mask)
        if not inputs:
            continue
        results = explainer(np.stack(inputs), label=label)
        for offset, (x, mask, result) in enumerate(zip(inputs, masks, results, strict=True)):
            hits.append(float(pointing_game(result.heatmap, mask, tolerance)))
            energies.append(energy_in_mask(result.heatmap, mask))
            ious.append(iou_topk(result.heatmap, mask, topk))
            flats.append(float(result.flat))
            for mode in removal:
                drops[mode].append(
                    deletion_score(
                        predict, x, result.heatmap, topk, mode, draws, seed + first + offset
                    )
                )
    seconds = time.perf_counter() - start
    faithfulness = {}
    for mode, scores in drops.items():
        cam = _mean([s.drop_cam for s in scores])
        rand = _mean([s.drop_random for s in scores])
        faithfulness[mode] = {
            "drop_cam": cam,
            "drop_random": rand,
            "gain": None if cam is None or rand is None else cam - rand,
        }
    return {
        "method": method,
        "label": label,
        "layer": explainer.layer,
        "split": split,
        "n_slices": len(hits),
        "n_errors": errors,
        "tolerance_px": tolerance,
        "topk": topk,
        "pointing_game": _mean(hits),
        "energy_in_mask": _mean(energies),
        "iou_topk": _mean(ious),
        "flat_fraction": _mean(flats),
        "faithfulness": faithfulness,
        "seconds_per_slice": seconds / len(hits) if hits else None,
    }
