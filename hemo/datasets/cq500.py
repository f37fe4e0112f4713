"""Adapter for CQ500 (qure.ai, CC BY-NC-SA 4.0).

Layout::

    ROOT/reads.csv                   name, Category, R1:ICH, R1:IPH, ..., R3:SAH, ...
    ROOT/**/CQ500-CT-<n>/**/*.dcm    one folder per scan (any depth; "CQ500CT0 CQ500CT0" too),
                                     holding one or more series at any depth below it

Labels are the majority vote (at least 2 of the 3 readers R1, R2, R3) per scan for ``ICH``
(-> ``label_any``) and the subtypes ``IPH`` -> intraparenchymal, ``IVH`` -> intraventricular,
``SDH`` -> subdural, ``EDH`` -> epidural, ``SAH`` -> subarachnoid.

**Labels are study-level.** CQ500 says whether a scan shows a bleed, not which slices do: every
slice of a scan gets the scan's labels, so ``label_any`` and the subtype columns of a CQ500 row
mean "this slice belongs to a positive scan", not "this slice shows blood". Use CQ500 for
study-level evaluation (max or mean over slices), not as slice-level ground truth.

Rows are ordered by scan, series and ``slice_z`` (from ImagePositionPatient, not file names).
A scan folder without a row in reads.csv (``missing_label``) and unreadable files are reported.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from hemo.datasets import headers
from hemo.datasets.schema import MISSING_LABEL, UNREADABLE, AdapterResult, Problem, make_frame
from hemo.errors import DatasetError

log = logging.getLogger(__name__)

LAYOUT = "cq500"
READS_FILE = "reads.csv"
READERS: tuple[str, ...] = ("R1", "R2", "R3")
#: Readers that must agree for a positive label.
MAJORITY = 2
#: CQ500 finding code -> index column.
FINDINGS: dict[str, str] = {
    "ICH": "label_any",
    "IPH": "intraparenchymal",
    "IVH": "intraventricular",
    "SDH": "subdural",
    "EDH": "epidural",
    "SAH": "subarachnoid",
}
SCAN_PATTERN = re.compile(r"CQ500[-_ ]?CT[-_ ]?(\d+)(?!\d)", re.IGNORECASE)
#: Suffixes taken as DICOM inside a scan folder ("" = no extension).
DICOM_SUFFIXES = (".dcm", ".dicom", "")


def scan_name(text: str) -> str | None:
    """Canonical scan name (``CQ500-CT-<n>``) of a folder or reads.csv name, else ``None``."""
    match = SCAN_PATTERN.match(text.strip())
    return f"CQ500-CT-{int(match.group(1))}" if match else None


def looks_like(root: Path) -> bool:
    """Whether ``root`` holds a CQ500 ``reads.csv``."""
    reads = root / READS_FILE
    if not reads.is_file():
        return False
    try:
        header = reads.open(encoding="utf-8", errors="replace").readline()
    except OSError:
        return False
    names = {name.strip() for name in header.split(",")}
    return "name" in names and "R1:ICH" in names


def majority_labels(reads_path: Path) -> pd.DataFrame:
    """Majority-vote labels per scan.

    Args:
        reads_path: CQ500's ``reads.csv``.

    Returns:
        A frame indexed by canonical scan name with int8 columns ``label_any`` and the five
        subtypes, each 1 when at least :data:`MAJORITY` of the readers marked it.

    Raises:
        DatasetError: the file cannot be read or lacks a reader column.
    """
    try:
        reads = pd.read_csv(reads_path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read the reads: {exc}", reads_path) from exc
    reads = reads.rename(columns=lambda c: str(c).strip())
    needed = ["name"] + [f"{r}:{code}" for code in FINDINGS for r in READERS]
    missing = [c for c in needed if c not in reads.columns]
    if missing:
        raise DatasetError(f"missing columns {missing} (expected CQ500 reads.csv)", reads_path)
    names = reads["name"].astype(str).map(scan_name)
    votes = {
        column: (
            sum(pd.to_numeric(reads[f"{r}:{code}"], errors="coerce").fillna(0) for r in READERS)
            >= MAJORITY
        ).astype("int8")
        for code, column in FINDINGS.items()
    }
    labels = pd.DataFrame(votes).set_axis(names.to_list())
    return labels[labels.index.notna()]


def find_scans(root: Path) -> dict[str, list[Path]]:
    """Map each scan folder under ``root`` (any depth) to its DICOM candidates (sorted).

    Args:
        root: The dataset folder.

    Returns:
        ``{scan name: [files]}`` for folders whose name starts like ``CQ500-CT-<n>``.
    """
    scans: dict[str, list[Path]] = {}
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        for dirname in list(dirnames):
            name = scan_name(dirname)
            if name is None:
                continue
            dirnames.remove(dirname)
            files = [
                p
                for p in sorted((Path(dirpath) / dirname).rglob("*"))
                if p.is_file() and p.suffix.lower() in DICOM_SUFFIXES and not p.name.startswith(".")
            ]
            scans.setdefault(name, []).extend(files)
    return scans


def index(root: Path, workers: int | None = None) -> AdapterResult:
    """Index a CQ500 folder.

    Args:
        root: The folder holding ``reads.csv`` and the scan folders.
        workers: Processes reading headers (``None``: every core).

    Returns:
        One row per readable slice of every labelled scan, ordered by scan, series and slice_z,
        and the problems met.

    Raises:
        DatasetError: reads.csv is missing or malformed.
    """
    reads_path = root / READS_FILE
    if not reads_path.is_file():
        raise DatasetError(f"no {READS_FILE} (CQ500 reader labels)", root)
    labels = majority_labels(reads_path)
    scans = find_scans(root)
    problems: list[Problem] = []
    rows = []
    for name, files in sorted(scans.items()):
        if name not in labels.index:
            problems.append(Problem(MISSING_LABEL, str(root / name), f"{name} not in {READS_FILE}"))
            continue
        fields = headers.read_many(files, workers=workers)
        keys = Counter(f.patient_id for f in fields if f.error is None and f.patient_id)
        patient = keys.most_common(1)[0][0] if keys else name
        label = labels.loc[name]
        for header in fields:
            if header.error is not None:
                problems.append(Problem(UNREADABLE, header.path, header.error))
                continue
            rows.append(
                {
                    "path": str(Path(header.path).resolve()),
                    **{column: int(label[column]) for column in FINDINGS.values()},
                    "patient_id": patient,
                    "study_uid": header.study_uid,
                    "series_uid": header.series_uid,
                    "slice_z": header.slice_z,
                    "_scan": name,
                }
            )
    log.debug("%d scans in %s, %d of %d in reads.csv", len(scans), root, len(rows), len(labels))
    for problem in problems:
        log.warning("%s: %s: %s", problem.kind, problem.path, problem.reason)
    order = pd.DataFrame(rows, columns=["_scan", "series_uid", "slice_z", "path"])
    order = order.sort_values(["_scan", "series_uid", "slice_z", "path"], na_position="last")
    return AdapterResult(make_frame([rows[i] for i in order.index], LAYOUT), tuple(problems))
