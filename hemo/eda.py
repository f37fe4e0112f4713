"""Chart-ready tables for exploring a dataset index (the EDA page's numbers, without Streamlit).

Every function takes an index frame (see :mod:`hemo.datasets.schema`) and returns a new pandas
frame shaped for one chart; nothing here draws, and nothing mutates its input. The functions that
read pixels work on a seeded, class-stratified sample and report progress through a callback so a
page can show a progress bar on long scans.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from hemo.config import DEFAULT_SEED, HU_FLOOR, SUBTYPES
from hemo.errors import HemoError

log = logging.getLogger(__name__)

#: Display names of ``label_any`` values.
CLASS_NAMES: dict[int, str] = {0: "no hemorrhage", 1: "hemorrhage"}
#: Name used where a label is missing.
UNLABELLED = "unlabelled"
#: Order of splits on charts.
SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test")
#: HU range of a whole-slice histogram (air to dense bone; contrast and metal beyond are left out).
HIST_RANGE_HU: tuple[float, float] = (HU_FLOOR, 1600.0)
#: HU range of the per-class histograms: fat to calcification, where grey/white matter
#: (~20-45 HU) and fresh blood (~50-90 HU) differ; air and bone would dwarf them.
HIST_RANGE_BRAIN_HU: tuple[float, float] = (-100.0, 150.0)
#: Intensity range of display-grayscale images (PNG/JPEG).
HIST_RANGE_INTENSITY: tuple[float, float] = (0.0, 1.0)
#: Bins of the per-class histograms.
HIST_BINS = 64
#: Images read per class for histograms and geometry.
SAMPLE_PER_CLASS = 8
#: :func:`background_imbalance`: warn when the classes' shares of gray backgrounds differ by this.
BACKGROUND_IMBALANCE = 0.25
#: :func:`background_imbalance`: classes with fewer sampled images are not compared.
BACKGROUND_MIN_IMAGES = 8
#: Images per class in the sample grid.
GRID_PER_CLASS = 4
#: Look-alike pairs the EDA page shows (one per group, the most alike first).
LOOKALIKE_PAIRS = 6

ProgressFn = Callable[[float, str], None]


def class_name(value: object) -> str:
    """Display name of one ``label_any`` value (``unlabelled`` when missing)."""
    if value is None or pd.isna(value):
        return UNLABELLED
    return CLASS_NAMES.get(int(value), str(value))


def _classes(index: pd.DataFrame) -> pd.Series:
    return index["label_any"].map(class_name)


def summary(index: pd.DataFrame) -> dict[str, int]:
    """Key counts of an index.

    Args:
        index: Index frame.

    Returns:
        ``images``, ``positive``, ``negative``, ``studies`` (0 when the index has no study or
        series ids: each image stands alone), ``patients`` (0 without patient ids) and one
        ``split_<name>`` per split present.
    """
    labels = pd.to_numeric(index["label_any"], errors="coerce")
    out = {
        "images": len(index),
        "positive": int((labels == 1).sum()),
        "negative": int((labels == 0).sum()),
        "studies": int(_study_keys(index).nunique()) if has_study_ids(index) else 0,
        "patients": int(index["patient_id"].dropna().nunique()) if "patient_id" in index else 0,
    }
    if "split" in index:
        for split, n in index["split"].value_counts().items():
            out[f"split_{split}"] = int(n)
    return out


#: File suffixes of display images (stored grayscale, no Hounsfield units to window).
DISPLAY_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def display_images_only(index: pd.DataFrame) -> bool:
    """Whether every file of ``index`` is a display image (PNG/JPEG/TIFF): a window changes
    nothing on them."""
    paths = index["path"].astype(str).str.lower()
    return bool(len(paths)) and bool(paths.str.endswith(DISPLAY_IMAGE_SUFFIXES).all())


def split_grouping(index: pd.DataFrame) -> str:
    """How an index's splits keep images together, as :func:`hemo.datasets.index` assigns
    them: by patient, else by study, else look-alike images (no ids at all)."""

    def known(column: str) -> pd.Series:
        if column not in index:
            return pd.Series(False, index=index.index)
        return index[column].notna()

    patients, studies = known("patient_id"), known("study_uid")
    if len(index) and patients.all():
        return "split by patient"
    if len(index) and (patients | studies).all():
        return "split by patient, else by study" if patients.any() else "split by study"
    if (patients | studies).any():
        return "split by patient or study where known, else look-alike images kept together"
    return "no patient ids: split by image, look-alike images kept together"


def class_balance(index: pd.DataFrame) -> pd.DataFrame:
    """Images per class.

    Returns:
        Columns ``class``, ``images``, ``fraction`` (of all images), negative class first.
    """
    counts = _classes(index).value_counts()
    order = [c for c in (*CLASS_NAMES.values(), UNLABELLED) if c in counts.index]
    frame = pd.DataFrame({"class": order, "images": [int(counts[c]) for c in order]})
    total = max(len(index), 1)
    frame["fraction"] = frame["images"] / total
    return frame


def subtype_columns(index: pd.DataFrame) -> list[str]:
    """Subtype columns that carry at least one label in ``index`` (empty for binary datasets)."""
    return [s for s in SUBTYPES if s in index and index[s].notna().any()]


def subtype_counts(index: pd.DataFrame) -> pd.DataFrame:
    """Positive images per subtype.

    Returns:
        Columns ``subtype``, ``images``; empty when the dataset has no subtype labels.
    """
    columns = subtype_columns(index)
    counts = [int((pd.to_numeric(index[s], errors="coerce") == 1).sum()) for s in columns]
    return pd.DataFrame({"subtype": columns, "images": counts})


def subtype_cooccurrence(index: pd.DataFrame) -> pd.DataFrame:
    """Images positive for both subtypes of each pair (the diagonal: for that subtype alone).

    Returns:
        Square int frame indexed and columned by the labelled subtypes; empty when none.
    """
    columns = subtype_columns(index)
    if not columns:
        return pd.DataFrame()
    positive = index[columns].apply(pd.to_numeric, errors="coerce").fillna(0).astype(np.int64)
    matrix = positive.T.to_numpy() @ positive.to_numpy()
    return pd.DataFrame(matrix, index=columns, columns=columns)


#: Why a dataset's study count reads n/a.
NO_STUDY_IDS = (
    "The index has no study or series ids (e.g. the Kaggle PNGs, a folder per class): each "
    "image stands alone."
)


def count_text(n: int, one: str, many: str) -> str:
    """``n`` and the noun for it: ``1 study``, ``3 studies``, ``1,240 studies``."""
    return f"{n:,} {one if n == 1 else many}"


def quality_scope(images: int, read: int) -> str:
    """What the data-quality table checked: every file's header and label, and the pixels of
    the ``read`` images of the pixel sample only."""
    if read >= images:
        return (
            f"Labels, duplicates and look-alikes are checked on all "
            f"{count_text(images, 'image', 'images')}, and every one was decoded in the pixel "
            "sample above."
        )
    return (
        f"Labels, duplicates and look-alikes are checked on all {count_text(images, 'image', 'images')}; "
        f"pixels are decoded only for the {count_text(read, 'image', 'images')} of the pixel "
        "sample above, so a file whose header reads but whose pixel data is damaged is listed "
        "only when sampled (raise the sample to read more of them)."
    )


def lookalike_shown(pairs: int, groups: int) -> str:
    """Which look-alike pairs the page shows: one per group, of how many groups."""
    if pairs >= groups:
        return f"The most alike pair of each of its {count_text(groups, 'group', 'groups')}."
    return (
        f"The most alike pair of {pairs} of its {groups:,} groups (the table above lists every "
        "image)."
    )


def has_study_ids(index: pd.DataFrame) -> bool:
    """Whether any row of ``index`` has a study or series id (DICOM sets; not the Kaggle PNGs
    or a folder per class)."""
    return any(c in index and index[c].notna().any() for c in ("series_uid", "study_uid"))


def _study_keys(index: pd.DataFrame) -> pd.Series:
    """One grouping key per row: study UID, else series UID, else the image itself."""
    keys = pd.Series(index["path"].astype(str).to_numpy(), index=index.index, dtype="string")
    for column in ("series_uid", "study_uid"):
        if column in index:
            keys = index[column].astype("string").fillna(keys)
    return keys


def slices_per_study(index: pd.DataFrame) -> pd.DataFrame:
    """Images per study (series, or single image where the dataset has no UIDs).

    Returns:
        Columns ``study`` (1-based ordinal, never the UID), ``slices``, ``class`` (hemorrhage when
        any slice is positive), sorted by size descending.
    """
    keys = _study_keys(index)
    labels = pd.to_numeric(index["label_any"], errors="coerce")
    grouped = pd.DataFrame({"key": keys, "label": labels}).groupby("key", sort=False)
    frame = pd.DataFrame({"slices": grouped.size(), "label": grouped["label"].max()}).reset_index(
        drop=True
    )
    frame["class"] = frame["label"].map(class_name)
    frame = frame.sort_values("slices", ascending=False, kind="stable").reset_index(drop=True)
    frame.insert(0, "study", np.arange(1, len(frame) + 1))
    return frame[["study", "slices", "class"]]


def split_sizes(index: pd.DataFrame) -> pd.DataFrame:
    """Images per split and class.

    Returns:
        Columns ``split``, ``class``, ``images``; splits in train/val/test order.
    """
    split = index["split"].astype("string").fillna("none") if "split" in index else "none"
    frame = (
        pd.DataFrame({"split": split, "class": _classes(index)})
        .value_counts()
        .rename("images")
        .reset_index()
    )
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    frame["_rank"] = frame["split"].map(lambda s: rank.get(s, len(rank)))
    frame = frame.sort_values(["_rank", "class"], kind="stable").drop(columns="_rank")
    return frame.reset_index(drop=True)


def stratified_sample(
    index: pd.DataFrame, per_class: int = SAMPLE_PER_CLASS, seed: int = DEFAULT_SEED
) -> pd.DataFrame:
    """A seeded sample of up to ``per_class`` rows of each class.

    Args:
        index: Index frame. Not modified.
        per_class: Rows drawn per class (all rows of a smaller class).
        seed: Seed of the draw: same seed, same rows.

    Returns:
        The sampled rows (a copy) with a ``class`` column added, grouped by class.
    """
    frame = index.assign(**{"class": _classes(index)})
    parts = []
    for offset, (_, group) in enumerate(frame.groupby("class", sort=True)):
        n = min(per_class, len(group))
        parts.append(group.sample(n=n, random_state=seed + offset))
    if not parts:
        return frame.iloc[0:0].copy()
    return pd.concat(parts).reset_index(drop=True)


@dataclass(frozen=True)
class SampleStats:
    """What a pass over a pixel sample found.

    Attributes:
        histograms: Columns ``class``, ``unit`` (``HU`` or ``intensity``), ``value`` (bin centre),
            ``fraction`` (of that class's pixels inside the range: :data:`HIST_RANGE_BRAIN_HU`
            for CT, [0, 1] for images).
        geometry: One row per readable image: ``class``, ``kind``, ``rows``, ``cols``,
            ``spacing_row_mm``, ``spacing_col_mm``, ``thickness_mm`` (NaN where unknown) and
            ``background``: the level of its flat gray background in display grayscale
            (:func:`hemo.preprocess.flat_background`; DICOM through the brain window), 0 when it
            has none (black, as air is in a DICOM).
        failures: Columns ``path``, ``reason`` for sampled files that could not be read.
    """

    histograms: pd.DataFrame
    geometry: pd.DataFrame
    failures: pd.DataFrame


def _values_and_unit(scan: object) -> tuple[npt.NDArray[np.float32], str]:
    """Pixel values of a scan and their unit (HU for CT slices, intensity for images)."""
    hu = getattr(scan, "hu", None)
    if hu is not None:
        return np.asarray(hu), "HU"
    return np.asarray(scan.pixels), "intensity"


def histogram(
    values: npt.ArrayLike, value_range: tuple[float, float], bins: int = HIST_BINS
) -> pd.DataFrame:
    """Histogram of values inside a range, normalised to fractions.

    Args:
        values: Any-shape array (HU or intensity). Not modified.
        value_range: ``(low, high)``; values outside are left out.
        bins: Number of equal-width bins.

    Returns:
        Columns ``value`` (bin centre), ``count``, ``fraction`` (0 everywhere when no value falls
        inside the range).
    """
    counts, edges = np.histogram(np.asarray(values).ravel(), bins=bins, range=value_range)
    total = counts.sum()
    fraction = counts / total if total else np.zeros_like(counts, dtype=np.float64)
    centres = (edges[:-1] + edges[1:]) / 2.0
    return pd.DataFrame({"value": centres, "count": counts, "fraction": fraction})


def scan_sample(
    index: pd.DataFrame,
    per_class: int = SAMPLE_PER_CLASS,
    seed: int = DEFAULT_SEED,
    bins: int = HIST_BINS,
    on_progress: ProgressFn | None = None,
) -> SampleStats:
    """Read a class-stratified sample: per-class value histograms, image sizes and spacing.

    Args:
        index: Index frame (absolute paths).
        per_class: Images read per class.
        seed: Seed of the sample.
        bins: Histogram bins.
        on_progress: Called with (fraction done, current file name) after each file.

    Returns:
        The histograms, geometry and unreadable files of the sample.
    """
    from hemo.io import read_scan
    from hemo.preprocess import flat_background, to_display

    sample = stratified_sample(index, per_class, seed)
    values: dict[tuple[str, str], list[npt.NDArray[np.float32]]] = {}
    geometry, failures = [], []
    for i, row in enumerate(sample.to_dict("records")):
        path = str(row["path"])
        try:
            scan = read_scan(path)
        except (HemoError, OSError) as exc:
            failures.append({"path": path, "reason": getattr(exc, "reason", str(exc))})
        else:
            pixels, unit = _values_and_unit(scan)
            values.setdefault((row["class"], unit), []).append(pixels)
            background = flat_background(to_display(scan))
            spacing = getattr(scan, "pixel_spacing_mm", None) or (np.nan, np.nan)
            thickness = getattr(scan, "slice_thickness_mm", None)
            geometry.append(
                {
                    "class": row["class"],
                    "kind": "dicom" if unit == "HU" else getattr(scan, "kind", "image"),
                    "rows": int(pixels.shape[0]),
                    "cols": int(pixels.shape[1]),
                    "spacing_row_mm": float(spacing[0]),
                    "spacing_col_mm": float(spacing[1]),
                    "thickness_mm": np.nan if thickness is None else float(thickness),
                    "background": 0.0 if background is None else background,
                }
            )
        if on_progress is not None:
            on_progress((i + 1) / len(sample), path)
    parts = []
    for (name, unit), arrays in sorted(values.items()):
        value_range = HIST_RANGE_BRAIN_HU if unit == "HU" else HIST_RANGE_INTENSITY
        flat = np.concatenate([a.ravel() for a in arrays])
        part = histogram(flat, value_range, bins)
        part.insert(0, "unit", unit)
        part.insert(0, "class", name)
        parts.append(part)
    hist_columns = ["class", "unit", "value", "count", "fraction"]
    histograms = (
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=hist_columns)
    )
    geo_columns = [
        "class",
        "kind",
        "rows",
        "cols",
        "spacing_row_mm",
        "spacing_col_mm",
        "thickness_mm",
        "background",
    ]
    return SampleStats(
        histograms=histograms,
        geometry=pd.DataFrame(geometry, columns=geo_columns),
        failures=pd.DataFrame(failures, columns=["path", "reason"]),
    )


def backgrounds_by_class(geometry: pd.DataFrame) -> pd.DataFrame:
    """How many images of each class have a flat gray background (``background`` > 0).

    Args:
        geometry: :attr:`SampleStats.geometry`.

    Returns:
        Columns ``class``, ``images``, ``gray_background`` (count), ``share``; one row per class.
    """
    columns = ["class", "images", "gray_background", "share"]
    if geometry.empty:
        return pd.DataFrame(columns=columns)
    gray = geometry.assign(gray=geometry["background"] > 0)
    table = gray.groupby("class", sort=True)["gray"].agg(images="size", gray_background="sum")
    table = table.reset_index()
    table["gray_background"] = table["gray_background"].astype(int)
    table["share"] = table["gray_background"] / table["images"]
    return table[columns]


def background_imbalance(
    table: pd.DataFrame, min_images: int = BACKGROUND_MIN_IMAGES
) -> str | None:
    """A warning when gray backgrounds are much more common in one class than another.

    Args:
        table: :func:`backgrounds_by_class` output.
        min_images: Classes with fewer sampled images are not compared.

    Returns:
        The warning (shares per class, why it matters, what to do), or ``None`` when the shares
        of the compared classes differ by less than :data:`BACKGROUND_IMBALANCE`.
    """
    compared = table[(table["images"] >= min_images) & (table["class"] != "unlabelled")]
    if len(compared) < 2:
        return None
    high, low = compared["share"].max(), compared["share"].min()
    if high - low < BACKGROUND_IMBALANCE:
        return None
    shares = ", ".join(
        f"{row['class']} {row['gray_background']} of {row['images']}"
        for row in compared.to_dict("records")
    )
    return (
        f"Gray backgrounds are far more common in one class ({shares} sampled images): a model "
        "can learn the background instead of the bleed, and it sees a head on gray smaller "
        "(the head crop takes the whole gray picture). input.black_background = true sets such "
        "backgrounds to black before training and prediction, as air is in a DICOM; check "
        "whether it helps on held-out data (on the Kaggle set it did not: docs/MODELS.md)."
    )


@dataclass(frozen=True)
class GridTile:
    """One image of the sample grid.

    Attributes:
        label: Class name.
        caption: Short caption (file name, never patient data).
        image: float32 (H, W) display image in [0, 1].
    """

    label: str
    caption: str
    image: npt.NDArray[np.float32]


def sample_grid(
    index: pd.DataFrame,
    window: str | object = "brain",
    per_class: int = GRID_PER_CLASS,
    seed: int = DEFAULT_SEED,
) -> list[GridTile]:
    """A few images of each class rendered through one window (images as they are).

    Args:
        index: Index frame.
        window: Window preset name, ``"C/W"`` or a ``Window`` for CT slices.
        per_class: Images per class.
        seed: Seed of the draw.

    Returns:
        Tiles grouped by class; unreadable files are skipped (the quality table lists them).
    """
    from hemo.io import read_scan
    from hemo.preprocess import to_display

    tiles = []
    for row in stratified_sample(index, per_class, seed).to_dict("records"):
        try:
            image = to_display(read_scan(str(row["path"])), window)
        except (HemoError, OSError) as exc:
            log.info("sample grid skips %s: %s", row["path"], exc)
            continue
        name = str(row["path"]).replace("\\", "/").rsplit("/", 1)[-1]
        tiles.append(GridTile(label=row["class"], caption=name, image=image))
    return tiles


@dataclass(frozen=True)
class LookalikeSample:
    """The look-alike pairs the EDA page shows, and how many groups they come from.

    Attributes:
        pairs: The most alike pair of each group shown, most alike first.
        groups: Look-alike groups in the dataset (at most ``len(pairs)`` of them shown).
    """

    pairs: list[LookalikePair]
    groups: int


@dataclass(frozen=True)
class LookalikePair:
    """Two images of a dataset that look alike (the EDA page shows them side by side).

    Attributes:
        first: The earlier image of the pair (index order).
        second: The later one.
        similarity: Correlation of their head crops (:mod:`hemo.lookalike`).
    """

    first: GridTile
    second: GridTile
    similarity: float


def lookalike_pairs(
    index: pd.DataFrame,
    window: str | object = "brain",
    max_pairs: int = LOOKALIKE_PAIRS,
) -> LookalikeSample:
    """The most alike pair of each look-alike group among images without a patient id.

    Args:
        index: Index frame.
        window: Window for CT slices.
        max_pairs: Most pairs returned (groups with the most alike pair first).

    Returns:
        Pairs, most alike first, and the number of groups; no pairs when every image has a
        patient id, or above :data:`hemo.datasets.index.LOOKALIKE_MAX_IMAGES` images without one.
    """
    from hemo.datasets.index import LOOKALIKE_MAX_IMAGES
    from hemo.io import read_scan
    from hemo.lookalike import find_lookalikes
    from hemo.preprocess import to_display

    own = index[index["patient_id"].isna()] if "patient_id" in index else index
    if not 2 <= len(own) <= LOOKALIKE_MAX_IMAGES:
        return LookalikeSample([], 0)
    paths = own["path"].astype(str).tolist()
    labels = _classes(own).tolist()
    found = find_lookalikes(paths)
    chosen, groups_seen = [], set()
    for a, b, score in found.pairs[["a", "b", "similarity"]].itertuples(index=False):
        if found.groups[a] in groups_seen:
            continue
        groups_seen.add(found.groups[a])
        chosen.append((int(a), int(b), float(score)))
        if len(chosen) == max_pairs:
            break

    def tile(i: int) -> GridTile:
        name = paths[i].replace("\\", "/").rsplit("/", 1)[-1]
        image = to_display(read_scan(paths[i]), window)
        return GridTile(label=labels[i], caption=f"{name} ({labels[i]})", image=image)

    _, members = np.unique(found.groups, return_counts=True)
    groups = int((members > 1).sum())  # groups of two images or more
    return LookalikeSample(
        [LookalikePair(tile(a), tile(b), score) for a, b, score in chosen], groups
    )


def missing_labels(index: pd.DataFrame) -> pd.DataFrame:
    """Rows of the index whose ``label_any`` is missing.

    Returns:
        Columns ``kind``, ``path``, ``reason`` (the quality table's columns).
    """
    labels = pd.to_numeric(index["label_any"], errors="coerce")
    rows = index.loc[labels.isna(), "path"].astype(str)
    return pd.DataFrame(
        {"kind": "missing_label", "path": rows.to_numpy(), "reason": "label_any is missing"},
        columns=["kind", "path", "reason"],
    )


def problem_counts(problems: pd.DataFrame, kinds: Sequence[str] = ()) -> pd.DataFrame:
    """Number of problems per kind (every kind in ``kinds`` listed, zero when absent).

    Args:
        problems: Frame with a ``kind`` column (the quality report).
        kinds: Kinds to list even when none was found.

    Returns:
        Columns ``kind``, ``files``.
    """
    counts = problems["kind"].value_counts() if len(problems) else pd.Series(dtype=int)
    names = list(dict.fromkeys([*kinds, *counts.index]))
    return pd.DataFrame({"kind": names, "files": [int(counts.get(k, 0)) for k in names]})


def concat_problems(*frames: pd.DataFrame) -> pd.DataFrame:
    """Problem tables joined, exact repeats dropped.

    Returns:
        Columns ``kind``, ``path``, ``reason``, sorted by kind then path.
    """
    columns = ["kind", "path", "reason"]
    parts = [f[columns] for f in frames if len(f)]
    if not parts:
        return pd.DataFrame(columns=columns)
    table = pd.concat(parts, ignore_index=True).drop_duplicates()
    return table.sort_values(["kind", "path"], kind="stable").reset_index(drop=True)
