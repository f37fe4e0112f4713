"""Detect a dataset's layout, build its index, save/load it, and report its data quality.

Every adapter turns one source layout into the same table (:mod:`hemo.datasets.schema`); this
module picks the adapter, assigns the patient-grouped, label-stratified, seeded split
(:func:`hemo.datasets.split.assign_splits`) and stores the result as Parquet with paths relative
to the Parquet file's folder, so a dataset folder can move as a whole.

Grouping for the split: ``patient_id``; where it is missing, ``study_uid``; where that is missing
too (Kaggle head-CT, plain image folders), look-alike images (:mod:`hemo.lookalike`: the same
picture at another size, neighbouring slices of one head) form a group and every other image is
its own. Above ``LOOKALIKE_MAX_IMAGES`` such images the look-alike check is skipped, with a
warning, because it reads every image.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemo.config import SUBTYPES
from hemo.datasets import cq500, folders, kaggle_head_ct, manifest, rsna
from hemo.datasets.schema import (
    BAD_LABEL,
    DUPLICATE,
    INDEX_COLUMNS,
    LOOKALIKE,
    MISSING_FILE,
    SPLITS,
    UNREADABLE,
    AdapterResult,
    Problem,
    normalize_frame,
    problems_frame,
)
from hemo.datasets.split import assign_splits
from hemo.errors import DatasetError
from hemo.lookalike import find_lookalikes

log = logging.getLogger(__name__)

#: File name of a dataset's saved index (``load_index(folder)`` uses it when present).
INDEX_FILE = "index.parquet"
#: Key of the index metadata in ``DataFrame.attrs`` (and so in the Parquet file).
ATTRS_KEY = "hemo"
PHANTOM = "phantom"
#: Layouts in detection order: the first whose ``looks_like`` holds wins.
LAYOUTS: tuple[str, ...] = (
    PHANTOM,
    rsna.LAYOUT,
    kaggle_head_ct.LAYOUT,
    cq500.LAYOUT,
    manifest.LAYOUT,
    folders.LAYOUT,
)
#: Threads hashing files for the duplicate check (hashlib releases the GIL on large buffers).
HASH_THREADS = 4
#: Most images without patient id that the split and the quality report compare for look-alikes
#: (every image is read: 140 Kaggle PNGs take 1.2 s on 2 cores, so 5000 about 45 s).
LOOKALIKE_MAX_IMAGES = 5000
HASH_BLOCK_BYTES = 1 << 20


def _index_phantom(root: Path, workers: int | None = None) -> AdapterResult:
    """hemo phantoms: the RSNA layout plus ``masks/``."""
    return rsna.index(root, workers=workers, source=PHANTOM)


_ADAPTERS: dict[str, Callable[..., AdapterResult]] = {
    PHANTOM: _index_phantom,
    rsna.LAYOUT: rsna.index,
    kaggle_head_ct.LAYOUT: kaggle_head_ct.index,
    cq500.LAYOUT: cq500.index,
    manifest.LAYOUT: manifest.index,
    folders.LAYOUT: folders.index,
}


@dataclass(frozen=True)
class IndexResult:
    """A built index and how it was made.

    Attributes:
        frame: The index table (absolute paths), with ``split`` assigned.
        layout: The layout used.
        root: The dataset folder (or manifest file).
        problems: Findings that did not stop the indexing (unreadable files, missing labels...).
    """

    frame: pd.DataFrame
    layout: str
    root: Path
    problems: tuple[Problem, ...]


def detect_layout(root: Path) -> str:
    """Name the layout of a dataset folder.

    Args:
        root: A dataset folder, or a manifest CSV.

    Returns:
        One of :data:`LAYOUTS`: ``phantom`` (RSNA layout with ``masks/``), ``rsna``,
        ``kaggle_head_ct``, ``cq500``, ``manifest`` or ``folders``.

    Raises:
        DatasetError: ``root`` does not exist or matches no layout (the message lists what each
            layout needs).
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError("no such file or folder", root)
    if root.is_dir() and next(root.iterdir(), None) is None:
        raise DatasetError("the folder is empty", root)
    if rsna.looks_like(root):
        return PHANTOM if rsna.has_masks(root) else rsna.LAYOUT
    for module in (kaggle_head_ct, cq500, manifest, folders):
        if module.looks_like(root):
            return module.LAYOUT
    for name, layout, wants in (
        ("labels.csv", "Kaggle head-CT", "'id, hemorrhage'"),
        ("manifest.csv", "manifest", "'path' and 'label_any'"),
    ):
        table = root / name if root.is_dir() else None
        if table is not None and table.is_file():
            # the file that names the layout is there: say what is wrong with it
            try:
                columns = list(pd.read_csv(table, nrows=0, skipinitialspace=True).columns)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise DatasetError(f"{name} cannot be read as a CSV table ({exc})", table) from exc
            raise DatasetError(
                f"{name} is here but its columns are {columns}: the {layout} layout expects "
                f"{wants}",
                table,
            )
    unlabelled = (
        "; scans without labels (a series folder, say) are for predicting (the Predict page, "
        "hemo predict), not a dataset: a manifest.csv with path,label_any beside them makes one"
        if root.is_dir()
        else ""
    )
    raise DatasetError(
        "unknown dataset layout: expected stage_2_train.csv + stage_2_train/ (RSNA, phantoms), "
        "labels.csv with 'id, hemorrhage' (Kaggle head-CT), reads.csv (CQ500), manifest.csv with "
        "path,label_any, or class folders named hemorrhage/positive/1/yes and normal/negative/0/no"
        + unlabelled,
        root,
    )


