"""What the dashboard pages ask of hemo, as plain functions (no Streamlit here).

The pages are thin: they read widgets, call one or two functions of this module (or of
:mod:`hemo.eda` / :mod:`hemo.reports`; the Training page's run views are :mod:`hemo.monitor`),
and draw the result. Everything here runs headless and is
tested without a browser. Paths come from :mod:`hemo.config`, overridable by environment variables
so tests and demos can point the app at a temporary dataset or model folder:

* ``HEMO_DATASET``: the dataset opened by default (folder or ``index.parquet``);
* ``HEMO_MODELS_DIR``: the folder of shipped models;
* ``HEMO_DEFAULT_MODEL``: the model selected by default (file stem);
* ``HEMO_RUNS_DIR``: training runs (read by :mod:`hemo.config`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from hemo import config
from hemo.errors import ConfigError, DatasetError, HemoError, InputError, LimitError, ModelError

log = logging.getLogger(__name__)

#: Threads preprocessing the slices of a series (OpenCV and numpy release the GIL).
PREP_WORKERS = min(4, os.cpu_count() or 1)
ENV_DATASET = "HEMO_DATASET"
ENV_MODELS_DIR = "HEMO_MODELS_DIR"
ENV_DEFAULT_MODEL = "HEMO_DEFAULT_MODEL"
#: Shipped model selected when nothing else is asked for (the phantom demo data fits it).
DEFAULT_MODEL_STEM = "phantom_rsna3"
#: Side of the picture a heatmap is drawn over on the Predict page (model-input geometry).
OVERLAY_VIEW_SIZE = 512
#: Demo dataset made on first run when missing (what ``make run`` makes).
DEMO_STUDIES = 24
DEMO_SEED = config.DEFAULT_SEED
INDEX_NAME = "index.parquet"
MODEL_SUFFIX = ".keras"
CARD_SUFFIX = ".json"
#: Name of the real CQ500 slice pydicom-data ships (CQ500-CT-310, positive for all readers).
CQ500_SAMPLE_FILE = "693_UNCR.dcm"
#: Sample keys offered by the Predict page's "Try a sample" buttons.
SAMPLE_BLEED = "phantom_bleed"
SAMPLE_HEALTHY = "phantom_healthy"
SAMPLE_CQ500 = "cq500_slice"
SAMPLES: dict[str, str] = {
    SAMPLE_BLEED: "Phantom with a bleed",
    SAMPLE_HEALTHY: "Healthy phantom",
    SAMPLE_CQ500: "Real CQ500 slice",
}
#: Put before a "Try a sample" input's file name on the Predict page and in its reports.
SAMPLE_PREFIX = "[sample] "
#: Name of a series of uploaded slices with no common folder, archive or file.
UNNAMED_SERIES = "series of {n} slices"
#: Card metrics the Home page shows, in order: the test block's, else the pooled out-of-fold one.
CARD_METRICS = ("accuracy", "roc_auc", "sensitivity", "specificity")
CARD_METRIC_BLOCKS = ("test", "pooled_out_of_fold")


# Paths ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def favicon(side: int = 64) -> bytes:
    """The app's icon as PNG bytes, drawn here (a head CT slice: skull ring, brain, one bright
    bleed) so the browser fetches nothing from outside the machine (a ``:material/...:`` page
    icon makes it ask fonts.gstatic.com for the SVG). Drawn once per process (every rerun of
    the app asks for it)."""
    import cv2

    icon = np.zeros((side, side, 3), np.uint8)
    centre, axes = (side // 2, side // 2), (int(side * 0.36), int(side * 0.44))
    cv2.ellipse(icon, centre, axes, 0, 0, 360, (235, 235, 235), -1, cv2.LINE_AA)
    inner = (int(axes[0] * 0.84), int(axes[1] * 0.87))
    cv2.ellipse(icon, centre, inner, 0, 0, 360, (120, 120, 120), -1, cv2.LINE_AA)
    cv2.circle(icon, (int(side * 0.6), int(side * 0.42)), max(2, side // 9), (40, 40, 220), -1)
    ok, png = cv2.imencode(".png", icon)  # BGR: the bleed is red
    if not ok:
        raise RuntimeError("cannot encode the app icon")
    return png.tobytes()


def default_dataset_path() -> Path:
    """The dataset opened when the user picked none (``HEMO_DATASET`` or the demo phantoms)."""
    return Path(os.environ.get(ENV_DATASET) or config.DEMO_DIR)


def models_dir() -> Path:
    """Folder of shipped models (``HEMO_MODELS_DIR`` or ``models/``)."""
    return Path(os.environ.get(ENV_MODELS_DIR) or config.MODELS_DIR)


def runs_dir() -> Path:
    """Folder of training runs (``HEMO_RUNS_DIR`` or ``runs/``), read at call time."""
    return Path(os.environ.get("HEMO_RUNS_DIR") or config.RUNS_DIR)


@dataclass(frozen=True)
class DatasetOption:
    """One entry of the sidebar's dataset list.

    Attributes:
        label: What the user sees.
        path: Folder or ``index.parquet``.
    """

    label: str
    path: Path


def dataset_options() -> list[DatasetOption]:
    """Datasets offered in the sidebar: the default one, then real samples found on this machine."""
    default = default_dataset_path()
    label = "Demo phantoms" if default == config.DEMO_DIR else f"Default ({default.name})"
    options = [DatasetOption(label, default)]
    shared = (
        ("Kaggle head-CT sample", config.SHARED_DATA_DIR / "head_ct"),
        ("CQ500 sample (series CQ500-CT-0)", config.SHARED_DATA_DIR / "cq500"),
    )
    options += [DatasetOption(name, path) for name, path in shared if path.exists()]
    return options


def ensure_demo_dataset(root: Path | None = None) -> Path:
    """Write the phantom demo dataset when it is missing (seeded: same bytes on every machine).

    Args:
        root: Dataset folder; default the demo folder of :mod:`hemo.config`.

    Returns:
        The folder, holding ``index.parquet``.
    """
    root = Path(root or config.DEMO_DIR)
    if not (root / INDEX_NAME).is_file():
        from hemo.phantom import write_demo_dataset

        log.info("writing the phantom demo dataset to %s", root)
        write_demo_dataset(root, n_studies=DEMO_STUDIES, seed=DEMO_SEED)
    return root


# Datasets ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetView:
    """An opened dataset.

    Attributes:
        path: What the user gave (folder or index file).
        layout: Layout detected by :func:`hemo.datasets.detect_layout` (``index`` for a parquet).
        index: The index table (absolute paths).
    """

    path: Path
    layout: str
    index: pd.DataFrame = field(repr=False)


def open_dataset(path: str | os.PathLike) -> DatasetView:
    """Open a dataset folder or index file: detect the layout, load (or build) the index.

    The demo phantoms are generated first when the default demo folder is asked for and empty.

    Args:
        path: A dataset folder (any layout hemo knows) or an ``index.parquet``.

    Returns:
        The dataset.

    Raises:
        DatasetError: The path does not exist or its layout is unknown.
    """
    from hemo.datasets import detect_layout, load_index

    path = Path(path).expanduser()
    if path.resolve() == config.DEMO_DIR.resolve():
        ensure_demo_dataset(path)
    if not path.exists():
        raise DatasetError(
            "no such file or folder; give a dataset folder or an index.parquet", path
        )
    if path.is_file():
        layout = "index" if path.suffix.lower() == ".parquet" else detect_layout(path)
        return DatasetView(path=path, layout=layout, index=load_index(path))
    if (path / INDEX_NAME).is_file():
        layout = detect_layout(path)
        return DatasetView(path=path, layout=layout, index=load_index(path / INDEX_NAME))
    return DatasetView(path=path, layout=detect_layout(path), index=load_index(path))


# Models -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelEntry:
    """One model the sidebar offers.

    Attributes:
        label: What the user sees (``name`` or ``run NAME``).
        path: The ``.keras`` file.
        origin: ``shipped`` or ``run``.
    """

    label: str
    path: Path
    origin: str


def list_models(shipped_dir: Path | None = None, runs_root: Path | None = None) -> list[ModelEntry]:
    """Shipped models (with a card beside them) and finished runs' models.

    Args:
        shipped_dir: Folder of shipped models; default :func:`models_dir`.
        runs_root: Folder of runs; default :func:`runs_dir`.

    Returns:
        The preferred default model first (``HEMO_DEFAULT_MODEL`` or ``phantom_rsna3``), then the
        other shipped models by name, then runs' models, newest run first.
    """
    shipped_dir = Path(shipped_dir or models_dir())
    entries = [
        ModelEntry(p.stem, p, "shipped")
        for p in sorted(shipped_dir.glob(f"*{MODEL_SUFFIX}"))
        if p.with_suffix(CARD_SUFFIX).is_file()
    ]
    preferred = os.environ.get(ENV_DEFAULT_MODEL) or DEFAULT_MODEL_STEM
    entries.sort(key=lambda e: e.label != preferred)
    entries += _run_models(Path(runs_root or runs_dir()))
    # The picker finds a model by its label: a shipped file named "run X.keras" must not hide
    # run X (nor run X the file)
    counts = Counter(e.label for e in entries)
    return [
        dataclasses.replace(e, label=f"{e.label} ({e.origin})") if counts[e.label] > 1 else e
        for e in entries
    ]


def _run_models(root: Path) -> list[ModelEntry]:
    """Models of finished runs under ``root`` (newest first); nothing when runs cannot be read."""
    if not root.is_dir():
        return []
    from hemo.runs import FINISHED, list_runs

    entries = []
    try:
        found = list_runs(root)
    except HemoError as exc:
        log.warning("cannot list runs in %s: %s", root, exc)
        return []
    for run in found:
        if run.state == FINISHED and run.model_path and Path(run.model_path).is_file():
            entries.append(ModelEntry(f"run {run.name}", Path(run.model_path), "run"))
    return entries


def card_summary(model_path: str | os.PathLike) -> dict[str, Any]:
    """Key facts of a model's card, read from its JSON without loading Keras.

    Args:
        model_path: The ``.keras`` file (its ``.json`` card lies beside it).

    Returns:
        ``name``, ``architecture`` (with the member count of an ensemble), ``labels``,
        ``threshold``, ``input`` (a short description of the input spec), ``metrics``
        (:data:`CARD_METRICS` from the card's test block, else from its pooled out-of-fold
        block), ``measured_on`` (what the card says they were measured on), ``threshold_note``
        (:func:`threshold_note`) and ``referral`` (:func:`referral_summary`).

    Raises:
        HemoError: The card is missing or not JSON.
    """
    card_path = Path(model_path).with_suffix(CARD_SUFFIX)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"cannot read the model card: {exc}", card_path) from exc
    if not isinstance(card, dict) or "name" not in card:
        raise ModelError("not a hemo model card: no name", card_path)
    try:
        return _card_facts(card, Path(model_path))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ModelError(
            f"model card is malformed ({type(exc).__name__}: {exc})", card_path
        ) from exc


def _card_facts(card: dict[str, Any], model_path: Path) -> dict[str, Any]:
    """:func:`card_summary`'s work on a card's JSON object."""
    spec = card.get("input_spec", {})
    if spec.get("mode") == "hu":
        what = "HU windows " + "+".join(spec.get("windows", ()))
    else:
        what = "display grayscale"
    metrics = card.get("metrics", {}) or {}
    block = next((metrics[k] for k in CARD_METRIC_BLOCKS if isinstance(metrics.get(k), dict)), {})
    architecture = str(card.get("architecture", "?"))
    members = ((card.get("training") or {}).get("ensemble") or {}).get("members")
    if members:
        architecture += f", ensemble of {members}"
    if card.get("density"):
        architecture += ", blended with density features"
    return {
        "name": card.get("name", Path(model_path).stem),
        "architecture": architecture,
        "labels": list(card.get("labels", [])),
        "threshold": float(card.get("threshold", 0.5)),
        "input": f"{what}, {spec.get('size', '?')} px",
        "input_mode": spec.get("mode", "display"),
        "metrics": {k: block[k] for k in CARD_METRICS if isinstance(block.get(k), int | float)},
        "measured_on": measured_text(metrics.get("measured_on", "")),
        "threshold_note": threshold_note(metrics),
        "referral": referral_summary(card),
    }


def threshold_note(metrics: Mapping[str, Any]) -> str | None:
    """What to say of a card's threshold-dependent figures when its threshold was chosen on
    the very out-of-fold predictions they are measured on (a cross-validated card), with the
    nested figure when the card has one; ``None`` otherwise (``metrics``: the card's block)."""
    chosen_on = str(metrics.get("threshold_from") or "")
    if not (chosen_on.startswith("pooled out-of-fold") and "test" not in metrics):
        return None
    text = (
        "Accuracy, sensitivity and specificity are at a threshold chosen on these same "
        "out-of-fold predictions, so slightly optimistic (ROC AUC needs no threshold)"
    )
    nested = (metrics.get("referral") or {}).get("nested")
    if isinstance(nested, Mapping) and nested.get("n") and nested.get("errors") is not None:
        n, errors = int(nested["n"]), int(nested["errors"])
        text += (
            f"; with the threshold chosen on the other folds each time, {errors} of {n} calls "
            f"were wrong (accuracy {(n - errors) / n:.3f})"
        )
    return text + "."


def measured_text(value: Any) -> str:
    """A card's ``measured_on`` as a line of text: as written, or a table of facts spelled out
    (``split all; data hemo demo-data ...; demo data: n studies 48, seed 2``)."""
    if not isinstance(value, Mapping):
        return "" if value is None else str(value)
    parts = []
    for key, item in value.items():
        label = str(key).replace("_", " ")
        if isinstance(item, Mapping):
            inner = ", ".join(f"{str(k).replace('_', ' ')} {v}" for k, v in item.items())
            parts.append(f"{label}: {inner}")
        else:
            parts.append(f"{label} {item}")
    return "; ".join(parts)


def referral_summary(card: Mapping[str, Any]) -> str | None:
    """One sentence on a card's referral band and its held-out figures, or ``None`` without
    a band (``card``: the card's JSON)."""
    band = card.get("referral")
    if not isinstance(band, Mapping):
        return None
    text = (
        f"Referral band: calls with P between {band['low']:.1%} and {band['high']:.1%} are "
        "flagged uncertain (refer to a reader)"
    )
    held = ((card.get("metrics") or {}).get("referral") or {}).get("nested")
    if isinstance(held, Mapping) and held.get("accuracy") is not None and held.get("n"):
        text += (
            f"; held out, it took {held['referred'] / held['n']:.0%} of the images and "
            f"{held['errors_referred']} of {held['errors']} errors, and the other calls were "
            f"{held['accuracy']:.1%} right"
        )
    return text + "."


# Uploads and samples ----------------------------------------------------------------------------
def content_key(files: Iterable[tuple[str, bytes]]) -> str:
    """A short hash of names and bytes of a set of uploads (the cache key of decoded scans)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, data in files:
        digest.update(name.encode("utf-8", "replace") + b"\0")
        digest.update(hashlib.blake2b(data, digest_size=16).digest())
    return digest.hexdigest()


def sample_input(key: str, dataset_root: Path | None = None) -> tuple[str, bytes]:
    """The bytes of one "Try a sample" input.

    Args:
        key: One of :data:`SAMPLES` (phantom with a bleed, healthy phantom, real CQ500 slice).
        dataset_root: Demo dataset whose phantoms are sampled; default the demo folder (made when
            missing).

    Returns:
        ``(name, bytes)``, as an upload would give them.

    Raises:
        HemoError: Unknown key, or the sample is not available (pydicom-data missing).
    """
    if key == SAMPLE_CQ500:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(CQ500_SAMPLE_FILE, download=False)
        if path is None:
            raise ConfigError("pydicom-data is not installed; pip install pydicom-data", key)
        return CQ500_SAMPLE_FILE, Path(path).read_bytes()
    if key not in (SAMPLE_BLEED, SAMPLE_HEALTHY):
        raise ConfigError(f"unknown sample; use one of {', '.join(SAMPLES)}", key)
    from hemo.datasets import load_index

    root = ensure_demo_dataset(dataset_root)
    index = load_index(root / INDEX_NAME)
    wanted = 1 if key == SAMPLE_BLEED else 0
    rows = index[pd.to_numeric(index["label_any"], errors="coerce") == wanted]
    if rows.empty:
        raise DatasetError(f"the demo dataset has no {SAMPLES[key].lower()}", root)
    if wanted and "epidural" in rows:
        # The slice with the most labelled subtypes shows the most on a heatmap
        subtype_sum = rows[list(config.SUBTYPES)].apply(pd.to_numeric, errors="coerce").sum(axis=1)
        rows = rows.loc[subtype_sum.sort_values(ascending=False, kind="stable").index]
    path = Path(rows.iloc[0]["path"])
    return path.name, path.read_bytes()


def probe_hu(hu: npt.ArrayLike, row: int, col: int) -> float:
    """The HU value at one pixel.

    Args:
        hu: (H, W) HU array.
        row: 0-based row.
        col: 0-based column.

    Returns:
        The value as a float.

    Raises:
        IndexError: The pixel is outside the image (names the shape).
    """
    arr = np.asarray(hu)
    if not (0 <= row < arr.shape[0] and 0 <= col < arr.shape[1]):
        raise IndexError(f"pixel ({row}, {col}) is outside the {arr.shape[0]}x{arr.shape[1]} image")
    return float(arr[row, col])


def metadata_frame(metadata: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> pd.DataFrame:
    """A PHI-free metadata mapping as a two-column table (``field``, ``value``, as text)."""
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    rows = [(str(k), "" if v is None else str(v)) for k, v in items]
    return pd.DataFrame(rows, columns=["field", "value"])


# Decoding, prediction and explanation -----------------------------------------------------------
@dataclass(frozen=True)
class Decoded:
    """A set of uploads, decoded and grouped.

    Attributes:
        singles: One scan per image or lone DICOM slice, in upload order.
        series: Series of two or more slices, each in anatomical order (inferior -> superior).
        errors: ``(name, message)`` per input that could not be read; the message names the file
            and what is wrong.
        notices: ``(name, message)`` per group of slices that could not be made a series (the
            same slice uploaded twice, say): every slice was read and is among ``singles``, so
            nothing failed, but there is no series verdict; the message says why, plainly.
    """

    singles: tuple[Any, ...] = ()
    series: tuple[Any, ...] = ()
    errors: tuple[tuple[str, str], ...] = ()
    notices: tuple[tuple[str, str], ...] = ()


def decode(files: Iterable[tuple[str, bytes]]) -> Decoded:
    """Read uploads from memory (files, zips of a series; never written to disk) and group them.

    Names are what the page shows and what its reports carry, so a patient's ID or name part
    read from any DICOM of the upload is scrubbed from every name (:func:`hemo.dicom.scrub_name`:
    an exported folder is often named after the patient).

    Args:
        files: ``(name, bytes)`` per upload.

    Returns:
        The readable scans, grouped; unreadable inputs listed in ``errors`` (the others are kept).
    """
    from hemo.dicom import CTSlice, scrub_name
    from hemo.series import group_series

    files = list(files)
    scans, errors, keys = _read_uploads(files)
    if keys:
        renamed = _unique_names({s.source: scrub_name(s.source, keys) for s in scans})
        scans = [dataclasses.replace(s, source=renamed[s.source]) for s in scans]
        errors = [(scrub_name(n, keys), scrub_name(m, keys)) for n, m in errors]
    uploaded = {id(scan): place for place, scan in enumerate(scans)}
    singles = [scan for scan in scans if not isinstance(scan, CTSlice)]
    series: list[Any] = []
    # Series by series: a fault in one (two slices at one position) leaves the others whole
    by_uid: dict[str | None, list[Any]] = {}
    for scan in scans:
        if isinstance(scan, CTSlice):
            by_uid.setdefault(scan.series_uid, []).append(scan)
    groups: list[Any] = []
    notices: list[tuple[str, str]] = []
    for members in by_uid.values():
        try:
            groups.extend(group_series(members))
        except HemoError as exc:
            notices.append((_slices_name(members), _not_a_series(exc, len(members))))
            singles.extend(members)
    groups.sort(key=lambda g: (g.series_uid is None, g.study_uid or "", g.series_uid or ""))
    for group in groups:
        if len(group.slices) > 1:
            series.append(group)
        else:
            singles.extend(group.slices)
    # Lone DICOM slices were grouped after the images: back to the order they were uploaded in
    singles.sort(key=lambda scan: uploaded.get(id(scan), len(uploaded)))
    return Decoded(
        singles=tuple(singles), series=tuple(series), errors=tuple(errors), notices=tuple(notices)
    )


def _not_a_series(exc: HemoError, n_slices: int) -> str:
    """Why ``n_slices`` uploaded slices are shown one by one instead of as a series."""
    from hemo.series import DuplicateSliceError

    after = f"the {n_slices} slices are shown one by one, without a series verdict"
    if isinstance(exc, DuplicateSliceError):
        return (
            f"{exc.first} and {exc.second} lie at the same place in their series "
            f"({exc.where}): the same slice uploaded twice? {after[0].upper()}{after[1:]}; "
            "remove one copy to see them as a series."
        )
    if isinstance(exc, LimitError):  # its own message names the series by its UID pseudonym
        return (
            f"{n_slices} slices of one series are more than a series may hold "
            f"({config.MAX_SLICES_PER_SERIES}, config.MAX_SLICES_PER_SERIES): {after}."
        )
    return f"{exc.reason}; {after}"


def _read_uploads(
    files: Sequence[tuple[str, bytes]],
) -> tuple[list[Any], list[tuple[str, str]], frozenset[str]]:
    """Every scan of the uploads in upload order, ``(name, message)`` of those not read
    (unreadable, or over the pixels one upload set may hold), and the patient-name keys
    (:func:`hemo.dicom.name_keys`) of every DICOM read, kept or not, and of the headers of
    uploaded files that could not be read whole."""
    from hemo.dicom import read_dicom_header
    from hemo.io import iter_scans

    scans: list[Any] = []
    errors: list[tuple[str, str]] = []
    keys: set[str] = set()
    uploaded = dict(files)
    held = 0  # pixels of the scans kept: the set is cached, so it is bounded as one file is
    for result in iter_scans(list(files)):
        if result.error is not None:
            errors.append((result.name, str(result.error)))
            if result.name in uploaded:  # its header may still name the patient
                try:
                    keys |= read_dicom_header(uploaded[result.name], result.name).name_keys
                except HemoError:
                    pass  # not a DICOM header either: nothing in it to look for
            continue
        keys |= getattr(result.scan, "name_keys", frozenset())
        pixels = _scan_pixels(result.scan)
        if held + pixels > config.MAX_PIXELS_PER_FILE:
            errors.append(
                (
                    result.name,
                    f"{result.name}: not read: this upload already holds {held:,} pixels "
                    f"and the app keeps at most {config.MAX_PIXELS_PER_FILE:,} at once "
                    "(config.MAX_PIXELS_PER_FILE); upload fewer or smaller scans at a time",
                )
            )
            continue
        held += pixels
        scans.append(result.scan)
    return scans, errors, frozenset(keys)


def _unique_names(renamed: Mapping[str, str]) -> dict[str, str]:
    """Scrubbed names kept apart: two names scrubbed into one (``Smith.dcm`` and ``Jones.dcm``
    both ``[patient].dcm``) get `` (2)``, `` (3)`` ... in order, so scans and report rows can
    still be told apart."""
    taken: Counter[str] = Counter()
    out: dict[str, str] = {}
    for original, name in renamed.items():
        taken[name] += 1
        out[original] = name if taken[name] == 1 else f"{name} ({taken[name]})"
    return out


def _scan_pixels(scan: Any) -> int:
    """Pixels a decoded scan holds (a CT slice's HU or an image's grayscale)."""
    array = getattr(scan, "hu", None)
    if array is None:
        array = getattr(scan, "pixels", None)
    return 0 if array is None else int(np.asarray(array).size)


def predict_scans(
    predictor: Any,
    scans: Sequence[Any],
    on_progress: Callable[[float, str], None] | None = None,
) -> list[Any]:
    """Predict scans already decoded (so uploads are decoded once for display and prediction).

    Uses the predictor's own preprocessing (:meth:`hemo.predict.Predictor.prepare`, in
    :data:`PREP_WORKERS` threads) and compiled forward pass, batch by batch.

    Args:
        predictor: A :class:`hemo.predict.Predictor`.
        scans: ``CTSlice`` / ``Image2D`` objects.
        on_progress: Called after each batch with the fraction done and what is done
            (``"slice 64 of 238"``).

    Returns:
        One :class:`hemo.predict.Prediction` per scan, in order (``index``: position in ``scans``).

    Raises:
        HemoError: A scan the model cannot take (e.g. a PNG for a model of HU windows).
    """
    from hemo.predict import ANY_LABEL, Prediction

    labels = tuple(predictor.labels)
    head = labels.index(ANY_LABEL) if ANY_LABEL in labels else 0
    out = []
    for start in range(0, len(scans), predictor.batch_size):
        chunk = list(scans[start : start + predictor.batch_size])
        with ThreadPoolExecutor(PREP_WORKERS, thread_name_prefix="hemo-ui-prep") as pool:
            inputs = list(pool.map(predictor.prepare, chunk))
            density = (  # measured in the threads too, when the card blends them in
                None
                if predictor.density is None
                else np.stack(list(pool.map(lambda x: predictor.features(x[None])[0], inputs)))
            )
        probs = predictor.forward(np.stack(inputs), density)
        for offset, (scan, row) in enumerate(zip(chunk, probs, strict=True)):
            probability = float(row[head])
            out.append(
                Prediction(
                    source=scan.source,
                    probability=probability,
                    probabilities={k: float(v) for k, v in zip(labels, row, strict=True)},
                    positive=probability >= predictor.threshold,
                    threshold=predictor.threshold,
                    study_uid=getattr(scan, "study_uid", None),
                    series_uid=getattr(scan, "series_uid", None),
                    slice_z_mm=getattr(scan, "slice_z_mm", None),
                    index=start + offset,
                    frame=getattr(scan, "frame", None),
                    uncertain=predictor.refers(probability),
                )
            )
        if on_progress is not None:
            on_progress(len(out) / len(scans), f"slice {len(out)} of {len(scans)}")
    return out


def display_image(scan: Any, window: Any = None) -> npt.NDArray[np.float32]:
    """The plain picture of a scan: CT through ``window`` (default brain), images as they are.

    Returns:
        float32 (H, W) in [0, 1].
    """
    from hemo.preprocess import to_display

    if hasattr(scan, "hu"):
        return to_display(scan, window or "brain")
    return to_display(scan)


@dataclass(frozen=True)
class Analysis:
    """What the Predict page shows for one scan.

    Attributes:
        name: The input's name.
        prediction: The :class:`hemo.predict.Prediction`.
        display: float32 (S, S) in [0, 1], the plain slice with the model input's geometry
            (head crop, padding; :func:`hemo.preprocess.input_view`), so the heatmap lines up.
        heatmap: float32 (h, w) in [0, 1] at model-input size (all zeros when ``flat``).
        flat: The map carries no spatial information.
        method: CAM method used.
        label: Output explained.
    """

    name: str
    prediction: Any
    display: npt.NDArray[np.float32] = field(repr=False)
    heatmap: npt.NDArray[np.float32] = field(repr=False)
    flat: bool
    method: str
    label: str


def analyse(predictor: Any, scan: Any, method: str = "gradcam", label: str = "any") -> Analysis:
    """Predict one scan and explain the prediction with a CAM method.

    Args:
        predictor: A :class:`hemo.predict.Predictor` (its model is not modified).
        scan: A ``CTSlice`` or ``Image2D``.
        method: A key of :data:`hemo.cam.METHODS`.
        label: The output explained (``any`` or a subtype the model has).

    Returns:
        The analysis; a slice or image outside the model's slice range (:mod:`hemo.anatomy`:
        a localizer or reformat, or the soft-tissue rule) has the reason in
        ``prediction.outside_range``.

    Raises:
        HemoError: The model cannot take this scan (e.g. a PNG for a model of HU windows).
    """
    from hemo.anatomy import plane_reason, scan_anatomy
    from hemo.cam import explain
    from hemo.preprocess import input_view, to_model_input

    card = predictor.card
    x = to_model_input(scan, card.input_spec)
    prediction = predict_scans(predictor, [scan])[0]
    reason = plane_reason(scan)
    if reason is None and predictor.slice_range is not None:
        reason = predictor.slice_range.reason(scan_anatomy(scan))
    prediction = dataclasses.replace(prediction, outside_range=reason)
    cam = explain(
        predictor.model,
        x,
        method=method,
        label=label,
        layer=card.cam_layer or None,
        labels=card.labels,
    )
    return Analysis(
        name=scan.source,
        prediction=prediction,
        display=input_view(scan, card.input_spec, size=OVERLAY_VIEW_SIZE),
        heatmap=cam.heatmap,
        flat=bool(cam.flat),
        method=method,
        label=label,
    )


def overlay_image(
    analysis: Analysis, alpha: float, colormap: str, contour_level: float | None = None
) -> npt.NDArray[np.uint8]:
    """The heatmap of an analysis over its plain slice: uint8 (H, W, 3) RGB."""
    from hemo.cam import overlay

    return overlay(
        analysis.display,
        analysis.heatmap,
        alpha=alpha,
        colormap=colormap,
        contour_level=contour_level,
    )


def series_name(series: Any) -> str:
    """A series' display name: the file holding every slice (a multi-frame DICOM, a NIfTI
    volume), else the common folder or archive of its slices' names."""
    return _slices_name(series.slices)


