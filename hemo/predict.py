"""Prediction: a :class:`Predictor` loads a model once and turns inputs into :class:`Prediction`s.

The path of every input, in one place::

    paths / folders / zips / (name, bytes) uploads
      -> hemo.io.iter_scans            read and decode   } in a thread pool, several inputs at
      -> hemo.preprocess.to_model_input   preprocess     } a time (a folder is walked in the
                                                           caller's thread); pixels are dropped
                                                           as soon as the tensor exists
      -> compiled forward pass         one call per batch (a ``tf.function`` with a fixed
                                       (None, H, W, C) signature, traced once), on its own
                                       thread, overlapped with reading the next batch
      -> Prediction per image, StudyPrediction per DICOM series

Results come back in input order (zip members and folder files sorted by name, as
:func:`hemo.io.iter_scans` yields them); an input that cannot be read or preprocessed gives a
:class:`~hemo.io.ScanResult` carrying the error instead, and the others are still predicted.

A study result pools the slices of one series: its probability is the **maximum** slice
probability (a bleed on one slice is a bleed in the head), and the mean of the ``top_k`` highest
slices is reported beside it; the most suspicious slice is the one with the maximum. When the
model's card has a slice range (:mod:`hemo.anatomy`: the slices its training images showed),
slices and images outside it (skull base, vertex, for a model trained on mid-brain slices) are
marked ``outside_range`` with the reason, and a series pools them only when none of its slices
is in range: the model has never seen such slices and its output there is not a finding.

A :class:`Predictor` is safe to share between threads (Streamlit sessions): the model is never
mutated, the forward function is traced once in the constructor, and model calls run on one
dedicated thread. Nothing is written to disk; uploads stay in memory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from hemo.anatomy import (
    SliceAnatomy,
    SliceRange,
    deciding_slices,
    outside_reasons,
    plane_reason,
    scan_anatomy,
)
from hemo.dicom import CTSlice
from hemo.errors import ConfigError, HemoError, InputError, LimitError, SeriesError
from hemo.io import ScanResult, iter_scans
from hemo.preprocess import to_model_input
from hemo.series import coverage_note, group_series
from hemo.sources import Source

if TYPE_CHECKING:
    import keras

    from hemo.density import DensityBlend
    from hemo.model import ModelCard
    from hemo.referral import ReferralBand

log = logging.getLogger(__name__)

#: Images per model call.
DEFAULT_BATCH_SIZE = 32
#: Preprocessing threads (decode runs in the caller's thread, the model on its own).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
#: Full batches waiting for the model at once (bounds the memory a long batch of inputs takes).
MAX_BATCHES_IN_FLIGHT = 2
#: Kinds of file (by their bytes) walked scan by scan in the calling thread, like a folder.
MANY_SCAN_KINDS = frozenset({"zip", "nifti", "gzip"})
#: Slices averaged by a study's top-k score.
DEFAULT_TOP_K = 3
#: The label whose probability is a Prediction's headline ``probability``.
ANY_LABEL = "any"
#: Pixel array of the metadata-only slice copies kept for series grouping.
_NO_PIXELS = np.zeros((1, 1), dtype=np.float32)
_NO_PIXELS.setflags(write=False)

Input = Source | tuple[str, bytes]


# Results ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """The model's verdict on one image.

    Attributes:
        source: Path, upload name or ``archive.zip/member`` (never patient data).
        probability: P(any) in [0, 1] (the first output when the model has no ``any`` label).
        probabilities: Every output label's probability, in the card's label order.
        positive: ``probability >= threshold``.
        threshold: The card's operating threshold.
        study_uid: (0020,000D) of a DICOM slice; ``None`` for PNG/JPEG.
        series_uid: (0020,000E) of a DICOM slice.
        slice_z_mm: Slice position along the normal in mm (for ordering).
        index: Position of the slice in its series in anatomical order (0 = most inferior);
            ``None`` outside a series.
        outside_range: Why this slice or image lies outside the slices the model was trained on
            (:mod:`hemo.anatomy`), else ``None`` (always for cards without a range).
        frame: The frame's number (1-based) when the slice is one frame of a multi-frame DICOM
            file, or the slice's number in a NIfTI volume (several results then share
            ``source``), else ``None``.
        uncertain: Whether ``probability`` lies in the card's referral band
            (:mod:`hemo.referral`): too close to the threshold to call, refer to a reader (the
            verdict ``positive`` is still given); ``None`` when the card has no band.
    """

    source: str
    probability: float
    probabilities: dict[str, float]
    positive: bool
    threshold: float
    study_uid: str | None = None
    series_uid: str | None = None
    slice_z_mm: float | None = None
    index: int | None = None
    outside_range: str | None = None
    frame: int | None = None
    uncertain: bool | None = None

    @property
    def error(self) -> None:
        """Always ``None`` (a failed input is a ``ScanResult`` with an error), for uniform checks."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON entry of ``hemo predict`` (``path`` is the source)."""
        return {
            "path": self.source,
            "probability": self.probability,
            "probabilities": dict(self.probabilities),
            "positive": self.positive,
            "threshold": self.threshold,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "slice_z_mm": self.slice_z_mm,
            "index": self.index,
            "outside_range": self.outside_range,
            "frame": self.frame,
            "uncertain": self.uncertain,
        }