def _group_keys(frame: pd.DataFrame) -> pd.Series:
    """Split group per row: patient_id, else study_uid, else its look-alike group or the file."""
    keys = frame["patient_id"].fillna(frame["study_uid"]).fillna(frame["path"]).astype(str)
    own = (frame["patient_id"].isna() & frame["study_uid"].isna()).to_numpy()
    if own.sum() < 2:
        return keys
    if own.sum() > LOOKALIKE_MAX_IMAGES:
        log.warning(
            "%d images without patient or study id: too many for the look-alike check (at most "
            "%d), so copies of one picture or neighbouring slices of one head may land in "
            "different splits; give the set a patient_id column (manifest) to group them",
            int(own.sum()),
            LOOKALIKE_MAX_IMAGES,
        )
        return keys
    found = find_lookalikes(frame.loc[own, "path"].astype(str).tolist())
    grouped = np.flatnonzero(np.bincount(found.groups)[found.groups] > 1)
    rows = np.flatnonzero(own)[grouped]
    keys.iloc[rows] = [f"lookalike-{g}" for g in found.groups[grouped]]
    if len(rows):
        log.info("look-alike images kept in one split: %d images", len(rows))
    return keys


#: Index columns that must agree between rows listing the same file.
_AGREEING_COLUMNS = ("label_any", *SUBTYPES, "patient_id", "study_uid", "series_uid", "split")
#: Suffixes of image rows checked for truncation (:func:`hemo.images.truncation_reason`).
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_fault(path: str) -> str | None:
    """Why an image row's file cannot be read, from its first and last bytes (no decoding):
    bytes of no scan kind under an image name (a text or an HTML error page saved as .png), or
    a cut-short PNG/JPEG (:func:`hemo.images.truncation_reason`); ``None`` when it looks whole.

    Raises:
        OSError: The file cannot be read.
    """
    from hemo.images import SNIFF_BYTES, sniff_kind, truncation_reason

    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if not head:
        return "the file is empty"
    if sniff_kind(head) is None:
        return (
            f"named {Path(path).suffix} but its bytes are not a PNG, JPEG, TIFF or DICOM file "
            "(the kind is read from the bytes)"
        )
    return truncation_reason(path)


def screen_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[Problem]]:
    """One row per file, and no cut-short image: what every layout's rows go through.

    A file listed several times (a manifest can) is indexed once when its rows agree and left
    out when they do not (two labels, two patients, two splits); a PNG or JPEG whose end is
    missing, or a file under such a name whose bytes are no image, is left out as unreadable
    (:func:`_image_fault`; a full decode would cost seconds per thousand images; a truncated
    copy is the usual damage).

    Returns:
        The rows kept (order unchanged) and the problems, each naming the file.
    """
    problems: list[Problem] = []
    columns = [c for c in _AGREEING_COLUMNS if c in frame.columns]
    counts = frame["path"].value_counts()
    drop: set[str] = set()
    for path in counts.index[counts > 1]:
        rows = frame.loc[frame["path"] == path, columns].astype(object).where(pd.notna, None)
        n = int(counts[path])
        if len({tuple(r) for r in rows.itertuples(index=False)}) == 1:
            problems.append(Problem(DUPLICATE, path, f"listed {n} times; indexed once"))
        else:
            differ = [c for c in columns if rows[c].nunique(dropna=False) > 1]
            problems.append(
                Problem(
                    BAD_LABEL,
                    path,
                    f"listed {n} times with different {', '.join(differ)}; left out",
                )
            )
            drop.add(path)
    keep = ~frame["path"].isin(drop) & ~frame["path"].duplicated()
    for path in frame.loc[keep, "path"]:
        if Path(path).suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        try:
            reason = _image_fault(path)
        except OSError as exc:
            reason = f"cannot read the file: {exc.strerror or exc}"
        if reason is not None:
            problems.append(Problem(UNREADABLE, path, reason))
            keep &= frame["path"] != path
    for problem in problems:
        log.warning("%s: %s: %s", problem.kind, problem.path, problem.reason)
    return frame[keep], problems