def _slices_name(slices: Sequence[Any]) -> str:
    """:func:`series_name` of the slices of one series."""
    names = [str(s.source).replace("\\", "/") for s in slices]
    if len(set(names)) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)
    if "/" in prefix:
        return prefix.rsplit("/", 1)[0] or names[0]
    return UNNAMED_SERIES.format(n=len(names))


def series_title(name: str, slices: int) -> str:
    """A series' heading: its name and how many slices it has (said once).

    Args:
        name: :func:`series_name` of the series.
        slices: Its number of slices.

    Returns:
        ``name — N slices``, or ``name`` alone when it already says the count
        (:data:`UNNAMED_SERIES`).
    """
    if name == UNNAMED_SERIES.format(n=slices):
        return name
    return f"{name} — {slices} slices"


@dataclass(frozen=True)
class SeriesResult:
    """Per-slice predictions of a series and its study verdict.

    Attributes:
        name: Series name.
        predictions: One per slice, in anatomical order.
        probabilities: float64 (N,), P(any) per slice.
        study: :func:`hemo.reports.study_summary` of the series.
        most_suspicious: 0-based index of the slice with the highest probability among those
            in the model's range (the study verdict's slice).
    """

    name: str
    predictions: tuple[Any, ...]
    probabilities: npt.NDArray[np.float64] = field(repr=False)
    study: dict[str, Any]
    most_suspicious: int


