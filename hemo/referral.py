"""The referral band: calls too close to the threshold to make, handed to a reader instead.

A model that misses the accuracy a reader needs can still take work off them if it says which
of its calls are unsure. The band is a margin around the card's operating threshold ``t`` on the
logit scale (the scale an ensemble averages on)::

    refer  <=>  |logit(p) - logit(t)| < margin  <=>  low < p < high,
    low = sigmoid(logit(t) - margin),  high = sigmoid(logit(t) + margin)

Every other prediction is *decided*: its verdict is the usual ``p >= t``. The margin is chosen on
validation predictions (a run's ``val`` split, or the pooled out-of-fold predictions of
``hemo crossval``), never on test data: the narrowest one whose decided cases reach the target
accuracy (:data:`DEFAULT_TARGET_ACCURACY`, the issue's "at most one error in sixty"), placed
midway between the last referred and the first decided case, as the threshold is placed
between two scores. Cases at the same distance from the threshold are referred or decided
together.

A band chosen and scored on the same predictions flatters itself, so :func:`nested_estimate`
also measures it honestly: for each fold, threshold and band are chosen on the other folds and
applied to it, and the held-out outcomes are pooled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from hemo.errors import ConfigError, DatasetError, ModelError

#: Accuracy the decided cases must reach: at most one error in sixty.
DEFAULT_TARGET_ACCURACY = 0.98
#: Probabilities are clipped to [PROB_EPS, 1 - PROB_EPS] before the logit.
PROB_EPS = 1e-7
#: Distances from the threshold (logit scale) this close count as one (rounding of the logit).
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ReferralBand:
    """Probabilities in ``(low, high)`` are referred; the card's ``referral`` block.

    Attributes:
        low: Lower edge (a probability at or below it is decided negative).
        high: Upper edge (at or above it, decided positive).
        margin_logit: Half-width of the band on the logit scale, around the threshold's logit.
        target_accuracy: The accuracy the decided validation cases had to reach.
        chosen_on: What the band was chosen on (for the card reader).
    """

    low: float
    high: float
    margin_logit: float
    target_accuracy: float
    chosen_on: str = ""

    def refers(self, probability: float) -> bool:
        """Whether a prediction of ``probability`` falls inside the band (refer it)."""
        return self.low < probability < self.high

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (the card's ``referral`` field)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], threshold: float) -> ReferralBand:
        """A band from :meth:`to_dict` output, checked against the card's ``threshold``.

        Raises:
            ModelError: A field is missing or the band does not hold the threshold.
        """
        try:
            band = cls(
                low=float(data["low"]),
                high=float(data["high"]),
                margin_logit=float(data["margin_logit"]),
                target_accuracy=float(data["target_accuracy"]),
                chosen_on=str(data.get("chosen_on", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model card's referral band is malformed: {exc!r}") from exc
        if not 0.0 <= band.low <= threshold <= band.high <= 1.0 or band.margin_logit < 0:
            raise ModelError(
                f"model card's referral band ({band.low}, {band.high}) does not hold its "
                f"threshold {threshold} inside [0, 1]"
            )
        return band


def _logit(p: NDArray[np.float64] | float) -> NDArray[np.float64] | float:
    q = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
    return np.log(q / (1.0 - q))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _check_target(target_accuracy: float) -> None:
    if not 0.5 < target_accuracy <= 1.0:
        raise ConfigError(f"referral target accuracy must be in (0.5, 1], got {target_accuracy}")


def _arrays(y_true: ArrayLike, p: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    q = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != q.shape:
        raise DatasetError(f"{y.size} labels but {q.size} probabilities")
    known = np.isfinite(y) & np.isfinite(q)
    return y[known].astype(np.int64), q[known]


def band_for_margin(
    threshold: float, margin: float, target: float, chosen_on: str = ""
) -> ReferralBand:
    """The band of half-width ``margin`` (logit scale) around ``threshold``."""
    centre = float(_logit(threshold))
    if margin <= 0:
        return ReferralBand(threshold, threshold, 0.0, target, chosen_on)
    return ReferralBand(
        _sigmoid(centre - margin), _sigmoid(centre + margin), float(margin), target, chosen_on
    )


def choose_band(
    y_true: ArrayLike,
    p: ArrayLike,
    threshold: float,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    chosen_on: str = "",
) -> ReferralBand:
    """The narrowest band whose decided VALIDATION cases reach ``target_accuracy``.

    Args:
        y_true: (N,) validation labels in {0, 1} (NaN rows are left out).
        p: (N,) validation probabilities.
        threshold: The operating threshold (chosen on the same validation data).
        target_accuracy: Accuracy the decided cases must reach, in (0.5, 1].
        chosen_on: Recorded in the band.

    Returns:
        The band; width 0 (nothing referred) when every call already reaches the target.

    Raises:
        ConfigError: A target outside (0.5, 1].
        DatasetError: No validation cases, or no band leaves a decided case that reaches the
            target (the model is wrong too confidently).
    """
    _check_target(target_accuracy)
    y, q = _arrays(y_true, p)
    if y.size == 0:
        raise DatasetError("cannot choose a referral band without validation predictions")
    distance = np.abs(_logit(q) - _logit(threshold))
    order = np.argsort(distance, kind="stable")
    d = distance[order]
    correct = ((q >= threshold).astype(np.int64) == y)[order]
    # Deciding cases order[k:]: their number right, for every k
    right_from = np.cumsum(correct[::-1])[::-1]
    decided_from = np.arange(y.size, 0, -1)
    for k in range(y.size):
        if k > 0 and math.isclose(d[k], d[k - 1], rel_tol=TIE_TOLERANCE, abs_tol=TIE_TOLERANCE):
            continue  # cases at one distance go together (p and 1 - p about t = 0.5, too)
        if right_from[k] / decided_from[k] >= target_accuracy:
            margin = 0.0 if k == 0 else float((d[k - 1] + d[k]) / 2.0)
            return band_for_margin(threshold, margin, target_accuracy, chosen_on)
    raise DatasetError(
        f"no referral band reaches accuracy {target_accuracy:g} on the decided validation "
        f"cases: the model's most confident calls already miss it"
    )


def selective_metrics(
    y_true: ArrayLike, p: ArrayLike, threshold: float, band: ReferralBand
) -> dict[str, Any]:
    """What the band does on labelled predictions: how many it refers, how the rest fare.

    Returns:
        ``n``, ``referred``, ``decided``, ``coverage`` (decided / n), ``accuracy``,
        ``sensitivity`` and ``specificity`` of the decided cases (``None`` without any),
        ``errors`` at the threshold over all cases, ``errors_referred`` (of those, referred),
        ``errors_decided``, ``positives_referred`` and ``negatives_referred``.
    """
    y, q = _arrays(y_true, p)
    return _outcomes(y, q >= threshold, (q > band.low) & (q < band.high))


def _outcomes(
    y: NDArray[np.int64], called: NDArray[np.bool_], refer: NDArray[np.bool_]
) -> dict[str, Any]:
    """:func:`selective_metrics`' figures from labels, calls and referrals."""
    wrong = called != (y == 1)
    keep = ~refer
    pos, neg = keep & (y == 1), keep & (y == 0)

    def share(num: int, den: int) -> float | None:
        return num / den if den else None

    return {
        "n": int(y.size),
        "referred": int(refer.sum()),
        "decided": int(keep.sum()),
        "coverage": share(int(keep.sum()), int(y.size)),
        "accuracy": share(int((keep & ~wrong).sum()), int(keep.sum())),
        "sensitivity": share(int((pos & called).sum()), int(pos.sum())),
        "specificity": share(int((neg & ~called).sum()), int(neg.sum())),
        "errors": int(wrong.sum()),
        "errors_referred": int((wrong & refer).sum()),
        "errors_decided": int((wrong & keep).sum()),
        "positives_referred": int((refer & (y == 1)).sum()),
        "negatives_referred": int((refer & (y == 0)).sum()),
    }