def index_dataset(
    root: Path,
    layout: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    workers: int | None = None,
) -> IndexResult:
    """Build a dataset's index and keep the problems met on the way.

    Args:
        root: A dataset folder, or a manifest CSV.
        layout: One of :data:`LAYOUTS`; ``None`` detects it.
        seed: Seed of the split (same seed, same split).
        val_fraction: Share of groups in ``val``.
        test_fraction: Share of groups in ``test``.
        workers: Processes reading DICOM headers (``None``: every core).

    Returns:
        The index (``split`` assigned by patient/study group, stratified by ``label_any``) with
        its layout and problems; ``frame.attrs["hemo"]`` carries layout and problems too.

    Raises:
        DatasetError: unknown layout, malformed label files, or no image could be indexed.
    """
    root = Path(root).resolve()
    chosen = detect_layout(root) if layout is None else layout
    if chosen not in _ADAPTERS:
        raise DatasetError(f"unknown layout {chosen!r}: use one of {', '.join(LAYOUTS)}", root)
    result = _ADAPTERS[chosen](root, workers=workers)
    frame, screened = screen_rows(result.frame)
    result = AdapterResult(frame, (*result.problems, *screened))
    if result.frame.empty:
        first = f"; first problem: {result.problems[0].reason}" if result.problems else ""
        raise DatasetError(
            f"no image could be indexed as {chosen} ({len(result.problems)} problems{first})", root
        )
    if frame["split"].isna().any():
        grouped = frame.drop(columns="split").assign(_group=_group_keys(frame))
        split = assign_splits(
            grouped,
            seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            group_col="_group",
            stratify_col="label_any",
        )
        frame = normalize_frame(split.drop(columns="_group"))
    frame.attrs[ATTRS_KEY] = {
        "layout": chosen,
        "root": str(root),
        "seed": seed,
        "problems": [p.to_dict() for p in result.problems],
    }
    log.info("indexed %d images of %s as %s", len(frame), root, chosen)
    return IndexResult(frame, chosen, root, result.problems)


def build_index(
    root: Path,
    layout: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    workers: int | None = None,
) -> pd.DataFrame:
    """Build a dataset's index table (see :func:`index_dataset`, which also returns problems).

    Args:
        root: A dataset folder, or a manifest CSV.
        layout: One of :data:`LAYOUTS`; ``None`` detects it.
        seed: Seed of the split.
        val_fraction: Share of groups in ``val``.
        test_fraction: Share of groups in ``test``.
        workers: Processes reading DICOM headers (``None``: every core).

    Returns:
        The index table with absolute paths.

    Raises:
        DatasetError: unknown layout, malformed label files, or no image could be indexed.
    """
    return index_dataset(root, layout, seed, val_fraction, test_fraction, workers).frame


def check_index_path(path: str | os.PathLike) -> Path:
    """Refuse a place an index cannot be written to; create its folder when missing.

    Cheap, so that ``hemo index --out`` fails before any header is read.

    Args:
        path: The ``.parquet`` file to write.

    Returns:
        The path, resolved.

    Raises:
        DatasetError: The path is a folder, not named ``.parquet``, or lies under a file, or its
            folder cannot be created.
    """
    resolved = Path(path).resolve()
    if resolved.is_dir():
        raise DatasetError("is a folder; give the FILE.parquet to write the index to", path)
    if resolved.suffix.lower() != ".parquet":
        # written as Parquet whatever its name, it would then be read as a label table
        raise DatasetError("an index is a Parquet file: name it FILE.parquet", path)
    nearest = next(p for p in resolved.parents if p.exists())
    if not nearest.is_dir():
        raise DatasetError(f"{nearest} is a file, not a folder", path)
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"cannot create its folder {resolved.parent}: {_os_reason(exc)}", path
        ) from exc
    return resolved