def predict_series(
    predictor: Any, series: Any, on_progress: Callable[[float, str], None] | None = None
) -> SeriesResult:
    """Predict every slice of a series (batched) and lift the result to the study.

    Args:
        predictor: A :class:`hemo.predict.Predictor`.
        series: A :class:`hemo.series.Series`.
        on_progress: Called after each batch of slices (see :func:`predict_scans`).

    Returns:
        The per-slice and study results.
    """
    from hemo.anatomy import outside_reasons, plane_reason, scan_anatomy
    from hemo.reports import study_summary

    predictions = tuple(predict_scans(predictor, series.slices, on_progress))
    slice_range = predictor.slice_range
    anatomies = None
    if slice_range is not None:
        with ThreadPoolExecutor(PREP_WORKERS, thread_name_prefix="hemo-ui-range") as pool:
            anatomies = list(pool.map(scan_anatomy, series.slices))
    reasons = outside_reasons([plane_reason(s) for s in series.slices], slice_range, anatomies)
    predictions = tuple(
        dataclasses.replace(p, outside_range=r) for p, r in zip(predictions, reasons, strict=True)
    )
    probabilities = np.array([p.probability for p in predictions], dtype=np.float64)
    probabilities.setflags(write=False)  # a result may be shared between sessions
    name = series_name(series)
    study = study_summary(
        name,
        probabilities,
        predictor.card.threshold,
        [p.outside_range for p in predictions],
        predictor.referral,
        note=series.coverage_note,
    )
    return SeriesResult(
        name=name,
        predictions=predictions,
        probabilities=probabilities,
        study=study,
        most_suspicious=int(study["most_suspicious_slice"]) - 1,
    )


