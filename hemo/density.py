"""Density features: how much of the inside of the skull is brighter than the brain around it.

Fresh blood is denser than brain on CT (about 50-90 HU against 20-40), so in a brain window it
is a bright region inside the skull; a bleed is also usually on one side. These are the two
signs a radiologist reads first, and they can be measured without learning anything: this module
measures them on a display-grayscale slice (the model input's gray channel, after the head
crop) as a short, fixed vector of numbers, and :class:`DensityModel` turns that vector into a
log-odds with a logistic regression (18 coefficients, kept as JSON in the model card;
never a pickle).

The measurement, on a slice in [0, 1] resized to :data:`DESIGN_SIDE` pixels square first (the
size the distances were designed at; the 96-px model input is measured on the same scale):

- the *skull*: bright (>= :data:`BONE_LEVEL`) connected regions of at least 1 % of the head,
  except those the largest of them encloses (when it is one closed ring: a bleed as bright as
  bone is then measured, not taken for bone; where the skull is open or in pieces, as on 73 of
  the 140 Kaggle images, such a bleed is still taken for bone, e.g. 013, 020, 034, 062; and a
  bright frame around the whole picture would be taken for the ring); *inside*: what the closed
  skull encloses, without the skull,
  eroded away from it (the bright rim next to bone is partial volume, not blood). A slice whose
  skull is not closed (the skull base, a crop) falls back to the head's outline eroded well
  inside;
- the brain level ``m``: the median inside, and the spread (inter-quartile range);
- how far the 90th-99.5th percentiles lie above ``m``;
- for four steps ``d`` above ``m``: the share of inside pixels brighter than ``m + d`` (after a
  morphological opening, so single noisy pixels do not count), and the share of the largest
  connected such region, both on a log scale;
- the left-right asymmetry ``max(0, x - mirror(x))`` (the model's asymmetry channel): its mean
  and 99th percentile inside, and the share of inside pixels (and their mirror) brighter than
  their mirror by 0.1 and 0.2.

On the 140 Kaggle head-CT images these numbers alone separate the classes with a pooled
out-of-fold ROC AUC of 0.961, and they err on other images than the networks do: blended with
the shipped recipe's ensemble (rerun on one machine), pooled AUC 0.973 -> 0.980. But on a real negative DICOM series
(thin, contrast-enhanced) the regression calls most slices positive, so the shipped model does
not blend them (``docs/MODELS.md``, "Density features").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hemo.errors import ConfigError

#: Display level at or above which a pixel is bone (the brain window saturates at about 80 HU).
BONE_LEVEL = 0.93
#: Display level above which a pixel belongs to the head (air and background are darker).
HEAD_LEVEL = 0.08
#: Every slice is measured at this side (resized to it); the distances below are in its pixels.
DESIGN_SIDE = 192
#: Closing of the skull before its inside is filled, pixels at DESIGN_SIDE.
SKULL_CLOSING_PX = 4
#: Erosion of the inside away from the skull, pixels at DESIGN_SIDE.
SKULL_MARGIN_PX = 4
#: Fallback when the skull is not closed: the head's outline eroded by this, pixels at DESIGN_SIDE.
OPEN_SKULL_MARGIN_PX = 14
#: A skull that encloses less than this share of the head is taken as not closed.
MIN_INSIDE_SHARE = 0.15
#: A bright region is part of the skull when it covers at least this share of the head.
MIN_SKULL_SHARE = 0.01
#: Fewest inside pixels to measure; below, the whole head is measured.
MIN_INSIDE_PIXELS = 50
#: Percentiles of the inside measured above the brain level.
PERCENTILES: tuple[float, ...] = (90.0, 95.0, 98.0, 99.5)
#: Steps above the brain level whose bright share is measured.
STEPS: tuple[float, ...] = (0.1, 0.16, 0.25, 0.4)
#: Asymmetry levels whose share is measured.
ASYMMETRY_LEVELS: tuple[float, ...] = (0.1, 0.2)
#: Shares are measured as log(1 + SHARE_SCALE x share), so one in ten thousand is visible.
SHARE_SCALE = 1e4

#: The feature vector's names, in order.
FEATURE_NAMES: tuple[str, ...] = (
    "brain_level",
    "brain_spread",
    *(f"p{p:g}_above_level" for p in PERCENTILES),
    *(name for d in STEPS for name in (f"bright_share_{d:g}", f"largest_bright_region_{d:g}")),
    "asymmetry_mean",
    "asymmetry_p99",
    *(f"asymmetric_share_{a:g}" for a in ASYMMETRY_LEVELS),
)


def _px(distance: int, side: int) -> int:
    """A distance designed at DESIGN_SIDE, at this side (at least one pixel)."""
    return max(1, round(distance * side / DESIGN_SIDE))


def masks(
    gray: npt.ArrayLike,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """The head, the skull and the measured inside of a display slice (see the module docstring).

    Args:
        gray: (H, W) display grayscale in [0, 1]. Not modified.

    Returns:
        (head, skull, inside) boolean masks of the slice's shape (distances scale with its
        side; :func:`features` measures at :data:`DESIGN_SIDE`).

    Raises:
        ValueError: ``gray`` is not a 2-D array.
    """
    from scipy import ndimage

    g = _gray(gray)
    side = min(g.shape)
    head = _fill_holes(g > HEAD_LEVEL)
    head_px = max(int(head.sum()), 1)
    bone = g >= BONE_LEVEL
    labels, n = ndimage.label(bone)
    skull = bone
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        big = 1 + np.flatnonzero(sizes >= MIN_SKULL_SHARE * head_px)
        # A bright region the largest one (the skull's ring) encloses is no bone but a finding
        # as bright as bone (a dense bleed, a calcification): it stays inside, measured. Only
        # a closed ring encloses anything; an open or broken skull keeps such a region as bone
        ring = labels == 1 + int(np.argmax(sizes))
        enclosed = _fill_holes(_closing(ring, _px(SKULL_CLOSING_PX, side))) & ~ring
        inner = np.zeros(n + 1, dtype=bool)
        inner[np.unique(labels[enclosed])] = True
        inner[np.unique(labels[bone & ~enclosed])] = False
        skull = np.isin(labels, big[~inner[big]])
    closed = _closing(skull, _px(SKULL_CLOSING_PX, side))
    inside = _fill_holes(closed) & ~skull
    if inside.sum() < MIN_INSIDE_SHARE * head_px:
        inside = _erode(head, _px(OPEN_SKULL_MARGIN_PX, side)) & ~skull
    inside = _erode(inside, _px(SKULL_MARGIN_PX, side))
    if inside.sum() < MIN_INSIDE_PIXELS:
        inside = head
    return head, skull, inside


def features(gray: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The density features of one display slice, in :data:`FEATURE_NAMES` order.

    Args:
        gray: (H, W) display grayscale in [0, 1] (the model input's gray channel), measured
            resized to :data:`DESIGN_SIDE` pixels square. Not modified.

    Returns:
        float64 (len(FEATURE_NAMES),), all finite.

    Raises:
        ValueError: ``gray`` is not a 2-D array.
    """
    from scipy import ndimage

    g = _at_design_side(_gray(gray))
    _, _, inside = masks(g)
    if not inside.any():  # a blank slice: nothing to measure, nothing bright
        inside = np.ones_like(inside)
    values = g[inside]
    level = float(np.median(values))
    q1, q3 = np.percentile(values, [25.0, 75.0])
    out = [level, float(q3 - q1)]
    out += [float(v) - level for v in np.percentile(values, PERCENTILES)]
    n_inside = float(inside.sum())
    for step in STEPS:
        bright = _opening(inside & (g > level + step))
        labels, n = ndimage.label(bright)
        largest = float(np.bincount(labels.ravel())[1:].max()) if n else 0.0
        out += [_share(bright.sum() / n_inside), _share(largest / n_inside)]
    asymmetry = np.clip(g - g[:, ::-1], 0.0, None)
    out += [float(asymmetry[inside].mean()), float(np.percentile(asymmetry[inside], 99.0))]
    both_sides = inside & inside[:, ::-1]
    for level_a in ASYMMETRY_LEVELS:
        region = _opening(both_sides & (asymmetry > level_a))
        out.append(_share(region.sum() / n_inside))
    return np.asarray(out, dtype=np.float64)