def nested_estimate(
    y_true: ArrayLike,
    p: ArrayLike,
    folds: ArrayLike,
    method: str,
    target_sensitivity: float,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
) -> dict[str, Any]:
    """The band's held-out behaviour: for each fold, threshold and band from the other folds.

    Every fold's cases are scored by a threshold (:func:`hemo.evaluate.choose_threshold`) and
    a band (:func:`choose_band`) chosen without them; the outcomes are pooled into
    :func:`selective_metrics`' figures. A fold whose other folds admit no band has every case
    referred (counted in ``folds_without_band``).

    Returns:
        The pooled figures plus ``per_fold`` (fold, threshold, low, high, referred, decided,
        errors_decided) and ``folds_without_band``.
    """
    from hemo.evaluate import choose_threshold

    _check_target(target_accuracy)
    y = np.asarray(y_true, dtype=np.float64).ravel()
    q = np.asarray(p, dtype=np.float64).ravel()
    f = np.asarray(folds).ravel()
    if not y.size == q.size == f.size:
        raise DatasetError(f"{y.size} labels, {q.size} probabilities and {f.size} fold numbers")
    if len(np.unique(f)) < 2:
        raise DatasetError("a nested estimate needs at least two folds")
    refer = np.zeros(y.size, dtype=bool)
    called = np.zeros(y.size, dtype=bool)
    per_fold, without = [], 0
    for fold in np.unique(f):
        held, rest = f == fold, f != fold
        t = choose_threshold(y[rest], q[rest], method, target_sensitivity)
        called[held] = q[held] >= t
        try:
            band = choose_band(y[rest], q[rest], t, target_accuracy)
            refer[held] = (q[held] > band.low) & (q[held] < band.high)
            low, high = band.low, band.high
        except DatasetError:
            without += 1
            refer[held] = True
            low, high = 0.0, 1.0
        wrong = called[held] != (y[held] == 1)
        per_fold.append(
            {
                "fold": int(fold),
                "threshold": float(t),
                "low": float(low),
                "high": float(high),
                "referred": int(refer[held].sum()),
                "decided": int((~refer[held]).sum()),
                "errors_decided": int((wrong & ~refer[held]).sum()),
            }
        )
    pooled = _outcomes(y.astype(np.int64), called, refer)
    return {**pooled, "per_fold": per_fold, "folds_without_band": without}