#: Strip status of a slice that counts for the series verdict.
IN_RANGE_LABEL = "counts for the verdict"
#: Strip status of a slice outside the model's range (:mod:`hemo.anatomy`).
OUT_OF_RANGE_LABEL = "outside the model's range"


def strip_frame(result: SeriesResult) -> pd.DataFrame:
    """The per-slice probability strip: ``slice`` (1-based), ``slice_z_mm``, ``probability``,
    ``in_range`` (the slice counts for the verdict), ``status`` (:data:`IN_RANGE_LABEL` or
    :data:`OUT_OF_RANGE_LABEL`) and ``outside_range`` (why not, or "")."""
    z = [getattr(p, "slice_z_mm", None) for p in result.predictions]
    reasons = [getattr(p, "outside_range", None) or "" for p in result.predictions]
    return pd.DataFrame(
        {
            "slice": np.arange(1, len(result.predictions) + 1),
            "slice_z_mm": pd.to_numeric(pd.Series(z, dtype="object"), errors="coerce"),
            "probability": result.probabilities,
            "in_range": [not r for r in reasons],
            "status": [OUT_OF_RANGE_LABEL if r else IN_RANGE_LABEL for r in reasons],
            "outside_range": reasons,
        }
    )


def range_caption(study: Mapping[str, Any]) -> str:
    """What the slices outside the model's range mean for a series verdict (one sentence).

    Args:
        study: :func:`hemo.reports.study_summary` of the series.
    """
    outside = study["slices"] - study["slices_in_range"]
    if not study["slices_in_range"]:
        return (
            f"No slice of this series is in the model's range (skull base, vertex, localizers "
            f"or reformats only), so it gets no verdict, as such a slice shown alone gets none. "
            f"Highest probability over its {study['slices']} slices: "
            f"{study['probability_all_slices']:.1%}, not a finding."
        )
    return (
        f"{outside} of {study['slices']} slices lie outside the slices the model was trained on "
        f"(skull base, vertex, localizers, reformats: grey in the strip); the verdict pools the "
        f"other "
        f"{study['slices_in_range']}. Highest probability over every slice: "
        f"{study['probability_all_slices']:.1%}."
    )