@dataclass(frozen=True)
class StudyPrediction:
    """The verdict on one DICOM series, pooled over its slices.

    Attributes:
        study_uid: (0020,000D).
        series_uid: (0020,000E).
        n_slices: Slices predicted.
        probability: Maximum P(any) over the slices in the model's range (every slice when the
            card has no range or no slice is in it).
        probabilities: Per label, the maximum over the same slices.
        positive: ``probability >= threshold``.
        threshold: The card's operating threshold.
        top_k_mean: Mean of the ``top_k`` highest P(any) of those slices (all when fewer).
        top_k: The k of ``top_k_mean``.
        most_suspicious_source: Source of the slice with the maximum P(any).
        most_suspicious_index: Its index in anatomical order.
        slice_probabilities: P(any) of every slice, in anatomical order (inferior -> superior).
        slice_sources: Sources of the slices, in the same order.
        note: Why the order could not be checked (e.g. duplicate positions), or that no slice
            was in the model's range, else ``None``.
        slices_in_range: Slices inside the model's range (``n_slices`` without a range).
        outside_range_indices: Indices (anatomical order) of the slices outside it.
        probability_all_slices: Maximum P(any) over every slice, in range or not.
        most_suspicious_frame: The frame number of that slice when it comes from a multi-frame
            file or a NIfTI volume, else ``None``.
        slice_frames: Frame numbers of the slices in anatomical order (``None`` for a
            single-frame file); empty when no slice has one.
        uncertain: The referral flag of the slice that decides the verdict (the study's
            ``probability`` is that slice's); ``None`` when the card has no band.
    """

    study_uid: str | None
    series_uid: str | None
    n_slices: int
    probability: float
    probabilities: dict[str, float]
    positive: bool
    threshold: float
    top_k_mean: float
    top_k: int
    most_suspicious_source: str
    most_suspicious_index: int
    slice_probabilities: tuple[float, ...]
    slice_sources: tuple[str, ...]
    note: str | None = None
    slices_in_range: int | None = None
    outside_range_indices: tuple[int, ...] = ()
    probability_all_slices: float | None = None
    most_suspicious_frame: int | None = None
    slice_frames: tuple[int | None, ...] = ()
    uncertain: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples as lists)."""
        data = dataclasses.asdict(self)
        data["slice_probabilities"] = list(self.slice_probabilities)
        data["slice_sources"] = list(self.slice_sources)
        data["slice_frames"] = list(self.slice_frames)
        data["outside_range_indices"] = list(self.outside_range_indices)
        return data


Result = Prediction | ScanResult


@dataclass(frozen=True)
class PredictionBatch:
    """Everything one :meth:`Predictor.run` call produced.

    Attributes:
        results: One entry per input scan, in input order: a :class:`Prediction`, or a
            :class:`~hemo.io.ScanResult` whose ``error`` says why that input failed.
        studies: One :class:`StudyPrediction` per DICOM series among the inputs.
    """

    results: tuple[Result, ...]
    studies: tuple[StudyPrediction, ...] = field(default=())

    @property
    def n_failed(self) -> int:
        """Number of inputs that failed."""
        return sum(r.error is not None for r in self.results)


def result_to_dict(result: Result) -> dict[str, Any]:
    """JSON entry of one result: a prediction, or ``{"path", "error"}`` for a failed input."""
    if isinstance(result, Prediction):
        return result.to_dict()
    return {"path": result.name, "error": str(result.error)}


# Study pooling ----------------------------------------------------------------------------------
def study_predictions(
    predictions: Sequence[Prediction],
    slices: Sequence[CTSlice],
    top_k: int = DEFAULT_TOP_K,
    *,
    anatomies: Sequence[SliceAnatomy] | None = None,
    slice_range: SliceRange | None = None,
    planes: Sequence[str | None] | None = None,
) -> tuple[list[Prediction], list[StudyPrediction]]:
    """Group DICOM slice predictions into series (:func:`hemo.series.group_series`) and pool them.

    Args:
        predictions: Predictions of DICOM slices, aligned with ``slices``.
        slices: The slices they came from (pixels are not used).
        top_k: Slices averaged by the top-k score.
        anatomies: :func:`hemo.anatomy.scan_anatomy` of each slice, aligned with ``slices``;
            needed with ``slice_range``.
        slice_range: The model's range; slices outside it get ``outside_range`` and are pooled
            only when no slice of their series is in range.
        planes: :func:`hemo.anatomy.plane_reason` of each slice, aligned with ``slices``: a
            localizer or a reformat is outside every model's range, with or without
            ``slice_range``.

    Returns:
        (the predictions with ``index`` (and ``outside_range``) set, aligned with the input; one
        study result per series, sorted by study and series UID). A series whose slices cannot
        be ordered (duplicate positions) is pooled in position-then-name order and says so in
        ``note``; so is one with more slices than ``config.MAX_SLICES_PER_SERIES`` (its note
        says so), so that one oversized series costs no other input its result.

    Raises:
        ConfigError: ``top_k`` under 1, or ``slice_range`` without aligned ``anatomies``.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    if slice_range is not None and (anatomies is None or len(anatomies) != len(slices)):
        raise ConfigError("study_predictions: a slice_range needs one anatomy per slice")
    by_id = {id(s): i for i, s in enumerate(slices)}
    buckets: dict[tuple[str | None, str | None], list[CTSlice]] = {}
    for s in slices:
        buckets.setdefault((s.study_uid, s.series_uid), []).append(s)
    updated = list(predictions)
    studies: list[StudyPrediction] = []
    for (study_uid, series_uid), members in sorted(
        buckets.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "")
    ):
        note = None
        try:
            ordered = [s for series in group_series(members) for s in series.slices]
        except (SeriesError, LimitError) as exc:  # every slice keeps its own result
            note = exc.reason
            ordered = sorted(
                members,
                key=lambda s: (s.slice_z_mm is None, s.slice_z_mm or 0.0, s.source, s.frame or 0),
            )
        rows = [by_id[id(s)] for s in ordered]
        if note is None:  # ordered: are slices missing from it?
            note = coverage_note(
                [s.slice_z_mm for s in ordered], [s.slice_thickness_mm for s in ordered]
            )
        reasons = outside_reasons(
            [None if planes is None else planes[i] for i in rows],
            slice_range,
            None if anatomies is None else [anatomies[i] for i in rows],
        )
        for position, i in enumerate(rows):
            updated[i] = dataclasses.replace(
                updated[i], index=position, outside_range=reasons[position]
            )
        members_p = [updated[i] for i in rows]
        p_any = np.asarray([p.probability for p in members_p], dtype=np.float64)
        pooled, best = deciding_slices(p_any, reasons)
        in_range = sum(reason is None for reason in reasons)
        if not in_range:
            note = _join_notes(
                note,
                "no slice is in the model's range (skull base, vertex, localizers or "
                "reformats only): probability and positive pool every slice and are not a "
                "finding",
            )
        labels = members_p[0].probabilities.keys()
        threshold = members_p[0].threshold
        studies.append(
            StudyPrediction(
                study_uid=study_uid,
                series_uid=series_uid,
                n_slices=len(members_p),
                probability=float(p_any[best]),
                probabilities={
                    k: max(members_p[j].probabilities[k] for j in pooled) for k in labels
                },
                positive=bool(p_any[best] >= threshold),
                threshold=threshold,
                top_k_mean=float(np.sort(p_any[pooled])[::-1][:top_k].mean()),
                top_k=top_k,
                most_suspicious_source=members_p[best].source,
                most_suspicious_index=best,
                slice_probabilities=tuple(float(v) for v in p_any),
                slice_sources=tuple(p.source for p in members_p),
                note=note,
                slices_in_range=in_range,
                outside_range_indices=tuple(k for k, r in enumerate(reasons) if r is not None),
                probability_all_slices=float(p_any.max()),
                most_suspicious_frame=ordered[best].frame,
                slice_frames=(
                    tuple(s.frame for s in ordered)
                    if any(s.frame is not None for s in ordered)
                    else ()
                ),
                uncertain=members_p[best].uncertain,
            )
        )
    return updated, studies