def _os_reason(exc: OSError) -> str:
    """The short reason of an OS error ("Permission denied"), also for pyarrow's long ones."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def save_index(df: pd.DataFrame, path: Path) -> None:
    """Write an index as Parquet, paths relative to the file's folder, atomically.

    Args:
        df: An index table (absolute or relative paths). Not modified.
        path: The ``.parquet`` file to write; its folder is created when missing.

    Raises:
        DatasetError: The file cannot be written there (a folder, a read-only or missing
            place); no temporary file is left behind.
    """
    given = path
    path = check_index_path(path)
    base = path.parent

    def relative(value: object) -> object:
        if pd.isna(value):
            return None
        return Path(os.path.relpath(Path(str(value)).resolve(), base)).as_posix()

    out = df.copy()
    out["path"] = out["path"].map(relative)
    if "mask_path" in out:
        out["mask_path"] = out["mask_path"].map(relative).astype("string")
    out.attrs = {ATTRS_KEY: dict(df.attrs.get(ATTRS_KEY, {}))}
    tmp = path.with_name(path.name + ".tmp")
    try:
        out.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp.is_file():
            tmp.unlink()
        raise DatasetError(f"cannot write the index there: {_os_reason(exc)}", given) from exc


def _read_parquet(path: Path) -> pd.DataFrame:
    """Read a saved index: validate columns and make paths absolute."""
    try:
        raw = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read the index: {exc}", path) from exc
    missing = [c for c in INDEX_COLUMNS if c not in raw.columns]
    if missing:
        raise DatasetError(f"not a hemo index: missing columns {missing}", path)
    base = path.parent

    def absolute(value: object) -> object:
        return None if pd.isna(value) else str((base / str(value)).resolve())

    frame = raw.assign(path=raw["path"].map(absolute))
    if "mask_path" in frame:
        frame = frame.assign(mask_path=frame["mask_path"].map(absolute))
    bad = ~frame["split"].isin(SPLITS)
    if bad.any():
        raise DatasetError(
            f"split must be one of {', '.join(SPLITS)}, got {frame['split'][bad].iloc[0]!r}", path
        )
    for column, ok in (
        ("path", frame["path"].notna()),
        ("label_any", pd.to_numeric(frame["label_any"], errors="coerce").isin((0, 1))),
    ):
        if not ok.all():
            first = int(np.flatnonzero(~ok.to_numpy())[0])
            value = raw[column].iloc[first]
            value = value.item() if isinstance(value, np.generic) else value
            raise DatasetError(
                f"{column} must be {'a file' if column == 'path' else '0 or 1'} in every row: "
                f"{int((~ok).sum())} row(s) are not (first: row {first}, "
                f"{value!r}); rebuild it with hemo index",
                path,
            )
    out = normalize_frame(frame)
    out.attrs = dict(raw.attrs)
    return out


def unreadable_at_indexing(frame: pd.DataFrame) -> list[str]:
    """Paths of files the index left out because they could not be read (as its problems
    recorded them in ``frame.attrs``: an index built from a folder, or saved with them); these
    rows are in no split, so training and evaluation never meet them."""
    problems = (frame.attrs.get(ATTRS_KEY) or {}).get("problems") or []
    return [str(p["path"]) for p in problems if p.get("kind") == UNREADABLE]


def load_index(path: Path) -> pd.DataFrame:
    """Load an index from a Parquet file, or from a dataset folder.

    Args:
        path: An ``index.parquet``; a dataset folder (its ``index.parquet`` when present, else
            built on the fly with default settings); or a manifest CSV.

    Returns:
        The index table with absolute paths.

    Raises:
        DatasetError: the file is not a hemo index, or the folder matches no layout.
    """
    path = Path(path).resolve()
    if path.is_dir() and (path / INDEX_FILE).is_file():
        return _read_parquet(path / INDEX_FILE)
    if path.is_file() and path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    return build_index(path)


def _sha1(path: str) -> str | None:
    """sha1 of a file's bytes (``None`` when it cannot be read)."""
    digest = hashlib.sha1(usedforsecurity=False)
    try:
        with open(path, "rb") as handle:
            while block := handle.read(HASH_BLOCK_BYTES):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _differences(frame: pd.DataFrame, i: int, j: int) -> list[str]:
    """What rows ``i`` and ``j`` disagree on that matters for a copy: label, split."""
    notes = []
    if frame["label_any"].iat[i] != frame["label_any"].iat[j]:
        notes.append("with a different label")
    if frame["split"].iat[i] != frame["split"].iat[j]:
        notes.append(f"in another split ({frame['split'].iat[i]} vs {frame['split'].iat[j]})")
    return notes