def synthetic_training_message(card: Any) -> str | None:
    """A warning for a model trained only on hemo's synthetic phantoms, else ``None``.

    Such a model was never shown a real scan: on one its probabilities (often confident) are
    not findings. Known from the card: the training set's layout (``phantom``, recorded since
    the layout was), else a test set named by its ``hemo demo-data`` recipe.
    """
    training = card.training or {}
    measured_on = (card.metrics or {}).get("measured_on") or {}
    synthetic = training.get("layout") == "phantom" or (
        training.get("layout") is None
        and isinstance(measured_on, dict)
        and "demo_data" in measured_on
    )
    if not synthetic:
        return None
    return (
        f"{card.name} was trained and tested on synthetic phantoms only (hemo demo-data), for "
        "subtype demos and heatmaps on phantoms. It has never seen a real scan: on one, its "
        "probabilities are not findings, however confident. For real head CT pick a model "
        "trained on real scans (the shipped headct_real)."
    )


#: Under each call of a model trained only on phantoms (the warning above may be scrolled away).
PHANTOM_ONLY_CAPTION = "Phantom-only model: on a real scan this call is not a finding."
#: The report's note for a phantom sample shown to a model trained on real scans.
PHANTOM_SAMPLE_NOTE = (
    "a synthetic phantom shown to a model trained on real scans: not a test of the model"
)