def many_features(grays: Sequence[npt.ArrayLike] | npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """:func:`features` of every slice: float64 (N, len(FEATURE_NAMES))."""
    rows = [features(g) for g in grays]
    if not rows:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float64)
    return np.stack(rows)


# Binary morphology with the 4-connected cross, outside the slice counted as background (scipy's
# binary_* defaults), through OpenCV: several times faster than scipy.ndimage on these sizes.
def _morph(operation: str, mask: npt.NDArray[np.bool_], iterations: int) -> npt.NDArray[np.bool_]:
    """``cv2.erode`` or ``cv2.dilate`` of a boolean mask by the 3 x 3 cross, outside = 0."""
    import cv2

    out = getattr(cv2, operation)(
        mask.astype(np.uint8),
        cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)),
        iterations=iterations,
        borderType=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return out.astype(bool)


def _erode(mask: npt.NDArray[np.bool_], iterations: int = 1) -> npt.NDArray[np.bool_]:
    return _morph("erode", mask, iterations)


def _dilate(mask: npt.NDArray[np.bool_], iterations: int = 1) -> npt.NDArray[np.bool_]:
    return _morph("dilate", mask, iterations)


def _opening(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    return _dilate(_erode(mask))


def _closing(mask: npt.NDArray[np.bool_], iterations: int) -> npt.NDArray[np.bool_]:
    return _erode(_dilate(mask, iterations), iterations)


def _fill_holes(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The mask with every background region that does not reach the border filled."""
    from scipy import ndimage

    labels, n = ndimage.label(~mask)
    if not n:
        return mask.copy()
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return mask | ~np.isin(labels, edge[edge > 0]) & (labels > 0)


def _share(share: float) -> float:
    return math.log1p(SHARE_SCALE * float(share))


def _at_design_side(g: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The slice resized (bilinear) to DESIGN_SIDE square, unless it is that already."""
    import cv2

    if g.shape == (DESIGN_SIDE, DESIGN_SIDE):
        return g
    return cv2.resize(g, (DESIGN_SIDE, DESIGN_SIDE), interpolation=cv2.INTER_LINEAR)


def _gray(gray: npt.ArrayLike) -> npt.NDArray[np.float32]:
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or min(g.shape) < 2:
        raise ValueError(f"density features need a 2-D slice, got shape {g.shape}")
    return g


#: Probabilities are clipped this far from 0 and 1 before their log-odds are taken.
PROB_EPS = 1e-6
#: Largest log-odds either side of a blend gives: those of 1 - PROB_EPS.
MAX_LOGIT = float(np.log((1.0 - PROB_EPS) / PROB_EPS))
#: Inverse regularisation strength of :meth:`DensityModel.fit` (scikit-learn's default, fixed
#: in advance, not tuned).
DEFAULT_C = 1.0


@dataclass(frozen=True)
class DensityModel:
    """A logistic regression over standardised density features (and optionally extra inputs).

    ``logit(x) = intercept + sum(coef * (x - mean) / scale)``, where ``x`` is the feature
    vector (``names`` say which: :data:`FEATURE_NAMES`, optionally followed by extra inputs
    such as a network's logit, ``"network_logit"``).

    Attributes:
        names: The inputs' names, in order.
        mean: Their means on the training images.
        scale: Their standard deviations there (1 where constant).
        coef: The regression's coefficients on the standardised inputs.
        intercept: Its intercept.
    """

    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0 or not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ConfigError(
                f"a density model needs as many means, scales and coefficients as names "
                f"({n} names, {len(self.mean)}/{len(self.scale)}/{len(self.coef)})"
            )
        numbers = [*self.mean, *self.scale, *self.coef, self.intercept]
        if not all(math.isfinite(v) for v in numbers) or min(self.scale) <= 0:
            raise ConfigError("a density model's numbers must be finite, its scales positive")

    @classmethod
    def fit(
        cls,
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        names: Sequence[str] = FEATURE_NAMES,
        c: float = DEFAULT_C,
    ) -> DensityModel:
        """Fit on (N, len(names)) inputs and N 0/1 labels (scikit-learn, L2, ``C = c``)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        xs = np.asarray(x, dtype=np.float64)
        ys = np.asarray(y).astype(int)
        if xs.ndim != 2 or xs.shape[1] != len(names) or len(xs) != len(ys):
            raise ConfigError(
                f"a density model over {len(names)} inputs needs (N, {len(names)}) inputs and "
                f"N labels, got {xs.shape} and {ys.shape}"
            )
        if len(np.unique(ys)) < 2:
            raise ConfigError("a density model needs images of both classes to fit")
        scaler = StandardScaler().fit(xs)
        regression = LogisticRegression(C=c, max_iter=10_000).fit(scaler.transform(xs), ys)
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        return cls(
            names=tuple(names),
            mean=tuple(float(v) for v in scaler.mean_),
            scale=tuple(float(v) for v in scale),
            coef=tuple(float(v) for v in regression.coef_[0]),
            intercept=float(regression.intercept_[0]),
        )

    def logit(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Log-odds of (N, len(names)) or (len(names),) inputs: (N,) or a 0-d array, clipped to
        +-:data:`MAX_LOGIT`, the bound of the network's own log-odds, so a blend stays finite
        and neither side can be surer than the other can be. The clip does not stop the
        regression from extrapolating on slices unlike its training images (on the real CQ500
        series its log-odds reach 12.5; ``docs/MODELS.md``, "Density features")."""
        xs = np.asarray(x, dtype=np.float64)
        if xs.shape[-1:] != (len(self.names),):
            raise ConfigError(
                f"this density model takes {len(self.names)} inputs, got shape {xs.shape}"
            )
        z = (xs - np.asarray(self.mean)) / np.asarray(self.scale)
        return np.clip(z @ np.asarray(self.coef) + self.intercept, -MAX_LOGIT, MAX_LOGIT)

    def to_dict(self) -> dict[str, Any]:
        """The model as JSON-ready numbers (the card's ``density`` entry)."""
        return {
            "names": list(self.names),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DensityModel:
        """Read :meth:`to_dict`'s numbers back; a malformed entry is a :class:`ConfigError`."""
        try:
            return cls(
                names=tuple(str(n) for n in data["names"]),
                mean=tuple(float(v) for v in data["mean"]),
                scale=tuple(float(v) for v in data["scale"]),
                coef=tuple(float(v) for v in data["coef"]),
                intercept=float(data["intercept"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed density model: {exc}") from exc


#: Weight of the density logit in a blend with the network's (0.5: the plain mean of the two
#: log-odds, fixed in advance; bench/density_stack.py's ``mean`` row).
DEFAULT_WEIGHT = 0.5


def logit_of(probability: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Log-odds of probabilities, clipped :data:`PROB_EPS` away from 0 and 1."""
    p = np.clip(np.asarray(probability, dtype=np.float64), PROB_EPS, 1.0 - PROB_EPS)
    return np.log(p / (1.0 - p))


@dataclass(frozen=True)
class DensityBlend:
    """A model card's ``density`` entry: the network's P(any) blended with the density model's.

    ``logit = (1 - weight) * network_logit + weight * density.logit(features(gray))``, the
    probability its sigmoid. ``hemo crossval`` with ``density = true`` fits ``model`` on the
    training images' features (per fold for the out-of-fold figures, on every image for the
    exported card) and chooses the card's threshold on the blended out-of-fold probabilities.

    Attributes:
        model: The regression over :data:`FEATURE_NAMES`.
        weight: The density logit's share, in [0, 1].
    """

    model: DensityModel
    weight: float = DEFAULT_WEIGHT

    def __post_init__(self) -> None:
        if self.model.names != FEATURE_NAMES:
            raise ConfigError(
                "the card's density model was fitted on other features than this hemo measures "
                f"({len(self.model.names)} named {', '.join(self.model.names[:3])}, ...); "
                "refit it with this version (hemo crossval with density = true)"
            )
        if not (0.0 <= self.weight <= 1.0) or isinstance(self.weight, bool):
            raise ConfigError(f"a density blend's weight must lie in [0, 1], got {self.weight!r}")

    def blend_features(
        self, probability: npt.ArrayLike, feature_rows: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        """Blended P(any) of (N,) network probabilities and their (N, F) density features."""
        from scipy.special import expit

        z = (1.0 - self.weight) * logit_of(probability) + self.weight * self.model.logit(
            feature_rows
        )
        return expit(z)

    def blend(
        self, probability: npt.ArrayLike, grays: Sequence[npt.ArrayLike] | npt.NDArray[Any]
    ) -> npt.NDArray[np.float64]:
        """Blended P(any) of (N,) network probabilities and their (N, H, W) gray slices."""
        return self.blend_features(probability, many_features(grays))

    def to_dict(self) -> dict[str, Any]:
        """The card's ``density`` entry."""
        return {"weight": self.weight, "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> DensityBlend:
        """Read :meth:`to_dict`'s entry back; a malformed one is a :class:`ConfigError`."""
        if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
            raise ConfigError(f"malformed density entry: {data!r:.80}")
        weight = data.get("weight", DEFAULT_WEIGHT)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ConfigError(f"a density blend's weight must be a number, got {weight!r:.80}")
        return cls(DensityModel.from_dict(data["model"]), float(weight))
