"""Adapter for a folder per class.

Layout::

    ROOT/<positive name>/**/<file>     hemorrhage
    ROOT/<negative name>/**/<file>     no hemorrhage

Accepted class folder names (case-insensitive):

* positive: ``hemorrhage``, ``haemorrhage``, ``positive``, ``1``, ``yes``
* negative: ``normal``, ``negative``, ``0``, ``no``

Files may be PNG, JPEG, TIFF or DICOM (with or without extension); the kind is sniffed from the
first bytes, not the name. Other files (and hidden ones) are reported as ``unsupported``; other
folders at the top level are ignored with a warning. DICOM headers give patient, study, series
and slice position; an image file has none, so each image is its own group for splitting.
Subtype columns are missing (a folder per class only says "any").
"""

from __future__ import annotations

import logging
from pathlib import Path

from hemo.datasets import headers
from hemo.datasets.schema import UNREADABLE, UNSUPPORTED, AdapterResult, Problem, make_frame
from hemo.errors import DatasetError

log = logging.getLogger(__name__)

LAYOUT = "folders"
POSITIVE_NAMES: frozenset[str] = frozenset({"hemorrhage", "haemorrhage", "positive", "1", "yes"})
NEGATIVE_NAMES: frozenset[str] = frozenset({"normal", "negative", "0", "no"})
#: Kinds (from :func:`hemo.images.sniff_kind`) an index row may point to.
SUPPORTED_KINDS: frozenset[str] = frozenset({"dicom", "png", "jpeg", "tiff"})
#: Why a NIfTI volume in a class folder is not indexed (an index row is one slice).
NIFTI_REASON = (
    "a NIfTI volume: an index row is one slice; `hemo convert` turns it into one PNG per slice "
    "(or predict it as it is)"
)
#: Suffixes that promise a scan: such a file that is none is unreadable, not merely unsupported.
SCAN_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


def class_of(folder_name: str) -> int | None:
    """1 for a positive class folder name, 0 for a negative one, else ``None``."""
    name = folder_name.strip().lower()
    if name in POSITIVE_NAMES:
        return 1
    if name in NEGATIVE_NAMES:
        return 0
    return None


def class_dirs(root: Path) -> dict[Path, int]:
    """The class folders directly under ``root`` and their label."""
    if not root.is_dir():
        return {}
    found = {}
    for child in sorted(root.iterdir()):
        label = class_of(child.name) if child.is_dir() else None
        if label is not None:
            found[child] = label
    return found


def looks_like(root: Path) -> bool:
    """Whether ``root`` has at least one class folder (see the accepted names above)."""
    return bool(class_dirs(root))


def sniff(path: Path) -> str | None:
    """The kind of ``path`` from its first bytes (``None`` when unknown or unreadable)."""
    from hemo.images import SNIFF_BYTES, sniff_kind

    try:
        with path.open("rb") as handle:
            return sniff_kind(handle.read(SNIFF_BYTES))
    except OSError:
        return None


def index(root: Path, workers: int | None = None) -> AdapterResult:
    """Index a folder-per-class tree.

    Args:
        root: The folder holding the class folders.
        workers: Processes reading DICOM headers (``None``: every core).

    Returns:
        One row per supported file, and the problems met.

    Raises:
        DatasetError: ``root`` has no class folder.
    """
    dirs = class_dirs(root)
    if not dirs:
        raise DatasetError(
            "no class folder: name them one of "
            f"{', '.join(sorted(POSITIVE_NAMES))} (hemorrhage) or "
            f"{', '.join(sorted(NEGATIVE_NAMES))} (normal)",
            root,
        )
    for child in sorted(root.iterdir()):
        if child.is_dir() and child not in dirs and not child.name.startswith("."):
            log.warning("%s: not a class folder name, ignored", child)
    problems: list[Problem] = []
    images: list[tuple[Path, int]] = []
    dicoms: list[tuple[Path, int]] = []
    for folder, label in dirs.items():
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            kind = None if path.name.startswith(".") else sniff(path)
            if kind == "dicom":
                dicoms.append((path, label))
            elif kind in SUPPORTED_KINDS:
                images.append((path, label))
            elif kind == "nifti" or path.name.lower().endswith(".nii.gz"):
                problems.append(Problem(UNSUPPORTED, str(path), NIFTI_REASON))
            elif path.suffix.lower() in SCAN_SUFFIXES:
                problems.append(
                    Problem(
                        UNREADABLE,
                        str(path),
                        "named like a scan but not a DICOM, PNG, JPEG or TIFF",
                    )
                )
            else:
                problems.append(Problem(UNSUPPORTED, str(path), "not a DICOM, PNG, JPEG or TIFF"))
    rows = [{"path": str(p.resolve()), "label_any": label} for p, label in images]
    fields = headers.read_many([p for p, _ in dicoms], workers=workers)
    for (path, label), header in zip(dicoms, fields, strict=True):
        if header.error is not None:
            problems.append(Problem(UNREADABLE, str(path), header.error))
            continue
        rows.append(
            {
                "path": str(path.resolve()),
                "label_any": label,
                "patient_id": header.patient_id,
                "study_uid": header.study_uid,
                "series_uid": header.series_uid,
                "slice_z": header.slice_z,
            }
        )
    for problem in problems:
        log.warning("%s: %s: %s", problem.kind, problem.path, problem.reason)
    rows.sort(key=lambda row: row["path"])
    return AdapterResult(make_frame(rows, LAYOUT), tuple(problems))