def phantom_sample_message(card: Any) -> str | None:
    """What the Predict page says under a phantom sample shown to a model trained on real
    scans (``None`` for a model trained on phantoms: the sample is what it knows)."""
    if synthetic_training_message(card) is not None:
        return None
    return (
        f"A synthetic phantom (a sample): {card.name} was trained on real scans, never on "
        "phantoms, so its call here is no test of it. The phantom model (phantom_rsna3) is "
        "the one for phantoms; the real CQ500 slice is a sample for this one."
    )


def referral_message(card: Any, probability: float, what: str = "image") -> str:
    """Why a call in the card's referral band goes to a reader (one paragraph).

    Args:
        card: The model's :class:`hemo.model.ModelCard` (it has a band).
        probability: The call's P(any).
        what: What is referred ("image", "series").
    """
    band = card.parse_referral()
    text = (
        f"Uncertain call: {probability:.1%} lies in the model's referral band "
        f"({band.low:.1%} to {band.high:.1%} around its {card.threshold:.1%} threshold), where "
        f"its validation calls were too often wrong. Refer this {what} to a reader."
    )
    held = ((card.metrics or {}).get("referral") or {}).get("nested")
    if held and held.get("accuracy") is not None:
        text += (
            f" In the model's cross-validation, held out, the band took {held['referred']} of "
            f"{held['n']} images and {held['errors_referred']} of its {held['errors']} errors; "
            f"the calls outside it were {held['accuracy']:.1%} right."
        )
    return text


