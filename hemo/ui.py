"""The one hemo module that imports Streamlit: cached loaders and small widget helpers.

* ``st.cache_resource``: predictors (a Keras model each), loaded once per process, shared by all
  sessions and never mutated; bounded by :data:`MAX_MODELS`.
* ``st.cache_resource`` also holds decoded uploads, keyed by a hash of their bytes (frozen scans
  with read-only pixels: shared without copies), bounded by :data:`MAX_UPLOAD_SETS`.
* ``st.cache_data``: dataset indexes and per-scan analyses; each bounded by ``max_entries`` and
  a time to live.
* :class:`ProgressMemo`: EDA samples, whose computation draws a progress bar. Streamlit's caches
  record the elements a cached function draws and replay them on a hit, which fails in any
  later session (the bar belonged to the first one), so these results are cached without it.
* Widget helpers draw the sidebar's pickers and return plain values; pages read the choice back
  through :func:`dataset_path` and :func:`model_path`.

Everything the functions compute is done by the headless modules (:mod:`hemo.dashboard`,
:mod:`hemo.eda`, :mod:`hemo.predict`, ...); a test checks no other hemo module imports Streamlit.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

from hemo import config, dashboard, eda
from hemo.errors import HemoError

log = logging.getLogger(__name__)

NOTICE = config.NOTICE
#: Models kept loaded at once (each ~100-600 MB with TensorFlow's buffers).
MAX_MODELS = 2
MAX_DATASETS = 4
#: Decoded upload sets kept (a 238-slice series is ~250 MB of float32 HU).
MAX_UPLOAD_SETS = 4
MAX_ANALYSES = 64
MAX_SAMPLES = 8
CACHE_TTL_S = 3600
MODEL_LIST_TTL_S = 10
# Session-state keys of the sidebar's choices.
DATASET_CHOICE_KEY = "hemo_dataset_choice"
DATASET_TEXT_KEY = "hemo_dataset_text"
MODEL_CHOICE_KEY = "hemo_model_choice"
OTHER_DATASET = "Other folder or index…"
#: ``persist_state`` of the pages' widgets: a choice (a slice, a run, a heatmap setting) is
#: still there after a visit to another page, which Streamlit forgets by default.
PERSIST = "session"


# Cached loaders ---------------------------------------------------------------------------------
def predictor(model_path: str) -> Any:
    """The :class:`hemo.predict.Predictor` of a model file, loaded once per process and again
    when the file changes (a run exported over it while the app runs).

    Args:
        model_path: The ``.keras`` file.

    Returns:
        The shared predictor. Callers must not modify it.
    """
    return _predictor(model_path, mtime_of(model_path))


@st.cache_resource(max_entries=MAX_MODELS, show_spinner="Loading the model…")
def _predictor(model_path: str, mtime: float) -> Any:
    """:func:`predictor`, cached per path and modification time."""
    from hemo.predict import Predictor

    del mtime  # part of the cache key only
    return Predictor(Path(model_path))


@st.cache_data(max_entries=MAX_DATASETS, ttl=CACHE_TTL_S, show_spinner="Indexing the dataset…")
def open_dataset(path: str, mtime: float) -> dashboard.DatasetView:
    """The dataset at ``path`` (see :func:`hemo.dashboard.open_dataset`), cached per mtime."""
    del mtime  # part of the cache key only: a rewritten index is read again
    return dashboard.open_dataset(path)


@st.cache_data(max_entries=MAX_DATASETS, ttl=CACHE_TTL_S, show_spinner="Checking the files…")
def quality_report(path: str, mtime: float) -> pd.DataFrame:
    """Data-quality findings of the dataset at ``path`` (:func:`hemo.datasets.quality_report`)."""
    from hemo.datasets import quality_report as report

    del mtime
    view = dashboard.open_dataset(path)
    return pd.concat([report(view.index), eda.missing_labels(view.index)], ignore_index=True)


class ProgressMemo:
    """A process-wide cache, bounded and with a time to live, for work that draws progress.

    Unlike ``st.cache_data`` it records nothing the computation draws, so a hit in another
    session neither replays nor needs the first session's elements. Thread-safe; two sessions
    missing the same key at once both compute it (the later result is kept).

    Args:
        max_entries: Results kept; the least recently used goes first.
        ttl_s: Seconds a result is kept.
    """

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The result cached under ``key``, else ``compute()``'s (then cached)."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and now - entry[0] <= self.ttl_s:
                self._entries.move_to_end(key)
                return entry[1]
        value = compute()
        with self._lock:
            self._entries[key] = (time.monotonic(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value


_samples = ProgressMemo(MAX_SAMPLES, CACHE_TTL_S)


def _finish_first(
    on_progress: Callable | None,
) -> tuple[Callable[[float, str], None], list[ScriptControlException]]:
    """A progress function that holds back the rerun or stop Streamlit raises from a drawing
    call (a click elsewhere on the page while the work runs), so that the work finishes and is
    cached; the caller raises what was held (``held[0]``) after caching. Without it each click
    threw the work away and started it again."""
    held: list[ScriptControlException] = []

    def update(fraction: float, what: str) -> None:
        if held or on_progress is None:
            return
        try:
            on_progress(fraction, what)
        except ScriptControlException as exc:
            held.append(exc)

    return update, held


def scan_sample(
    path: str, mtime: float, per_class: int, seed: int, on_progress: Callable | None = None
) -> eda.SampleStats:
    """Histograms and geometry of a class-stratified sample (:func:`hemo.eda.scan_sample`),
    cached per process; ``on_progress`` is called only when the sample is read.

    Returns:
        The sample's statistics (the tables are copies: callers may change them).
    """

    update, held = _finish_first(on_progress)

    def compute() -> eda.SampleStats:
        view = dashboard.open_dataset(path)
        return eda.scan_sample(view.index, per_class=per_class, seed=seed, on_progress=update)

    stats = _samples.get((path, mtime, per_class, seed), compute)
    if held:
        raise held[0]
    return dataclasses.replace(
        stats,
        histograms=stats.histograms.copy(),
        geometry=stats.geometry.copy(),
        failures=stats.failures.copy(),
    )


@st.cache_data(max_entries=MAX_SAMPLES, ttl=CACHE_TTL_S, show_spinner="Rendering the sample…")
def sample_grid(path: str, mtime: float, window: str, per_class: int, seed: int) -> list:
    """Sample tiles per class under a window (:func:`hemo.eda.sample_grid`)."""
    del mtime
    view = dashboard.open_dataset(path)
    return eda.sample_grid(view.index, window=window, per_class=per_class, seed=seed)


@st.cache_data(max_entries=MAX_SAMPLES, ttl=CACHE_TTL_S, show_spinner="Comparing the images…")
def lookalike_pairs(path: str, mtime: float, window: str) -> eda.LookalikeSample:
    """Look-alike pairs of the dataset at ``path`` (:func:`hemo.eda.lookalike_pairs`)."""
    del mtime
    view = dashboard.open_dataset(path)
    return eda.lookalike_pairs(view.index, window=window)


@st.cache_resource(max_entries=MAX_UPLOAD_SETS, ttl=CACHE_TTL_S, show_spinner="Reading the scans…")
def decode(key: str, _files: Sequence[tuple[str, bytes]]) -> dashboard.Decoded:
    """Decode uploads (kept in memory, never written to disk), cached by content hash ``key``.

    A resource cache rather than ``st.cache_data``: the decoded scans are frozen dataclasses
    whose pixel arrays are read-only, so sharing them is safe, while ``st.cache_data`` would
    unpickle a fresh copy on every rerun (about 250 MB and a second for a 238-slice series).

    Args:
        key: :func:`hemo.dashboard.content_key` of ``_files``.
        _files: ``(name, bytes)`` per upload (not hashed by Streamlit: ``key`` stands for them).
    """
    del key
    return dashboard.decode(_files)


def training_reference(model_path: str) -> Any | None:
    """The images the model at ``model_path`` was trained on, when they are on this machine
    (:func:`hemo.evaluate.training_reference`), read once per process and model file; else
    ``None``."""
    return _training_reference(model_path, mtime_of(model_path))


@st.cache_resource(max_entries=MAX_MODELS, show_spinner="Reading the model's training images…")
def _training_reference(model_path: str, mtime: float) -> Any | None:
    """:func:`training_reference`, cached per path and modification time."""
    from hemo.evaluate import training_reference as reference

    del mtime
    return reference(predictor(model_path).card)


def training_match(model_path: str, scan: Any) -> tuple[str, float] | None:
    """The training image ``scan`` looks like (path, correlation), or ``None``."""
    reference = training_reference(model_path)
    return None if reference is None else reference.match(scan)


def training_matches(
    model_path: str, key: str, item: str, scans: Sequence[Any]
) -> list[tuple[str, float] | None]:
    """:func:`training_match` of each scan of a series (``key`` and ``item`` name it), cached
    per model file."""
    return _training_matches(model_path, mtime_of(model_path), key, item, scans)


@st.cache_data(
    max_entries=MAX_ANALYSES, ttl=CACHE_TTL_S, show_spinner="Comparing with the training images…"
)
def _training_matches(
    model_path: str, mtime: float, key: str, item: str, _scans: Sequence[Any]
) -> list[tuple[str, float] | None]:
    del mtime, key, item
    reference = training_reference(model_path)
    return [None if reference is None else reference.match(scan) for scan in _scans]


def analyse(
    model_path: str, key: str, item: str, method: str, label: str, scan: Any
) -> dashboard.Analysis:
    """Prediction and heatmap of one decoded scan (:func:`hemo.dashboard.analyse`), cached
    per model file, upload and scan.

    Args:
        model_path: The model.
        key: Content key of the upload set the scan came from.
        item: Which scan of that set (with ``key``, names the scan).
        method: CAM method.
        label: Output explained.
        scan: The scan (not hashed: ``key`` and ``item`` stand for it).
    """
    return _analyse(model_path, mtime_of(model_path), key, item, method, label, scan)


@st.cache_data(max_entries=MAX_ANALYSES, ttl=CACHE_TTL_S, show_spinner="Predicting…")
def _analyse(
    model_path: str, mtime: float, key: str, item: str, method: str, label: str, _scan: Any
) -> dashboard.Analysis:
    del mtime, key, item
    return dashboard.analyse(predictor(model_path), _scan, method=method, label=label)


_series_results = ProgressMemo(MAX_ANALYSES, CACHE_TTL_S)


def predict_series(
    model_path: str, key: str, item: str, series: Any, progress_text: str | None = None
) -> dashboard.SeriesResult:
    """Per-slice predictions and the study verdict of one series, cached per process like
    :func:`analyse` (``key`` and ``item`` name the series).

    With ``progress_text``, a progress bar appears (where this is called) once the first batch
    of slices is predicted, and goes when they all are: a cached result draws none. A click
    elsewhere meanwhile reruns the page only once the series is predicted and cached.

    Returns:
        The result; its ``study`` is the caller's own copy (the rest is shared, read-only).
    """
    bar: list[Any] = []

    def draw(fraction: float, what: str) -> None:
        if not bar:
            bar.append(st.progress(0.0, text=progress_text))
        bar[0].progress(min(max(fraction, 0.0), 1.0), text=f"Predicting {what}")

    update, held = _finish_first(draw if progress_text else None)
    try:
        result = _series_results.get(
            (model_path, mtime_of(model_path), key, item),
            lambda: dashboard.predict_series(predictor(model_path), series, update),
        )
    finally:
        if bar and not held:
            bar[0].empty()
    if held:
        raise held[0]
    return dataclasses.replace(result, study=copy.deepcopy(result.study))


@st.cache_data(max_entries=MAX_ANALYSES, ttl=CACHE_TTL_S, show_spinner=False)
def read_file(path: str, mtime: float) -> Any:
    """One dataset file, decoded (:func:`hemo.dashboard.read_file`), cached per path and mtime."""
    del mtime
    return dashboard.read_file(path)


@st.cache_data(ttl=MODEL_LIST_TTL_S, show_spinner=False)
def _list_models(models_dir: str, runs_dir: str) -> list[dashboard.ModelEntry]:
    """Shipped and finished runs' models (:func:`hemo.dashboard.list_models`), re-read every
    :data:`MODEL_LIST_TTL_S` seconds so a run that finishes appears without a restart."""
    return dashboard.list_models(Path(models_dir), Path(runs_dir))


def list_models() -> list[dashboard.ModelEntry]:
    """The models the sidebar offers (cached briefly, keyed by the folders searched)."""
    return _list_models(str(dashboard.models_dir()), str(dashboard.runs_dir()))


#: File suffixes of label tables and manifests, whose edits change a dataset folder's index.
LABEL_SUFFIXES = (".csv", ".json", ".parquet", ".txt", ".tsv")
#: Label tables and manifests of hemo's layouts, looked at by name in any folder.
LABEL_TABLES = (
    "labels.csv",
    "manifest.csv",
    "reads.csv",
    "stage_2_train.csv",
    "stage_2_train_labels.csv",
)
#: A folder's first entries looked at by :func:`mtime_of` (a flat folder of scans can be huge).
MTIME_MAX_ENTRIES = 4096


def mtime_of(path: str | Path) -> float:
    """Modification time used as a cache key (0 when the path is missing).

    An ``index.parquet`` (given, or in the folder) is the dataset: its own time. A folder
    without one is indexed from its label tables and subfolders, so the key is the newest
    time of the folder, the label tables and manifests in it, and its subfolders (a class
    folder that gains an image, a ``labels.csv`` edited in place: the folder's own time changes
    with neither).
    """
    p = Path(path)
    if (p / dashboard.INDEX_NAME).is_file():
        p = p / dashboard.INDEX_NAME
    try:
        newest = p.stat().st_mtime
    except OSError:
        return 0.0
    if not p.is_dir():
        return newest
    # The tables hemo's layouts read, wherever a big folder lists them
    for name in LABEL_TABLES:
        try:
            newest = max(newest, (p / name).stat().st_mtime)
        except OSError:
            continue
    try:
        with os.scandir(p) as entries:
            for count, entry in enumerate(entries):
                if count >= MTIME_MAX_ENTRIES:
                    break
                try:
                    if entry.name.lower().endswith(LABEL_SUFFIXES) or entry.is_dir():
                        newest = max(newest, entry.stat().st_mtime)
                except OSError:  # a dangling link, an entry gone meanwhile: the others count
                    continue
    except OSError:
        pass
    return newest


# Sidebar ----------------------------------------------------------------------------------------
def sidebar() -> None:
    """Draw the dataset and model pickers (once per run, from the entrypoint)."""
    with st.sidebar:
        _dataset_picker()
        _model_picker()


#: Shown in an upload chip instead of the file's name (see :func:`hide_upload_names`).
HIDDEN_NAME = "name hidden"
#: The chips' name elements (Streamlit 1.67's test id) drawn without their text, and without
#: the tooltip (their title) that would show it on hover.
_HIDE_UPLOAD_NAMES_CSS = (
    "<style>[data-testid='stFileChipName']{font-size:0 !important;pointer-events:none}"
    f"[data-testid='stFileChipName']::after{{content:'{HIDDEN_NAME}';font-size:0.875rem;"
    "font-style:italic}</style>"
)


def hide_upload_names() -> None:
    """Draw the uploaders' file chips without the files' names (size and remove button stay).

    An exported file or folder is often named after the patient; the page shows every name
    scrubbed (:func:`hemo.dicom.scrub_name`) beside its result, but Streamlit's own chips
    would show it whole to anyone watching the screen.
    """
    st.html(_HIDE_UPLOAD_NAMES_CSS)


def notice() -> None:
    """The research-tool notice at the top of every page's body: the sidebar is closed on a
    phone and can be closed anywhere, the notice must stay in sight beside every verdict."""
    st.caption(f":material/warning: **{NOTICE}**")


def _dataset_picker() -> None:
    options = dashboard.dataset_options()
    labels = [o.label for o in options] + [OTHER_DATASET]
    choice = st.selectbox("Dataset", labels, key=DATASET_CHOICE_KEY)
    if choice == OTHER_DATASET:
        st.text_input(
            "Folder or index.parquet",
            key=DATASET_TEXT_KEY,
            placeholder="/data/rsna or /data/head_ct/index.parquet",
            help="Any layout hemo knows: RSNA, Kaggle head CT, CQ500, a folder per class, a manifest.",
        )


def _model_picker() -> None:
    entries = list_models()
    if not entries:
        st.selectbox("Model", ["no model found"], disabled=True, key=MODEL_CHOICE_KEY)
        st.caption(f"Put a model and its card in {dashboard.models_dir()} or finish a run.")
        return
    labels = [e.label for e in entries]
    if st.session_state.get(MODEL_CHOICE_KEY) not in labels:
        st.session_state.pop(MODEL_CHOICE_KEY, None)
    st.selectbox("Model", labels, key=MODEL_CHOICE_KEY)


def dataset_path() -> str | None:
    """The dataset the user picked (folder or index file), or None when none is typed yet."""
    choice = st.session_state.get(DATASET_CHOICE_KEY)
    if choice == OTHER_DATASET:
        text = str(st.session_state.get(DATASET_TEXT_KEY, "")).strip()
        return text or None
    for option in dashboard.dataset_options():
        if option.label == choice:
            return str(option.path)
    return str(dashboard.default_dataset_path())


def model_path() -> str | None:
    """The ``.keras`` file of the model the user picked, or None when there is none."""
    entries = list_models()
    choice = st.session_state.get(MODEL_CHOICE_KEY)
    for entry in entries:
        if entry.label == choice:
            return str(entry.path)
    return str(entries[0].path) if entries else None


def active_dataset() -> dashboard.DatasetView | None:
    """The picked dataset, opened; shows ``st.error`` and returns None when it cannot be."""
    path = dataset_path()
    if path is None:
        st.info("Type a dataset folder or index file in the sidebar.")
        return None
    try:
        return open_dataset(path, mtime_of(path))
    except HemoError as exc:
        st.error(str(exc))
        return None


def active_predictor() -> Any | None:
    """The picked model's predictor; shows ``st.error`` and returns None when it cannot load."""
    path = model_path()
    if path is None:
        st.warning("No model available: put one in models/ or finish a training run.")
        return None
    try:
        return predictor(path)
    except HemoError as exc:
        st.error(str(exc))
        return None