def _join_notes(*notes: str | None) -> str | None:
    """Notes joined with ``"; "``, ``None`` when there are none."""
    present = [n for n in notes if n]
    return "; ".join(present) if present else None


# The predictor ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Prepared:
    """One scan after reading and preprocessing, its pixels dropped: a tensor or an error.

    Attributes:
        name: The scan's name (path, upload name, ``archive.zip/member``).
        tensor: (H, W, C) float32 model input, or ``None`` on error.
        error: Why the scan failed, or ``None``.
        meta: A pixel-free copy of a DICOM slice (UIDs, position), ``None`` for images.
        anatomy: The scan's :class:`~hemo.anatomy.SliceAnatomy` when the model has a slice
            range, else ``None``.
        plane: :func:`hemo.anatomy.plane_reason` of a DICOM slice (a localizer, a reformat),
            else ``None``.
        density: The input's :func:`hemo.density.features` when the card blends them in
            (measured in the preprocessing thread, not the model's), else ``None``.
    """

    name: str
    tensor: NDArray[np.float32] | None
    error: HemoError | None
    meta: CTSlice | None
    anatomy: SliceAnatomy | None = None
    plane: str | None = None
    density: NDArray[np.float64] | None = None


class Predictor:
    """A model loaded once, turning inputs into predictions (thread-safe, see module docstring).

    Args:
        model_path: ``models/NAME.keras`` (its card ``NAME.json`` beside it).
        batch_size: Images per model call.
        workers: Preprocessing threads.
        top_k: Slices averaged by a study's top-k score.

    Raises:
        ModelError: The model cannot be loaded or does not match its card.
        ConfigError: ``batch_size`` or ``workers`` below 1.

    Example:
        >>> with Predictor("models/head_ct.keras") as predictor:
        ...     batch = predictor.run(["scan.dcm", "series.zip", ("upload.png", data)])
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int = DEFAULT_WORKERS,
        top_k: int = DEFAULT_TOP_K,
    ) -> None:
        from hemo.model import load_model

        model, card = load_model(model_path)
        self._setup(model, card, batch_size, workers, top_k)

    @classmethod
    def from_model(
        cls,
        model: keras.Model,
        card: ModelCard,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int = DEFAULT_WORKERS,
        top_k: int = DEFAULT_TOP_K,
    ) -> Predictor:
        """A predictor over a model already in memory (training, evaluation); not copied."""
        predictor = cls.__new__(cls)
        predictor._setup(model, card, batch_size, workers, top_k)
        return predictor

    def _setup(
        self, model: keras.Model, card: ModelCard, batch_size: int, workers: int, top_k: int
    ) -> None:
        import tensorflow as tf

        if batch_size < 1 or workers < 1 or top_k < 1:
            raise ConfigError(
                f"batch_size, workers and top_k must be at least 1, got {batch_size}, "
                f"{workers}, {top_k}"
            )
        self.model = model
        self.card = card
        self.spec = card.input_spec
        self.labels: tuple[str, ...] = tuple(card.labels)
        self.threshold = float(card.threshold)
        self.slice_range: SliceRange | None = card.parse_slice_range()
        self.referral: ReferralBand | None = card.parse_referral()
        #: The card's blend of the network's P(any) with density features, or ``None``.
        self.density: DensityBlend | None = card.parse_density()
        self.batch_size = batch_size
        self.workers = workers
        self.top_k = top_k
        self._head = self.labels.index(ANY_LABEL) if ANY_LABEL in self.labels else 0
        #: The output the card's threshold and referral band apply to.
        self.head_label: str = self.labels[self._head]
        self.input_shape: tuple[int, int, int] = tuple(int(d) for d in model.inputs[0].shape[1:])
        # One graph for every batch size: traced here, never again
        signature = tf.TensorSpec((None, *self.input_shape), tf.float32)
        self._forward = tf.function(
            lambda x: model(x, training=False), input_signature=[signature]
        ).get_concrete_function()
        self._prep_pool = ThreadPoolExecutor(workers, thread_name_prefix="hemo-prep")
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="hemo-model")
        self._closed = threading.Event()
        # Runs in progress: close() waits for them, so no run loses its pools half-way
        self._running = 0
        self._idle = threading.Condition()

    # Lifecycle ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Refuse new runs, wait for those in progress, stop the worker threads (the predictor
        cannot be used afterwards)."""
        self._closed.set()
        with self._idle:
            self._idle.wait_for(lambda: self._running == 0)
        self._prep_pool.shutdown(wait=True)
        self._model_pool.shutdown(wait=True)

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Core ---------------------------------------------------------------------------------------
    def forward(
        self, x: NDArray[np.float32], density: NDArray[np.float64] | None = None
    ) -> NDArray[np.float32]:
        """Probabilities of a prepared batch: (N, H, W, C) float32 -> (N, labels) float32.

        With a card that blends in density features (:attr:`density`), the thresholded
        output's column is the blend; ``density`` gives the batch's (N, F) features when they
        were measured already (:meth:`features`), else they are measured here.
        """
        batch = np.asarray(x, dtype=np.float32)
        probs = self._forward(batch).numpy()
        if self.density is not None and len(batch):
            rows = self.features(batch) if density is None else np.asarray(density)
            if rows.shape != (len(batch), len(self.density.model.names)):
                raise ValueError(
                    f"density features of shape {rows.shape} for a batch of {len(batch)}: "
                    f"need ({len(batch)}, {len(self.density.model.names)})"
                )
            probs[:, self._head] = self.density.blend_features(probs[:, self._head], rows)
        return probs

    def features(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        """Density features of a prepared batch's gray channel: (N, F) float64."""
        from hemo.density import many_features

        return many_features(np.asarray(x, dtype=np.float32)[..., 0])

    def refers(self, probability: float) -> bool | None:
        """Whether ``probability`` lies in the card's referral band (``None``: no band)."""
        return None if self.referral is None else self.referral.refers(probability)

    def prepare(self, scan: Any) -> NDArray[np.float32]:
        """The model input of one scan (the one preprocessing path): (H, W, C) float32."""
        return to_model_input(scan, self.spec)

    def predict(self, inputs: Input | Iterable[Input]) -> list[Result]:
        """Predict every input; see :meth:`run` (this returns only the per-image results, the
        same as ``run(inputs).results``: a series' slices carry their ``index`` and both rules
        of ``outside_range``)."""
        return list(self.run(inputs).results)

    def run(
        self,
        inputs: Input | Iterable[Input],
        *,
        studies: bool = True,
        on_scan: Callable[[int], object] | None = None,
    ) -> PredictionBatch:
        """Predict files, folders, zips and ``(name, bytes)`` uploads.

        Files and uploads are read and preprocessed in the thread pool, several at a time;
        folders, zips and NIfTI volumes are walked in this thread and their scans preprocessed
        in the pool, one scan per task. Batches go
        to the model thread as soon as they are full, so reading overlaps the model. At most
        ``batch_size + workers`` inputs are read ahead and :data:`MAX_BATCHES_IN_FLIGHT` batches
        wait for the model, which bounds memory.

        Args:
            inputs: One input or many (see :func:`hemo.io.iter_scans`).
            studies: Also pool DICOM slices into per-series results. With a slice range in the
                card, ``outside_range`` then applies both of its rules; without pooling only
                the soft-tissue rule (a lone slice has no series to compare its size with).
            on_scan: Called with 1 as each scan (or input that failed) is read and prepared,
                e.g. :func:`hemo.progress.progress`'s ``advance``.

        Returns:
            :class:`PredictionBatch` with one result per scan, in input order.

        Raises:
            ModelError: The predictor was closed.
        """
        with self._idle:
            if self._closed.is_set():
                from hemo.errors import ModelError

                raise ModelError("this Predictor was closed; create a new one")
            self._running += 1
        try:
            return self._run(inputs, studies, on_scan)
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _run(
        self,
        inputs: Input | Iterable[Input],
        studies: bool,
        on_scan: Callable[[int], object] | None = None,
    ) -> PredictionBatch:
        """:meth:`run`'s work, between the close check and the count of runs in progress."""
        results: list[Result | None] = []
        metas: dict[int, CTSlice] = {}
        anatomies: dict[int, SliceAnatomy] = {}
        planes: dict[int, str] = {}
        reading: deque[Future[list[_Prepared]]] = deque()
        batches: deque[Future[list[tuple[int, Prediction]]]] = deque()
        batch: list[tuple[int, _Prepared]] = []
        lookahead = self.batch_size + self.workers

        def collect(job: Future[list[tuple[int, Prediction]]]) -> None:
            for slot, prediction in job.result():
                results[slot] = prediction

        def send_batch() -> None:
            batches.append(self._model_pool.submit(self._run_batch, list(batch)))
            batch.clear()
            while len(batches) > MAX_BATCHES_IN_FLIGHT:
                collect(batches.popleft())

        def take_oldest() -> None:
            for prepared in reading.popleft().result():
                slot = len(results)
                if on_scan is not None:
                    on_scan(1)
                if prepared.error is not None:
                    results.append(ScanResult(prepared.name, None, prepared.error))
                    continue
                results.append(None)
                if prepared.meta is not None:
                    metas[slot] = prepared.meta
                if prepared.anatomy is not None:
                    anatomies[slot] = prepared.anatomy
                if prepared.plane is not None:
                    planes[slot] = prepared.plane
                batch.append((slot, prepared))
                if len(batch) == self.batch_size:
                    send_batch()

        for task in self._tasks(inputs):
            reading.append(self._prep_pool.submit(task))
            if len(reading) >= lookahead:
                take_oldest()
        while reading:
            take_oldest()
        if batch:
            send_batch()
        while batches:
            collect(batches.popleft())
        study_results: list[StudyPrediction] = []
        grouped = [slot for slot, meta in metas.items() if meta.series_uid or meta.study_uid]
        if not studies:
            grouped = []
        lone = set(anatomies) | set(planes)
        for slot in sorted(lone.difference(grouped)):  # lone slices: the soft-tissue rule only
            reason = planes.get(slot)
            if reason is None and self.slice_range is not None and slot in anatomies:
                reason = self.slice_range.reason(anatomies[slot])
            results[slot] = dataclasses.replace(results[slot], outside_range=reason)
        if grouped:
            ranged = self.slice_range is not None and all(i in anatomies for i in grouped)
            pooled, study_results = study_predictions(
                [results[i] for i in grouped],
                [metas[i] for i in grouped],
                self.top_k,
                anatomies=[anatomies[i] for i in grouped] if ranged else None,
                slice_range=self.slice_range if ranged else None,
                planes=[planes.get(i) for i in grouped],
            )
            for slot, prediction in zip(grouped, pooled, strict=True):
                results[slot] = prediction
        return PredictionBatch(tuple(results), tuple(study_results))  # type: ignore[arg-type]

    def _tasks(self, inputs: Input | Iterable[Input]) -> Iterator[Callable[[], list[_Prepared]]]:
        """Pool tasks in input order: read-and-prepare one file, or prepare one folder scan."""
        single_upload = (
            isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[1], bytes)
        )
        if (
            single_upload
            or isinstance(inputs, str | bytes | os.PathLike)
            or hasattr(inputs, "read")
        ):
            inputs = [inputs]  # type: ignore[list-item]
        for item in inputs:  # type: ignore[union-attr]
            if _holds_many_scans(item):
                # walked here, one scan per pool task: the read-ahead bound holds for a folder,
                # a zip or a volume of any size (one task for all of them held every tensor)
                for scan_result in iter_scans([item]):
                    yield partial(self._prepare_scans, [scan_result])
            else:
                yield partial(self._read_and_prepare, item)

    def _read_and_prepare(self, item: Input) -> list[_Prepared]:
        """Read one file or upload (a zip gives several scans) and prepare each (pool thread)."""
        return self._prepare_scans(iter_scans([item]))

    def _prepare_scans(self, scan_results: Iterable[ScanResult]) -> list[_Prepared]:
        """Preprocess scans one by one, keeping only tensors and pixel-free metadata."""
        out = []
        for scan_result in scan_results:
            name, scan = scan_result.name, scan_result.scan
            if scan_result.error is not None:
                out.append(_Prepared(name, None, scan_result.error, None))
                continue
            anatomy = plane = density = None
            try:
                tensor, error = self.prepare(scan), None
                if self.slice_range is not None:
                    anatomy = scan_anatomy(scan)
                plane = plane_reason(scan)
                if self.density is not None:
                    density = self.features(tensor[None])[0]
            except HemoError as exc:
                tensor, error = None, exc
            except Exception as exc:  # a reader let through an array the pipeline cannot take
                log.exception("preprocessing %s failed", name)
                tensor = None
                error = InputError(f"cannot preprocess: {type(exc).__name__}: {exc}", name)
            out.append(_Prepared(name, tensor, error, _pixel_free(scan), anatomy, plane, density))
        return out

    def _run_batch(self, items: list[tuple[int, _Prepared]]) -> list[tuple[int, Prediction]]:
        """Run the model once on a batch and build its predictions (model thread)."""
        density = (
            None if self.density is None else np.stack([prepared.density for _, prepared in items])
        )
        probs = self.forward(np.stack([prepared.tensor for _, prepared in items]), density)
        return [
            (slot, self._prediction(prepared, row))
            for (slot, prepared), row in zip(items, probs, strict=True)
        ]

    def _prediction(self, prepared: _Prepared, row: NDArray[np.float32]) -> Prediction:
        """A :class:`Prediction` from one output row."""
        meta = prepared.meta
        probability = float(row[self._head])
        return Prediction(
            source=prepared.name,
            probability=probability,
            probabilities={name: float(v) for name, v in zip(self.labels, row, strict=True)},
            positive=probability >= self.threshold,
            threshold=self.threshold,
            study_uid=None if meta is None else meta.study_uid,
            series_uid=None if meta is None else meta.series_uid,
            slice_z_mm=None if meta is None else meta.slice_z_mm,
            frame=None if meta is None else meta.frame,
            uncertain=self.refers(probability),
        )


def _holds_many_scans(item: Any) -> bool:
    """Whether an input is a folder, or a file or upload whose bytes say zip or NIfTI (a
    multi-frame DICOM is bounded by its frame limit and read in one task)."""
    from hemo.images import SNIFF_BYTES, sniff_kind
    from hemo.sources import read_head

    if isinstance(item, str | os.PathLike):
        if os.path.isdir(item):
            return True
        try:
            head = read_head(item, SNIFF_BYTES)
        except HemoError:
            return False  # reported by the pool task that reads it
    elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
        head = item[1][:SNIFF_BYTES]
    else:
        return False
    return sniff_kind(head) in MANY_SCAN_KINDS


def _pixel_free(scan: Any) -> CTSlice | None:
    """A copy of a DICOM slice without pixels or metadata (UIDs, position), else ``None``."""
    if not isinstance(scan, CTSlice):
        return None
    return dataclasses.replace(scan, hu=_NO_PIXELS, metadata={})