# Windowing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowViews:
    """A CT slice under the chosen window, its own default window and a multi-window composite.

    Attributes:
        chosen: float32 (H, W) in [0, 1] under the chosen window.
        default: float32 (H, W) under the file's first WindowCenter/WindowWidth, else None.
        default_label: Text naming the default window (``"C/W HU"``) or why there is none.
        composite: float32 (H, W, 3) in [0, 1], one window per channel.
        channels: ``(window name, (H, W) image)`` per composite channel.
    """

    chosen: npt.NDArray[np.float32] = field(repr=False)
    default: npt.NDArray[np.float32] | None = field(repr=False)
    default_label: str
    composite: npt.NDArray[np.float32] = field(repr=False)
    channels: tuple[tuple[str, npt.NDArray[np.float32]], ...] = field(repr=False)


def window_views(
    scan: Any, center_hu: float, width_hu: float, composite: str = "rsna3"
) -> WindowViews:
    """Render a CT slice for the Windowing page.

    Args:
        scan: A ``CTSlice`` (HU).
        center_hu: Chosen window centre in HU.
        width_hu: Chosen window width in HU (> 0).
        composite: A composite name of :data:`hemo.windowing.COMPOSITES`.

    Returns:
        The views.

    Raises:
        HemoError: ``scan`` has no HU (a PNG/JPEG), or the window is invalid.
    """
    from hemo.windowing import multi_window, resolve_windows, window

    hu = getattr(scan, "hu", None)
    if hu is None:
        raise InputError("windowing needs Hounsfield units: give a DICOM slice", scan.source)
    default = scan.default_window
    if default is not None:
        default_image = window(hu, default.center_hu, default.width_hu)
        label = f"{default.center_hu:g}/{default.width_hu:g} HU (from the file)"
    else:
        default_image, label = None, "the file carries no WindowCenter/WindowWidth"
    stack = multi_window(hu, composite)
    names = [w.name for w in resolve_windows(composite)]
    return WindowViews(
        chosen=window(hu, center_hu, width_hu),
        default=default_image,
        default_label=label,
        composite=stack,
        channels=tuple((name, stack[..., i]) for i, name in enumerate(names)),
    )


# Browsing a dataset -----------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyEntry:
    """One study of a dataset as the Windowing page lists it (no UIDs shown).

    Attributes:
        label: ``study N · class · K slices``.
        paths: Its image files, ordered by ``slice_z`` (inferior -> superior) where known.
    """

    label: str
    paths: tuple[str, ...]