def uploaded_files(uploads: Sequence[Any] | Any | None) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of ``st.file_uploader`` results, in memory (never written to disk)."""
    if uploads is None:
        return []
    items = uploads if isinstance(uploads, list | tuple) else [uploads]
    return [(u.name, u.getvalue()) for u in items]


def uploaded_folder(uploads: Sequence[Any] | None) -> tuple[list[tuple[str, bytes]], int]:
    """``(name, bytes)`` of a folder upload that a folder walk would read, and how many files
    it skips (:func:`hemo.io.folder_upload`: DICOMDIR, hidden and non-scan files)."""
    from hemo.io import folder_upload

    return folder_upload(uploaded_files(uploads))


def progress_callback(bar: Any) -> Callable[[float, str], None]:
    """A progress function drawing on an ``st.progress`` bar (file names shortened)."""

    def update(fraction: float, name: str) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=f"Reading {Path(name).name}")

    return update


def forget_out_of_range(key: str, low: int, high: int) -> None:
    """Drop a persisted number widget's value when it lies outside ``[low, high]``, before the
    widget is drawn, so that it starts again from its default.

    A slider or number input persisted for the session (:data:`PERSIST`) keeps its value when
    its range changes (another study with fewer slices, a smaller scan), and Streamlit then
    refuses to draw it ("value is greater than the max_value"). Dropping the value rather than
    setting a bound keeps Streamlit from warning that a widget with a default was also set
    through Session State.

    Args:
        key: The widget's key.
        low: Its smallest value now.
        high: Its largest value now.
    """
    value = st.session_state.get(key)
    if isinstance(value, int | float) and not low <= value <= high:
        del st.session_state[key]