def _duplicates(frame: pd.DataFrame, hashes: list[str | None]) -> list[Problem]:
    """Rows whose file has the same bytes as an earlier row's (first one not listed)."""
    paths = frame["path"].astype(str).tolist()
    first_of: dict[str, int] = {}
    problems = []
    for i, digest in enumerate(hashes):
        if digest is None:
            continue
        if digest not in first_of:
            first_of[digest] = i
            continue
        j = first_of[digest]
        reason = f"same bytes as {paths[j]} (sha1 {digest[:12]})"
        problems.append(
            Problem(DUPLICATE, paths[i], " ".join([reason, *_differences(frame, i, j)]))
        )
    return problems


def _lookalikes(frame: pd.DataFrame, hashes: list[str | None]) -> list[Problem]:
    """Rows without a patient id whose image looks like an earlier row's (:mod:`hemo.lookalike`).

    Each group of look-alikes is listed once per member after its first, against the earlier
    member it is most like; a byte-identical copy is left to the duplicate check. Skipped, with
    a log line, above ``LOOKALIKE_MAX_IMAGES`` images.
    """
    own = frame["patient_id"].isna().to_numpy()
    if own.sum() < 2:
        return []
    if own.sum() > LOOKALIKE_MAX_IMAGES:
        log.info(
            "look-alike check skipped: %d images (at most %d)", own.sum(), LOOKALIKE_MAX_IMAGES
        )
        return []
    rows = np.flatnonzero(own)
    paths = frame["path"].astype(str).tolist()
    found = find_lookalikes([paths[r] for r in rows])
    closest: dict[int, tuple[int, float]] = {}  # later member -> (earlier member, correlation)
    for a, b, score in found.pairs[["a", "b", "similarity"]].itertuples(index=False):
        closest.setdefault(int(b), (int(a), float(score)))
    problems = []
    for member, (partner, score) in sorted(closest.items()):
        i, j = int(rows[member]), int(rows[partner])
        earlier = [
            hashes[int(r)] for r in rows[:member][found.groups[:member] == found.groups[member]]
        ]
        if hashes[i] is not None and hashes[i] in earlier:
            continue
        reason = (
            f"looks like {paths[j]} (correlation {score:.3f} of the head crops): the same "
            "picture at another size or crop, or a neighbouring slice of the same head; "
            "cross-validation and the split keep them together"
        )
        problems.append(
            Problem(LOOKALIKE, paths[i], " ".join([reason, *_differences(frame, i, j)]))
        )
    return problems


def quality_report(root_or_index: Path | str | pd.DataFrame) -> pd.DataFrame:
    """Data-quality findings of a dataset, for the EDA page and ``hemo index``.

    Lists what the adapter met while indexing (unreadable files with the reason, label rows
    without image, images without label), indexed files that no longer exist, files whose
    bytes duplicate another's (sha1), and, in sets without patient ids, images that look like
    another (:mod:`hemo.lookalike`), noting when the copies disagree on label or split.

    Args:
        root_or_index: A dataset folder, an ``index.parquet``, a manifest CSV, or an index frame
            (its ``attrs["hemo"]["problems"]`` are included when present).

    Returns:
        A new frame with columns ``kind``, ``path``, ``reason`` (empty when all is well).

    Raises:
        DatasetError: a path that is neither an index nor a recognisable dataset.
    """
    if isinstance(root_or_index, pd.DataFrame):
        frame = root_or_index
    else:
        frame = load_index(Path(root_or_index))
    meta: dict[str, Any] = frame.attrs.get(ATTRS_KEY, {})
    problems = [Problem(**p) for p in meta.get("problems", [])]
    exists = frame["path"].map(lambda p: Path(str(p)).is_file())
    problems.extend(
        Problem(MISSING_FILE, str(p), "in the index but the file is gone")
        for p in frame.loc[~exists, "path"]
    )
    present = frame[exists]
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        hashes = list(pool.map(_sha1, present["path"].astype(str).tolist()))
    problems.extend(_duplicates(present, hashes))
    problems.extend(_lookalikes(present, hashes))
    return problems_frame(problems)


def summarize(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts per label and split of an index (what ``hemo index`` prints).

    Args:
        frame: An index table. Not modified.

    Returns:
        ``{"total", "labels": {column: {"positive", "negative", "unknown"}},
        "splits": {split: {"total", "positive"}}}`` with plain ints.
    """
    labels = {}
    for column in ("label_any", *SUBTYPES):
        values = frame[column]
        labels[column] = {
            "positive": int((values == 1).sum()),
            "negative": int((values == 0).sum()),
            "unknown": int(values.isna().sum()),
        }
    splits = {
        split: {
            "total": int((frame["split"] == split).sum()),
            "positive": int(((frame["split"] == split) & (frame["label_any"] == 1)).sum()),
        }
        for split in SPLITS
    }
    return {"total": len(frame), "labels": labels, "splits": splits}