def dataset_studies(index: pd.DataFrame, limit: int | None = None) -> list[StudyEntry]:
    """The studies of an index, largest (then positive) first, files in anatomical order.

    Args:
        index: Index frame (absolute paths).
        limit: Keep at most this many studies (None: all).

    Returns:
        One entry per study (series UID, else study UID, else one per image).
    """
    from hemo.eda import class_name

    keys = index["path"].astype("string")
    for column in ("study_uid", "series_uid"):
        if column in index:
            keys = index[column].astype("string").fillna(keys)
    frame = index.assign(_key=keys.to_numpy())
    labels = pd.to_numeric(frame["label_any"], errors="coerce").fillna(0)
    frame = frame.assign(_label=labels.to_numpy())
    # Largest studies first; among equals, those with a bleed (the more telling demo)
    groups = sorted(
        frame.groupby("_key", sort=False), key=lambda kv: (-len(kv[1]), -kv[1]["_label"].max())
    )
    entries = []
    for number, (_, group) in enumerate(groups[:limit] if limit else groups, start=1):
        ordered = group.sort_values(["slice_z", "path"], kind="stable", na_position="last")
        label = pd.to_numeric(group["label_any"], errors="coerce").max()
        entries.append(
            StudyEntry(
                label=f"study {number} · {class_name(label)} · {len(group)} slice(s)",
                paths=tuple(str(p) for p in ordered["path"]),
            )
        )
    return entries


def read_file(path: str | os.PathLike) -> Any:
    """Read one scan file of a dataset (DICOM, PNG, JPEG or TIFF).

    Raises:
        HemoError: The file cannot be read (the message names it and the problem).
    """
    from hemo.io import read_scan

    return read_scan(Path(path))


def cam_methods() -> list[str]:
    """Names of the CAM methods the Predict page offers (Grad-CAM first)."""
    from hemo.cam import METHODS

    return sorted(METHODS, key=lambda name: name != "gradcam")


def colormaps() -> list[str]:
    """Colormap names for overlays (the default first)."""
    from hemo.cam.overlay import COLORMAPS, DEFAULT_COLORMAP

    return sorted(COLORMAPS, key=lambda name: name != DEFAULT_COLORMAP)


def subtype_frame(prediction: Any) -> pd.DataFrame:
    """Subtype probabilities of a prediction: ``label``, ``probability`` (empty for binary models)."""
    items = [(k, float(v)) for k, v in dict(prediction.probabilities).items() if k != "any"]
    return pd.DataFrame(items, columns=["label", "probability"])


def safe_stem(name: str) -> str:
    """A file-name-safe stem of an input name (for download names)."""
    stem = Path(str(name).replace("\\", "/").rsplit("/", 1)[-1]).stem or "scan"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)


def slice_caption(number: int, prediction: Any) -> str:
    """The caption of a series' slice on the Predict page: its place, file and position."""
    parts = [f"slice {number}", Path(str(prediction.source).replace("\\", "/")).name]
    if getattr(prediction, "frame", None) is not None:
        parts[-1] += f" (frame {prediction.frame})"
    z = getattr(prediction, "slice_z_mm", None)
    if z is not None:
        parts.append(f"z {z:.1f} mm")
    return " · ".join(parts)


def overlay_file_name(name: str, method: str, slice_number: int | None = None) -> str:
    """The download name of an overlay PNG: the scan's stem, its slice number in a series (so
    two slices of one series never share a name), the CAM method."""
    place = "" if slice_number is None else f"_slice{slice_number:03d}"
    return f"{safe_stem(name)}{place}_{method}.png"


def unlikely_map_note(result: Any, threshold: float) -> str | None:
    """What to say under a heatmap whose explained output the model finds unlikely.

    A Grad-CAM map is scaled to its own maximum, so a scan called negative still gets bright
    colours somewhere; a reader must not take them for a lesion. ``None`` when the output's
    probability reaches ``threshold`` (the card's, for ``any``) or the map is flat.
    """
    if result.flat:
        return None
    probability = dict(result.prediction.probabilities).get(
        result.label, result.prediction.probability
    )
    if probability >= threshold:
        return None
    return (
        f"The model finds {result.label} unlikely here (P {probability * 100:.1f} %). The map is "
        "scaled to its own maximum: its brightest colours show where the model looked most, "
        "not a lesion."
    )


#: Under a heatmap of a model whose card blends density features into P(any).
DENSITY_CAPTION = (
    "The probability blends this network, whose map this is, with density features measured "
    "on the slice (how much of the inside of the skull is brighter than the brain, and how "
    "lopsided the slice is): the map shows where the network looked, not all the evidence."
)


def density_caption(card: Any, label: str = "any") -> str | None:
    """:data:`DENSITY_CAPTION` under a map of ``any`` from a card that blends density features
    into it, else ``None``."""
    return DENSITY_CAPTION if getattr(card, "density", None) and label == "any" else None


def training_match_note(match: tuple[str, float] | None) -> str | None:
    """The report's note for a scan that looks like one of the model's training images. The
    training image is not named: a report is shared, and a training set's file names may
    name its patients (the page, seen only by the user, names it)."""
    if match is None:
        return None
    _, similarity = match
    return (
        f"looks like one of the model's training images (correlation {similarity:.3f}): "
        "not a test of the model"
    )


def training_match_message(match: tuple[str, float]) -> str:
    """What the Predict page says when a scan looks like one of the model's training images."""
    path, similarity = match
    return (
        f"This looks like an image the model was trained on ({Path(path).name}, correlation "
        f"{similarity:.3f} of the head crops: the same picture, or a neighbouring slice of the "
        "same head). Its result here is not a test of the model."
    )
