"""Read the grouping fields of many DICOM headers in parallel (no pixel data).

Adapters need the patient pseudonym, study/series UIDs and the slice position of every file; a
header read through :func:`hemo.dicom.read_dicom_header` stops before PixelData (7FE0,0010), so
RSNA's ~750k files index in minutes, fanned out over the cores with a progress bar on stderr.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hemo.errors import HemoError
from hemo.progress import progress

log = logging.getLogger(__name__)

#: Below this many files the headers are read in-process (a pool costs more than it saves).
PARALLEL_MIN_FILES = 256
#: Files per task handed to a worker process.
CHUNK_FILES = 64


@dataclass(frozen=True)
class HeaderFields:
    """The fields of one DICOM header an index needs, or why it could not be read.

    Attributes:
        path: The file.
        patient_id: Pseudonym of PatientID (0010,0020) from :mod:`hemo.dicom`, never the ID itself.
        study_uid: StudyInstanceUID (0020,000D).
        series_uid: SeriesInstanceUID (0020,000E).
        slice_z: Slice position along the slice normal in mm (from ImagePositionPatient).
        error: Why the header could not be read; ``None`` when it was.
    """

    path: str
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    slice_z: float | None = None
    error: str | None = None


def read_fields(path: str) -> HeaderFields:
    """Read one header's grouping fields; a bad file gives ``error`` instead of raising.

    Args:
        path: A DICOM file (any extension).

    Returns:
        The fields, or a record whose ``error`` says why the file cannot be indexed (not DICOM,
        a header without image size: nothing to index, or several frames: a label row is one
        slice).
    """
    from hemo.dicom import read_dicom_header

    try:
        header = read_dicom_header(path)
    except HemoError as exc:
        return HeaderFields(path=path, error=exc.reason)
    except OSError as exc:
        return HeaderFields(path=path, error=f"cannot read the file: {exc.strerror or exc}")
    if not getattr(header, "rows", 0) or not getattr(header, "columns", 0):
        return HeaderFields(
            path=path,
            error="(0028,0010) Rows / (0028,0011) Columns missing or 0: the file holds no image",
        )
    frames = header.metadata.get("NumberOfFrames")
    if isinstance(frames, int) and frames > 1:
        return HeaderFields(
            path=path,
            error=f"(0028,0008) Number of Frames is {frames}: a dataset index holds single-frame "
            "slices (one label row per file); hemo predict, explain and inspect read every frame",
        )
    return HeaderFields(
        path=path,
        patient_id=getattr(header, "patient_key", None),
        study_uid=getattr(header, "study_uid", None),
        series_uid=getattr(header, "series_uid", None),
        slice_z=getattr(header, "slice_z_mm", None),
    )


def read_many(paths: Sequence[str | Path], workers: int | None = None) -> list[HeaderFields]:
    """Read the headers of ``paths`` in order, in parallel when there are many.

    Args:
        paths: DICOM files.
        workers: Worker processes; ``None`` uses every core, ``1`` reads in this process.

    Returns:
        One :class:`HeaderFields` per path, in the order of ``paths``.
    """
    names = [str(p) for p in paths]
    n_workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    with progress(len(names), "headers", "file") as advance:
        if n_workers == 1 or len(names) < PARALLEL_MIN_FILES:
            return [_counted(read_fields(name), advance) for name in names]
        log.debug("reading %d headers with %d processes", len(names), n_workers)
        with ProcessPoolExecutor(max_workers=n_workers) as pool:
            found = pool.map(read_fields, names, chunksize=CHUNK_FILES)
            return [_counted(fields, advance) for fields in found]


def _counted(fields: HeaderFields, advance: Callable[[int], object]) -> HeaderFields:
    advance(1)
    return fields
