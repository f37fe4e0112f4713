"""Evaluation: scikit-learn metrics in a frozen :class:`EvalReport`, and threshold selection.

Every number a report carries is computed from two arrays, the labels and the predicted
probabilities, so the same functions serve training runs (``hemo.train``), ``hemo evaluate`` and
the pages. Conventions, stated once:

* A case is called positive when ``probability >= threshold`` (the card's operating threshold).
* Metrics that are undefined for the data at hand are ``None`` with the reason in ``notes``,
  never a crash and never a silent NaN: ROC AUC with one class, sensitivity without positives,
  PPV with no positive calls, and so on.
* Expected calibration error (ECE) uses 10 equal-width bins of the predicted probability of the
  positive class on [0, 1]; bin ``b`` holds ``floor(p * 10) == b`` (p = 1.0 in the last bin), and
  ``ECE = sum_b (n_b / n) * |mean(y in b) - mean(p in b)|`` (Naeini et al. 2015; Guo et al. 2017
  use the top-label confidence instead, which for a binary output folds the two halves together).
* ROC and precision-recall curve points are thinned to at most :data:`MAX_CURVE_POINTS` points,
  keeping both ends.
* Study-level results group slices by ``study_uid``: a study is positive when any slice is, and
  its score is either the **maximum** slice probability (one bleed on one slice is a bleed) or the
  **mean of the top k** slice probabilities (k = :data:`DEFAULT_TOP_K`, or every slice when a
  study has fewer), which is less swayed by one noisy slice. Both are reported. When the model's
  card has a slice range (:mod:`hemo.anatomy`), both scores use only the slices inside it, as
  ``hemo predict`` does (every slice when none is); the study's label stays the maximum over
  all of its slices.
* The RSNA-2019 metric is the weighted multi-label log loss with ``config.RSNA_LABEL_WEIGHTS``
  (``any`` counts twice), probabilities clipped to ``[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]``; unknown
  labels (NaN) are left out of both the sum and the weights.
* The operating threshold is chosen on the validation split only (:func:`select_threshold`
  refuses any other split); the test split is for reporting.
* Confidence intervals (``ci95``, :func:`bootstrap_ci`): 95 % percentile intervals over
  :data:`BOOTSTRAP_RESAMPLES` stratified bootstrap resamples (fewer on large sets,
  :func:`report_resamples`) (positives and negatives each
  resampled with replacement to their own count, seeded), at the report's fixed threshold. They
  say how much the figure would move on another sample of the same size from the same
  population; they do not cover a threshold tuned on the same cases (then they are optimistic).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn import metrics as skm

from hemo import config
from hemo.errors import ConfigError, DatasetError, HemoError

if TYPE_CHECKING:
    import keras

    from hemo.lookalike import ReferenceSet
    from hemo.model import ModelCard

log = logging.getLogger(__name__)

#: Equal-width bins of the expected calibration error.
ECE_BINS = 10
#: Stratified bootstrap resamples of :func:`bootstrap_ci`.
BOOTSTRAP_RESAMPLES = 2000
#: Reports use fewer resamples on large sets: at most this many resampled cases in all (2000
#: resamples up to 10 000 cases, about a second more on 100 000), and never under
#: :data:`MIN_BOOTSTRAP_RESAMPLES`; a large set's interval is narrow anyway.
BOOTSTRAP_CASE_BUDGET = 20_000_000
MIN_BOOTSTRAP_RESAMPLES = 200
#: Resamples drawn at once (bounds memory: chunk x cases weights).
BOOTSTRAP_CHUNK = 100
#: Metrics :func:`bootstrap_ci` gives intervals for.
CI_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")
#: Most points kept of a ROC or PR curve (the ends are always kept).
MAX_CURVE_POINTS = 200
#: Slices averaged by the top-k study score.
DEFAULT_TOP_K = 3
#: Probabilities are clipped to [eps, 1 - eps] in the log loss.
LOG_LOSS_EPS = 1e-7
#: Default sensitivity target of ``method="sensitivity"`` threshold selection.
DEFAULT_TARGET_SENSITIVITY = 0.95
THRESHOLD_METHODS = config.THRESHOLD_METHODS
#: The split thresholds are tuned on; nothing else is accepted.
THRESHOLD_SPLIT = "val"
#: Index column holding the ``any`` label (the other labels are columns of their own name).
ANY_LABEL = "any"
ANY_COLUMN = "label_any"
#: Source names of unreadable files listed in a report (the count is always complete).
MAX_FAILED_LISTED = 20
DEFAULT_BATCH_SIZE = 32
#: ``split`` value that selects every row of an index (a dataset the model never saw).
ALL_SPLITS = "all"


# Results ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Confusion:
    """Binary confusion counts at one threshold."""

    tn: int
    fp: int
    fn: int
    tp: int

    def matrix(self) -> list[list[int]]:
        """``[[tn, fp], [fn, tp]]``: rows are the truth (0, 1), columns the call (0, 1)."""
        return [[self.tn, self.fp], [self.fn, self.tp]]


@dataclass(frozen=True)
class Curve:
    """Points of a ROC curve (x = FPR, y = TPR) or PR curve (x = recall, y = precision).

    ``thresholds[i]`` is the score threshold of point ``i`` (``inf`` for the ROC origin; the PR
    curve's last point, recall 0 and precision 1, has no threshold and repeats the last one).
    """

    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    thresholds: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, list[float | None]]:
        """JSON-safe dict; infinite thresholds become ``None``."""
        return {
            "x": list(self.x),
            "y": list(self.y),
            "thresholds": [t if math.isfinite(t) else None for t in self.thresholds],
        }


@dataclass(frozen=True)
class BinaryMetrics:
    """Metrics of one binary label at one threshold.

    Attributes:
        label: Label name (``"any"`` or a subtype).
        n: Number of cases with a known label.
        positives: Number of positive cases.
        threshold: Operating threshold (positive when ``p >= threshold``).
        accuracy, sensitivity, specificity, ppv, npv, f1: At ``threshold``; ``None`` when
            undefined (the reason is in ``notes``).
        roc_auc: Area under the ROC curve; ``None`` with one class.
        pr_auc: Average precision (step-wise area under the PR curve); ``None`` without positives.
        brier: Mean squared error of the probabilities.
        ece: Expected calibration error over :data:`ECE_BINS` equal-width bins.
        confusion: Counts at ``threshold``.
        roc: ROC curve points (thinned).
        pr: Precision-recall curve points (thinned).
        notes: Why a metric is ``None``, and other caveats.
    """

    label: str
    n: int
    positives: int
    threshold: float
    accuracy: float
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    f1: float | None
    roc_auc: float | None
    pr_auc: float | None
    brier: float
    ece: float
    confusion: Confusion
    roc: Curve = field(default_factory=Curve)
    pr: Curve = field(default_factory=Curve)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (confusion as counts and matrix, curves as lists)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(BinaryMetrics)}
        data["confusion"] = {
            **dataclasses.asdict(self.confusion),
            "matrix": self.confusion.matrix(),
        }
        data["roc"] = self.roc.to_dict()
        data["pr"] = self.pr.to_dict()
        data["notes"] = list(self.notes)
        return data


@dataclass(frozen=True)
class EvalReport(BinaryMetrics):
    """An evaluation: the ``any`` metrics (inherited fields) plus everything around them.

    Attributes:
        split: Index split the cases came from (``None`` for bare arrays).
        model: Model name, when known.
        per_label: Metrics of every output label (empty for a single-label model).
        rsna_log_loss: RSNA-2019 weighted log loss; ``None`` without subtype labels.
        study_max: Study-level metrics, study score = max slice probability; ``None`` when no
            study has more than one slice (then it equals the slice-level result).
        study_top_k: Study-level metrics, study score = mean of the ``top_k`` highest slices.
        top_k: The k of ``study_top_k``.
        n_studies: Number of studies (``None`` without study UIDs).
        n_failed: Cases whose file could not be read or preprocessed (left out of every metric).
        failed: Up to :data:`MAX_FAILED_LISTED` of their sources with the error.
        ci95: 95 % bootstrap intervals of the headline label's accuracy, sensitivity,
            specificity and ROC AUC (:func:`bootstrap_ci`), ``{metric: [low, high] or None}``.
        referral: What the card's referral band does on these cases
            (:func:`hemo.referral.selective_metrics` plus ``band``); ``None`` when the card has
            no band.
    """

    split: str | None = None
    model: str | None = None
    per_label: dict[str, BinaryMetrics] = field(default_factory=dict)
    rsna_log_loss: float | None = None
    study_max: BinaryMetrics | None = None
    study_top_k: BinaryMetrics | None = None
    top_k: int = DEFAULT_TOP_K
    n_studies: int | None = None
    n_failed: int = 0
    failed: tuple[str, ...] = ()
    ci95: dict[str, list[float] | None] = field(default_factory=dict)
    referral: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the whole report (what ``hemo evaluate --json`` prints)."""
        data = super().to_dict()
        data.update(
            split=self.split,
            model=self.model,
            per_label={k: v.to_dict() for k, v in self.per_label.items()},
            rsna_log_loss=self.rsna_log_loss,
            study_max=None if self.study_max is None else self.study_max.to_dict(),
            study_top_k=None if self.study_top_k is None else self.study_top_k.to_dict(),
            top_k=self.top_k,
            n_studies=self.n_studies,
            n_failed=self.n_failed,
            failed=list(self.failed),
            ci95=dict(self.ci95),
            referral=self.referral,
        )
        return data

    def summary(self) -> dict[str, float | int | None]:
        """The headline numbers (for a model card or a runs table)."""
        keys = ("n", "positives", "threshold", "accuracy", "sensitivity", "specificity")
        keys += ("ppv", "npv", "f1", "roc_auc", "pr_auc", "brier", "ece")
        data: dict[str, float | int | None] = {k: getattr(self, k) for k in keys}
        data["rsna_log_loss"] = self.rsna_log_loss
        return data


# Pure metric functions --------------------------------------------------------------------------
def _as_binary(y_true: ArrayLike, p: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Validate (N,) labels in {0, 1} and (N,) probabilities in [0, 1]; returns copies."""
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    q = np.asarray(p, dtype=np.float64).reshape(-1)
    if y.shape != q.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.size} vs {q.size}")
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise ValueError("labels must be 0 or 1 (drop unknown labels first)")
    if not np.all(np.isfinite(q)) or np.any(q < 0.0) or np.any(q > 1.0):
        raise ValueError("probabilities must be finite and within [0, 1]")
    return y.astype(np.int64), q


def expected_calibration_error(y_true: ArrayLike, p: ArrayLike, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over equal-width probability bins.

    Args:
        y_true: (N,) labels in {0, 1}.
        p: (N,) predicted probabilities of the positive class in [0, 1].
        n_bins: Number of equal-width bins on [0, 1]; ``p == 1`` falls in the last bin.

    Returns:
        ``sum_b (n_b / N) * |mean(y_b) - mean(p_b)|`` over non-empty bins; 0.0 for N = 0.
    """
    y, q = _as_binary(y_true, p)
    if y.size == 0:
        return 0.0
    bins = np.minimum((q * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        members = bins == b
        total += members.sum() / y.size * abs(y[members].mean() - q[members].mean())
    return float(total)


def brier_score(y_true: ArrayLike, p: ArrayLike) -> float:
    """Brier score: mean of ``(p - y)^2`` over (N,) labels and probabilities (0 is perfect)."""
    y, q = _as_binary(y_true, p)
    return float(skm.brier_score_loss(y, q, labels=[0, 1]))


def _ratio(num: int, den: int, what: str, why: str, notes: list[str]) -> float | None:
    if den == 0:
        notes.append(f"{what} undefined: {why}")
        return None
    return num / den


def _thin(x: NDArray, y: NDArray, t: NDArray, max_points: int) -> Curve:
    """Keep at most ``max_points`` evenly spaced points of a curve, both ends included."""
    if x.size > max_points:
        keep = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(np.int64))
        x, y, t = x[keep], y[keep], t[keep]
    return Curve(tuple(map(float, x)), tuple(map(float, y)), tuple(map(float, t)))


def binary_metrics(
    y_true: ArrayLike,
    p: ArrayLike,
    threshold: float,
    label: str = ANY_LABEL,
    max_curve_points: int = MAX_CURVE_POINTS,
) -> BinaryMetrics:
    """Every binary metric of one label at ``threshold``.

    Args:
        y_true: (N,) labels in {0, 1}.
        p: (N,) probabilities in [0, 1].
        threshold: A case is called positive when ``p >= threshold``.
        label: Name recorded in the result.
        max_curve_points: Most points kept of each curve.

    Returns:
        :class:`BinaryMetrics`; undefined metrics are ``None`` with the reason in ``notes``.

    Raises:
        DatasetError: No cases at all.
        ValueError: Labels not in {0, 1}, probabilities outside [0, 1], or lengths differ.
    """
    y, q = _as_binary(y_true, p)
    if y.size == 0:
        raise DatasetError(f"no cases with a known {label!r} label to evaluate")
    notes: list[str] = []
    calls = (q >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, calls, labels=[0, 1]).ravel())
    positives, negatives = tp + fn, tn + fp
    sensitivity = _ratio(tp, positives, "sensitivity", "no positive cases", notes)
    specificity = _ratio(tn, negatives, "specificity", "no negative cases", notes)
    ppv = _ratio(tp, tp + fp, "PPV", "no case called positive", notes)
    npv = _ratio(tn, tn + fn, "NPV", "no case called negative", notes)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, "F1", "no positive cases and no positive calls", notes)
    # Threshold-free metrics need both classes (ROC) or at least one positive (PR)
    roc_auc = pr_auc = None
    roc = pr = Curve()
    if positives and negatives:
        roc_auc = float(skm.roc_auc_score(y, q))
        fpr, tpr, roc_t = skm.roc_curve(y, q, drop_intermediate=True)
        roc = _thin(fpr, tpr, roc_t, max_curve_points)
    else:
        only = "positive" if positives else "negative"
        notes.append(f"ROC AUC undefined: every one of the {y.size} cases is {only}")
    if positives:
        pr_auc = float(skm.average_precision_score(y, q))
        precision, recall, pr_t = skm.precision_recall_curve(y, q, drop_intermediate=True)
        pr_t = np.append(pr_t, pr_t[-1])  # the (recall 0, precision 1) end has no threshold
        pr = _thin(recall, precision, pr_t, max_curve_points)
    else:
        notes.append("PR AUC undefined: no positive cases")
    return BinaryMetrics(
        label=label,
        n=int(y.size),
        positives=positives,
        threshold=float(threshold),
        accuracy=(tp + tn) / y.size,
        sensitivity=sensitivity,
        specificity=specificity,
        ppv=ppv,
        npv=npv,
        f1=f1,
        roc_auc=roc_auc,
        pr_auc=pr_auc,
        brier=brier_score(y, q),
        ece=expected_calibration_error(y, q),
        confusion=Confusion(tn, fp, fn, tp),
        roc=roc,
        pr=pr,
        notes=tuple(notes),
    )


def report_resamples(n_cases: int) -> int:
    """Bootstrap resamples a report uses for ``n_cases`` cases (see :data:`BOOTSTRAP_CASE_BUDGET`)."""
    budget = BOOTSTRAP_CASE_BUDGET // max(1, n_cases)
    return int(min(BOOTSTRAP_RESAMPLES, max(MIN_BOOTSTRAP_RESAMPLES, budget)))


def bootstrap_ci(
    y_true: ArrayLike,
    p: ArrayLike,
    threshold: float,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """Stratified percentile-bootstrap intervals of accuracy, sensitivity, specificity, ROC AUC.

    Each resample draws the positives and the negatives with replacement, each to its own count
    (so every resample has both classes and the same prevalence), as multinomial weights on the
    original cases: every metric of a resample is then a weighted sum, and the ROC AUC (the
    probability that a positive outranks a negative, ties counting half) comes from cumulative
    weights of the sorted negatives, so no resample is sorted again.

    Args:
        y_true: (N,) labels in {0, 1}.
        p: (N,) probabilities in [0, 1].
        threshold: Calls are positive when ``p >= threshold``.
        n_resamples: Bootstrap resamples.
        level: Coverage of the interval, in (0, 1).
        seed: Seed of the resampling.

    Returns:
        ``{metric: [low, high]}`` for :data:`CI_METRICS`; ``None`` for a metric the data cannot
        give (sensitivity without positives, specificity without negatives, AUC without both).

    Raises:
        ValueError: ``n_resamples < 1`` or ``level`` outside (0, 1), and as :func:`_as_binary`.
    """
    if n_resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_resamples >= 1 and level in (0, 1), got {n_resamples}, {level}")
    y, q = _as_binary(y_true, p)
    pos, neg = np.sort(q[y == 1]), np.sort(q[y == 0])
    n_pos, n_neg = pos.size, neg.size
    rng = np.random.default_rng(seed)
    below = np.searchsorted(neg, pos, side="left")  # negatives strictly under each positive
    upto = np.searchsorted(neg, pos, side="right")  # ... at or under it
    pos_hit = (pos >= threshold).astype(np.float64)
    neg_hit = (neg < threshold).astype(np.float64)
    values: dict[str, list[NDArray[np.float64]]] = {m: [] for m in CI_METRICS}
    for start in range(0, n_resamples, BOOTSTRAP_CHUNK):
        k = min(BOOTSTRAP_CHUNK, n_resamples - start)
        w_pos = rng.multinomial(n_pos, np.full(n_pos, 1.0 / n_pos), size=k) if n_pos else None
        w_neg = rng.multinomial(n_neg, np.full(n_neg, 1.0 / n_neg), size=k) if n_neg else None
        tp = w_pos @ pos_hit if w_pos is not None else np.zeros(k)
        tn = w_neg @ neg_hit if w_neg is not None else np.zeros(k)
        values["accuracy"].append((tp + tn) / (n_pos + n_neg))
        if n_pos:
            values["sensitivity"].append(tp / n_pos)
        if n_neg:
            values["specificity"].append(tn / n_neg)
        if n_pos and n_neg:
            cum = np.concatenate([np.zeros((k, 1)), np.cumsum(w_neg, axis=1)], axis=1)
            beaten = cum[:, below] + 0.5 * (cum[:, upto] - cum[:, below])  # (k, n_pos)
            values["roc_auc"].append(np.sum(w_pos * beaten, axis=1) / (n_pos * n_neg))
    tail = 100.0 * (1.0 - level) / 2.0
    out: dict[str, list[float] | None] = {}
    for name in CI_METRICS:
        if not values[name]:
            out[name] = None
            continue
        low, high = np.percentile(np.concatenate(values[name]), [tail, 100.0 - tail])
        out[name] = [float(low), float(high)]
    return out


def rsna_weighted_log_loss(
    y_true: ArrayLike,
    p: ArrayLike,
    labels: Sequence[str],
    weights: Mapping[str, float] = config.RSNA_LABEL_WEIGHTS,
    eps: float = LOG_LOSS_EPS,
) -> float:
    """RSNA-2019 weighted multi-label log loss.

    ``sum_ij w_j m_ij BCE(y_ij, p_ij) / sum_ij w_j m_ij`` where ``m_ij`` is 1 for a known label
    and 0 for NaN. With every label known this is the competition's metric: the per-image
    weighted mean over labels, averaged over images.

    Args:
        y_true: (N, L) labels in {0, 1}, NaN where unknown.
        p: (N, L) probabilities.
        labels: The L label names, in column order; each must be in ``weights``.
        weights: Label weights (``any`` 2, subtypes 1).
        eps: Probabilities are clipped to ``[eps, 1 - eps]``.

    Returns:
        The loss (natural log); lower is better.

    Raises:
        ValueError: Shapes differ, a label has no weight, or no label is known.
    """
    y = np.asarray(y_true, dtype=np.float64)
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    if y.ndim != 2 or y.shape != q.shape or y.shape[1] != len(labels):
        raise ValueError(
            f"need (N, {len(labels)}) labels and probabilities, got {y.shape}, {q.shape}"
        )
    unknown = [name for name in labels if name not in weights]
    if unknown:
        raise ValueError(f"no RSNA weight for label(s) {unknown}; weights cover {sorted(weights)}")
    known = np.isfinite(y)
    w = np.asarray([weights[name] for name in labels], dtype=np.float64)[None, :] * known
    if not w.sum():
        raise ValueError("no known labels to score")
    y0 = np.where(known, y, 0.0)
    bce = -(y0 * np.log(q) + (1.0 - y0) * np.log(1.0 - q))
    return float((w * bce).sum() / w.sum())


def study_scores(
    y_true: ArrayLike,
    p: ArrayLike,
    study_uids: Sequence[str | None],
    top_k: int = DEFAULT_TOP_K,
    in_range: ArrayLike | None = None,
) -> tuple[list[str], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Slice results pooled per study.

    Args:
        y_true: (N,) slice labels in {0, 1}.
        p: (N,) slice probabilities.
        study_uids: (N,) study of each slice; slices without one are left out.
        top_k: Slices averaged by the top-k score (all of them when a study has fewer).
        in_range: (N,) bool, the slice is inside the model's slice range; the scores pool a
            study's in-range slices (all of them when it has none). ``None``: every slice.

    Returns:
        (study UIDs sorted, (S,) study labels = max over all slices, (S,) max probability,
        (S,) mean of the top-k probabilities).
    """
    y, q = _as_binary(y_true, p)
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    inside = np.ones(y.shape, bool) if in_range is None else np.asarray(in_range, dtype=bool)
    if inside.shape != y.shape:
        raise ValueError(f"{inside.size} range flags for {y.size} cases")
    frame = pd.DataFrame({"study": list(study_uids), "y": y, "p": q, "in": inside})
    frame = frame.dropna(subset=["study"])
    uids: list[str] = []
    labels, p_max, p_top = [], [], []
    for uid, group in frame.groupby("study", sort=True):
        pooled = group[group["in"]] if group["in"].any() else group
        ordered = np.sort(pooled["p"].to_numpy())[::-1]
        uids.append(str(uid))
        labels.append(int(group["y"].max()))
        p_max.append(float(ordered[0]))
        p_top.append(float(ordered[:top_k].mean()))
    return uids, np.asarray(labels, np.int64), np.asarray(p_max), np.asarray(p_top)


def evaluate_predictions(
    y_true: ArrayLike,
    probs: ArrayLike,
    threshold: float,
    labels: Sequence[str] = (ANY_LABEL,),
    study_uids: Sequence[str | None] | None = None,
    top_k: int = DEFAULT_TOP_K,
    split: str | None = None,
    model: str | None = None,
    in_range: ArrayLike | None = None,
) -> EvalReport:
    """A full report from labels and probabilities.

    Args:
        y_true: (N,) or (N, L) labels in {0, 1}; NaN where a label is unknown (``any`` must
            be known for every case).
        probs: Same shape, predicted probabilities in [0, 1].
        threshold: Operating threshold on P(any); also used for the per-label calls (the card
            stores one threshold).
        labels: The L label names in column order; ``"any"`` is the headline label (the first
            column when there is no ``"any"``).
        study_uids: (N,) study of each case, for study-level results.
        top_k: Slices averaged by the top-k study score.
        split: Recorded in the report.
        model: Recorded in the report.
        in_range: (N,) bool, the case is inside the model's slice range (study scores pool
            those, see :func:`study_scores`); ``None``: every case.

    Returns:
        :class:`EvalReport`.

    Raises:
        DatasetError: No cases, or unknown ``any`` labels.
    """
    labels = tuple(labels)
    y = np.asarray(y_true, dtype=np.float64)
    q = np.asarray(probs, dtype=np.float64)
    if y.ndim == 1:
        y, q = y[:, None], q.reshape(-1, 1)
    if y.shape != q.shape or y.shape[1] != len(labels):
        raise ValueError(f"labels {y.shape} and probabilities {q.shape} do not fit {labels}")
    head = labels.index(ANY_LABEL) if ANY_LABEL in labels else 0
    if not np.all(np.isfinite(y[:, head])):
        raise DatasetError(f"the {labels[head]!r} label is unknown for some cases")
    main = binary_metrics(y[:, head], q[:, head], threshold, label=labels[head])
    ci95 = bootstrap_ci(y[:, head], q[:, head], threshold, report_resamples(y.shape[0]))
    notes = list(main.notes)
    # Every label on its own, where it is known
    per_label: dict[str, BinaryMetrics] = {}
    if len(labels) > 1:
        for j, name in enumerate(labels):
            known = np.isfinite(y[:, j])
            if not known.any():
                notes.append(f"label {name!r}: unknown for every case, not evaluated")
                continue
            per_label[name] = binary_metrics(y[known, j], q[known, j], threshold, label=name)
    # RSNA weighted log loss when the subtypes are there
    rsna = None
    subtypes = [name for name in labels if name in config.SUBTYPES]
    if subtypes and all(name in config.RSNA_LABEL_WEIGHTS for name in labels):
        if np.isfinite(y[:, [labels.index(s) for s in subtypes]]).any():
            rsna = rsna_weighted_log_loss(y, q, labels)
    # Study level
    study_max = study_top = None
    n_studies = None
    if study_uids is not None:
        if len(study_uids) != y.shape[0]:
            raise ValueError(f"{len(study_uids)} study UIDs for {y.shape[0]} cases")
        uids, ys, p_max, p_top = study_scores(y[:, head], q[:, head], study_uids, top_k, in_range)
        outside = 0 if in_range is None else int((~np.asarray(in_range, dtype=bool)).sum())
        if outside and uids:
            notes.append(
                f"{outside} slice(s) outside the model's slice range left out of the study "
                "scores (every slice of a study that has none in range counts)"
            )
        n_studies = len(uids) or None
        n_with_uid = int(pd.notna(pd.Series(list(study_uids), dtype=object)).sum())
        if uids and n_with_uid > len(uids):
            study_max = binary_metrics(ys, p_max, threshold, label=f"{labels[head]} (study max)")
            study_top = binary_metrics(
                ys, p_top, threshold, label=f"{labels[head]} (study top-{top_k} mean)"
            )
        elif uids:
            notes.append("study-level results omitted: every study has one slice")
    fields = {f.name: getattr(main, f.name) for f in dataclasses.fields(BinaryMetrics)}
    fields["notes"] = tuple(notes)
    return EvalReport(
        **fields,
        split=split,
        model=model,
        per_label=per_label,
        rsna_log_loss=rsna,
        study_max=study_max,
        study_top_k=study_top,
        top_k=top_k,
        n_studies=n_studies,
        ci95=ci95,
    )


# Threshold selection ----------------------------------------------------------------------------
def choose_threshold(
    y_true: ArrayLike,
    p: ArrayLike,
    method: str = "youden",
    target: float = DEFAULT_TARGET_SENSITIVITY,
) -> float:
    """Operating threshold from VALIDATION predictions (never from the test split).

    ``"youden"`` maximises Youden's J = sensitivity + specificity - 1 (the first, i.e. highest,
    threshold among ties). ``"sensitivity"`` takes the highest threshold whose sensitivity is at
    least ``target`` (the best specificity that keeps the target). Either way the threshold is
    placed midway between the chosen score and the next lower score, so every validation call
    stays the same while the margin to both neighbours is as large as possible.

    Args:
        y_true: (N,) validation labels in {0, 1}.
        p: (N,) validation probabilities.
        method: ``"youden"`` or ``"sensitivity"``.
        target: Sensitivity target in (0, 1] for ``method="sensitivity"``.

    Returns:
        Threshold in [0, 1]; a case is positive when ``p >= threshold``.

    Raises:
        ConfigError: Unknown method or a target outside (0, 1].
        DatasetError: Validation data without both classes.
    """
    if method not in THRESHOLD_METHODS:
        raise ConfigError(f"unknown threshold method {method!r}; choose one of {THRESHOLD_METHODS}")
    if method == "sensitivity" and not 0.0 < target <= 1.0:
        raise ConfigError(f"sensitivity target must be in (0, 1], got {target}")
    y, q = _as_binary(y_true, p)
    if y.size == 0 or y.min() == y.max():
        raise DatasetError(
            f"cannot choose a threshold: the validation split has {int(y.sum())} positive and "
            f"{int(y.size - y.sum())} negative cases; it needs both"
        )
    fpr, tpr, thresholds = skm.roc_curve(y, q, drop_intermediate=False)
    if method == "youden":
        best = int(np.argmax(tpr - fpr))
    else:
        best = int(np.flatnonzero(tpr >= target)[0])
    chosen = thresholds[best]
    if not np.isfinite(chosen):  # nothing called positive is best (Youden J <= 0 everywhere)
        log.warning(
            "no threshold does better on the validation split than calling every case "
            "negative (Youden's J <= 0: the model does not separate its classes); threshold "
            "1.0, so only a probability of exactly 1.0 is called positive"
        )
        return 1.0
    lower = q[q < chosen]
    return float((chosen + lower.max()) / 2.0) if lower.size else float(chosen)


# Model evaluation -------------------------------------------------------------------------------
def label_matrix(rows: pd.DataFrame, labels: Sequence[str]) -> NDArray[np.float64]:
    """(N, L) labels for ``labels`` from index rows (``any`` from ``label_any``), NaN if unknown.

    Raises:
        DatasetError: The index has no ``label_any`` column.
    """
    if ANY_COLUMN not in rows.columns:
        raise DatasetError(f"the index has no {ANY_COLUMN!r} column; cannot evaluate")
    out = np.full((len(rows), len(labels)), np.nan)
    for j, name in enumerate(labels):
        column = ANY_COLUMN if name == ANY_LABEL else name
        if column in rows.columns:
            out[:, j] = pd.to_numeric(rows[column], errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
    return out


def _split_rows(index_df: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split (every row for :data:`ALL_SPLITS`), refusing an index without it."""
    if split == ALL_SPLITS:
        if index_df.empty:
            raise DatasetError("the index has no rows")
        return index_df.reset_index(drop=True)
    if "split" not in index_df.columns:
        raise DatasetError("the index has no 'split' column; build it with hemo index")
    rows = index_df[index_df["split"] == split]
    if rows.empty:
        counts = index_df["split"].value_counts().to_dict()
        raise DatasetError(f"the index has no {split!r} rows (splits: {counts})")
    return rows.reset_index(drop=True)


def predict_index(
    model: keras.Model,
    card: ModelCard,
    index_df: pd.DataFrame,
    split: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[pd.DataFrame, NDArray[np.float64], list[str]]:
    """Predict every row of one split through the one prediction path (:mod:`hemo.predict`).

    Args:
        model: The model (not changed).
        card: Its card (InputSpec, labels, threshold).
        index_df: Index table with absolute ``path`` and ``split`` columns.
        split: ``"train"``, ``"val"``, ``"test"``, or ``"all"`` (every row: for a dataset the
            model never saw, e.g. phantoms of a seed not used in training).
        batch_size: Images per model call.

    Returns:
        (rows that were predicted, (n, L) probabilities in card label order, failure messages of
        rows that could not be read or preprocessed).

    Raises:
        DatasetError: No such split, or nothing could be predicted.
    """
    rows, probs, failed, _ = _predict_rows(model, card, index_df, split, batch_size)
    return rows, probs, failed


def _predict_rows(
    model: keras.Model, card: ModelCard, index_df: pd.DataFrame, split: str, batch_size: int
) -> tuple[pd.DataFrame, NDArray[np.float64], list[str], NDArray[np.bool_]]:
    """:func:`predict_index`, plus whether each predicted row is inside the card's slice range
    (series rules applied, as ``hemo predict`` applies them)."""
    from hemo.predict import Predictor
    from hemo.progress import progress

    rows = _split_rows(index_df, split)
    paths = [str(p) for p in rows["path"]]
    with (
        Predictor.from_model(model, card, batch_size=batch_size) as predictor,
        progress(len(paths), "predict", "image") as advance,
    ):
        batch = predictor.run(paths, studies=card.slice_range is not None, on_scan=advance)
    results = batch.results
    if len(results) != len(rows):
        raise DatasetError(
            f"{len(results)} results for {len(rows)} index rows: index paths must be single "
            "image files, not folders or zips"
        )
    ok = np.asarray([r.error is None for r in results], dtype=bool)
    failed = [str(r.error) for r in results if r.error is not None]
    if not ok.any():
        raise DatasetError(f"no {split!r} image could be predicted; first error: {failed[0]}")
    probs = np.asarray(
        [[r.probabilities[name] for name in card.labels] for r in results if r.error is None],
        dtype=np.float64,
    )
    in_range = np.asarray([r.outside_range is None for r in results if r.error is None])
    return rows[ok].reset_index(drop=True), probs, failed, in_range


def evaluate_model(
    model: keras.Model,
    card: ModelCard,
    index_df: pd.DataFrame,
    split: str = "test",
    batch_size: int = DEFAULT_BATCH_SIZE,
    top_k: int = DEFAULT_TOP_K,
) -> EvalReport:
    """Evaluate a model on one split of an index at the card's threshold.

    Unreadable files are left out, counted in ``n_failed`` and logged; rows whose ``any`` label
    is unknown are left out too.

    Args:
        model: The model (not changed).
        card: Its card; ``card.threshold`` is the operating threshold.
        index_df: Index table (``load_index``): ``path``, ``split``, ``label_any``, subtype
            columns, ``study_uid``.
        split: Split to evaluate.
        batch_size: Images per model call.
        top_k: Slices averaged by the top-k study score.

    Returns:
        :class:`EvalReport`.

    Raises:
        DatasetError: No such split, no readable image, or no known labels.
    """
    from hemo.datasets.index import unreadable_at_indexing

    rows, probs, failed, in_range = _predict_rows(model, card, index_df, split, batch_size)
    if failed:
        log.warning(
            "%d image(s) of split %r could not be predicted; first: %s",
            len(failed),
            split,
            failed[0],
        )
    y = label_matrix(rows, card.labels)
    head = card.labels.index(ANY_LABEL) if ANY_LABEL in card.labels else 0
    known = np.isfinite(y[:, head])
    if not known.any():
        raise DatasetError(f"no {split!r} row has a known {card.labels[head]!r} label")
    study = None
    if "study_uid" in rows.columns and rows["study_uid"].notna().any():
        study = [None if pd.isna(u) else str(u) for u in rows["study_uid"][known]]
    report = evaluate_predictions(
        y[known],
        probs[known],
        card.threshold,
        labels=card.labels,
        study_uids=study,
        top_k=top_k,
        split=split,
        model=card.name,
        in_range=in_range[known],
    )
    band = card.parse_referral()
    referral = None
    if band is not None:
        from hemo.referral import selective_metrics

        referral = {
            "band": band.to_dict(),
            **selective_metrics(y[known, head], probs[known, head], card.threshold, band),
        }
    notes = report.notes
    if failed:
        notes = (
            *notes,
            f"{len(failed)} image(s) could not be read or preprocessed and are left out of every "
            f"metric; first: {failed[0]}",
        )
    unindexed = unreadable_at_indexing(index_df)
    if unindexed:
        notes = (
            *notes,
            f"{len(unindexed)} file(s) of the dataset could not be read when it was indexed and "
            f"are in no split, so in no metric; first: {Path(unindexed[0]).name}",
        )
    return dataclasses.replace(
        report,
        notes=notes,
        n_failed=len(failed),
        failed=tuple(failed[:MAX_FAILED_LISTED]),
        referral=referral,
    )


def _data_folder(path: str | os.PathLike, base: Path) -> Path:
    """A dataset folder (an ``index.parquet`` or ``labels.csv`` stands for its folder)."""
    p = Path(path).expanduser()
    p = (p if p.is_absolute() else base / p).resolve()
    return p.parent if p.suffix.lower() in (".parquet", ".csv") else p


def training_overlap(card: ModelCard, data: str | os.PathLike, split: str) -> str | None:
    """Why figures on ``split`` of ``data`` are not held out from ``card``'s model, or ``None``.

    The card records the folder the model was trained on (``training.data``, as given, relative
    to the project or absolute) and its images per split (``training.images``). Evaluating the
    same folder is in-sample when the model was trained on every image (a final model of
    ``hemo crossval --export``: only a ``train`` split), or on a split it trained on (``train``,
    ``all``) or chose its checkpoint and threshold on (``val``); ``test`` of the same split is
    held out. A folder mixed into its training (``extra_train``) counts as trained on.

    Args:
        card: The model's card.
        data: The dataset folder or index file being evaluated.
        split: The split being evaluated (``"all"`` for every row).

    Returns:
        A sentence for the report's notes, or ``None`` when nothing overlaps as far as the card
        can tell (it records folders and counts, not the images themselves).
    """
    training = card.training or {}
    target = _data_folder(data, Path.cwd())
    extra = (training.get("extra_train") or {}).get("data")
    folders = [f for f in (training.get("data"), extra) if f]
    matches = [
        f
        for f in folders
        if target in {_data_folder(f, Path.cwd()), _data_folder(f, config.PROJECT_DIR)}
    ]
    if not matches:
        return None
    images = training.get("images") or {}
    if extra in matches:
        why = f"images of {extra} were mixed into its training"
    elif not images.get("test") and not images.get("val"):
        why = f"it was trained on every image of {matches[0]} ({sum(images.values())} images)"
    elif split in ("train", ALL_SPLITS):
        why = f"it was trained on the 'train' split of {matches[0]}"
    elif split == "val":
        why = f"its checkpoint and threshold were chosen on the 'val' split of {matches[0]}"
    else:
        return None
    return (
        f"not held out: {why}, so these figures are in-sample and say little about unseen "
        "scans (a model's card carries its held-out figures)"
    )


def _training_rows(card: ModelCard) -> tuple[str, list[str]] | None:
    """(folder as the card gives it, paths of the images the model saw) when it is here.

    Only images without a patient id count: look-alike checks are for sets without ids.
    """
    from hemo.datasets import load_index

    training = card.training or {}
    folder = training.get("data")
    if not folder:
        return None
    found = [
        _data_folder(folder, base)
        for base in (Path.cwd(), config.PROJECT_DIR)
        if _data_folder(folder, base).exists()
    ]
    if not found:
        return None
    try:
        rows = load_index(found[0])
    except HemoError as exc:
        log.info("look-alike check against the training images skipped: %s", exc)
        return None
    images = training.get("images") or {}
    if (images.get("test") or images.get("val")) and "split" in rows.columns:
        rows = rows[rows["split"].isin(["train", "val"])]  # trained on, or chose by
    if "patient_id" in rows.columns:
        # Sets with patient ids are split by patient; their pixels are not compared (synthetic
        # phantoms all look alike, and slices of one series are alike by nature)
        rows = rows[rows["patient_id"].isna()]
    if rows.empty:
        return None
    return str(folder), rows["path"].astype(str).tolist()


def training_lookalikes(
    card: ModelCard,
    index_df: pd.DataFrame,
    split: str,
    threshold: float | None = None,
) -> tuple[str, dict[str, Any]] | None:
    """Evaluated images that look like images ``card``'s model was trained on.

    A copy of a training image at another size, or a neighbouring slice of a training head, in
    an evaluation set makes its figures partly in-sample even when the folders differ. When the
    card's training folder is on this machine, every evaluated image is compared with the
    images the model saw (its ``train`` and ``val`` splits, or every image for a final model)
    by :func:`hemo.lookalike.find_matches`. Training images with a patient id are not compared
    (such sets are split by patient; synthetic phantoms would all look alike).

    Args:
        card: The model's card.
        index_df: The evaluated index.
        split: The evaluated split (``"all"`` for every row).
        threshold: Look-alike correlation (default :data:`hemo.lookalike.DEFAULT_THRESHOLD`).

    Returns:
        (a sentence for the report's notes, ``{"threshold", "images", "of", "training_data",
        "examples"}``) when some evaluated images match, else ``None`` (also when the training
        folder is not here, or either side has more than :data:`hemo.lookalike.MAX_IMAGES`).
    """
    from hemo.lookalike import DEFAULT_THRESHOLD, MAX_IMAGES, find_matches

    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    training = _training_rows(card)
    if training is None:
        return None
    folder, reference = training
    queries = _split_rows(index_df, split)["path"].astype(str).tolist()
    if len(reference) > MAX_IMAGES or len(queries) > MAX_IMAGES:
        log.info(
            "look-alike check against the training images skipped: %d evaluated, %d training "
            "images (at most %d each)",
            len(queries),
            len(reference),
            MAX_IMAGES,
        )
        return None
    matches = find_matches(queries, reference, threshold)
    if matches.empty:
        return None
    examples = [
        {"image": q, "training_image": r, "similarity": round(float(sim), 4)}
        for q, r, sim in matches.head(5).itertuples(index=False)
    ]
    first = examples[0]
    note = (
        f"{len(matches)} of the {len(queries)} evaluated images look like images the model was "
        f"trained on (head crops correlating >= {threshold:g} with one of {folder}: the same "
        "picture at another size, or a neighbouring slice of one head), e.g. "
        f"{first['image']} ~ {first['training_image']} ({first['similarity']:.3f}); the "
        "figures on them are not held out"
    )
    summary = {
        "threshold": threshold,
        "images": len(matches),
        "of": len(queries),
        "training_data": folder,
        "examples": examples,
    }
    return note, summary


def training_reference(card: ModelCard) -> ReferenceSet | None:
    """The images ``card``'s model saw, ready to match scans to (:class:`ReferenceSet`).

    Returns:
        ``None`` when the card's training folder is not on this machine, cannot be indexed,
        holds no image without a patient id, or more than :data:`hemo.lookalike.MAX_IMAGES`.
    """
    from hemo.lookalike import MAX_IMAGES, ReferenceSet

    training = _training_rows(card)
    if training is None:
        return None
    if len(training[1]) > MAX_IMAGES:
        log.info("%d training images: too many to match scans to", len(training[1]))
        return None
    return ReferenceSet.from_paths(training[1])


def select_threshold(
    model: keras.Model,
    card: ModelCard,
    index_df: pd.DataFrame,
    method: str = "youden",
    target: float = DEFAULT_TARGET_SENSITIVITY,
    split: str = THRESHOLD_SPLIT,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Choose the operating threshold on the validation split of an index.

    Only the ``val`` rows are read, so test labels can never influence the threshold.

    Args:
        model: The model (not changed).
        card: Its card (InputSpec and labels; its threshold is ignored).
        index_df: Index table with a ``val`` split.
        method: ``"youden"`` or ``"sensitivity"`` (see :func:`choose_threshold`).
        target: Sensitivity target for ``method="sensitivity"``.
        split: Must be ``"val"``; anything else is refused.
        batch_size: Images per model call.

    Returns:
        Threshold in [0, 1].

    Raises:
        ConfigError: ``split`` is not ``"val"``.
        DatasetError: No val rows, or val lacks a class.
    """
    if split != THRESHOLD_SPLIT:
        raise ConfigError(
            f"thresholds are chosen on the {THRESHOLD_SPLIT!r} split only, not {split!r}; "
            "tuning on test data would overstate the model"
        )
    rows, probs, _ = predict_index(model, card, index_df, split, batch_size)
    y = label_matrix(rows, card.labels)
    head = card.labels.index(ANY_LABEL) if ANY_LABEL in card.labels else 0
    known = np.isfinite(y[:, head])
    return choose_threshold(y[known, head], probs[known, head], method, target)
