"""Adapter for the RSNA Intracranial Hemorrhage Detection (2019) layout, and hemo's phantoms.

Layout (as the competition download unpacks; stage 1 names accepted too)::

    ROOT/stage_2_train.csv        ID,Label   rows "ID_<id>_<subtype>,0|1" for any + five subtypes
    ROOT/stage_2_train/ID_<id>.dcm
    ROOT/masks/ID_<id>.png        optional (phantoms): uint8 bitmask, bit i = SUBTYPES[i]

The label CSV is pivoted to one row per image (``any`` -> ``label_any``). Patient, study, series
and slice position come from each file's DICOM header (pixels are not read), in parallel. The
patient column holds :mod:`hemo.dicom`'s pseudonym of PatientID, never the ID itself.

Not fatal, reported as problems: a label row without a file (``missing_image``), a file without
label rows (``missing_label``), a file whose header cannot be read (``unreadable``, with reason).
The real stage-2 CSV repeats some rows; exact repeats are dropped, contradicting ones reported.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from hemo.config import SUBTYPES
from hemo.datasets import headers
from hemo.datasets.schema import (
    BAD_LABEL,
    MISSING_IMAGE,
    MISSING_LABEL,
    UNREADABLE,
    AdapterResult,
    Problem,
    make_frame,
)
from hemo.errors import DatasetError

log = logging.getLogger(__name__)

LAYOUT = "rsna"
#: (label CSV, image folder) pairs, most recent stage first.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stage_2_train.csv", ("stage_2_train", "stage_2_train_images")),
    ("stage_1_train.csv", ("stage_1_train", "stage_1_train_images")),
)
MASK_DIR = "masks"
MASK_SUFFIX = ".png"
DICOM_SUFFIX = ".dcm"
#: RSNA label names: ``any`` then the subtypes.
RSNA_CLASSES: tuple[str, ...] = ("any", *SUBTYPES)


def find_stage(root: Path) -> tuple[Path, Path] | None:
    """The (label CSV, image folder) of ``root``, or ``None`` when it is not an RSNA layout."""
    for csv_name, dir_names in STAGES:
        csv_path = root / csv_name
        if not csv_path.is_file():
            continue
        for dir_name in dir_names:
            if (root / dir_name).is_dir():
                return csv_path, root / dir_name
    return None


def looks_like(root: Path) -> bool:
    """Whether ``root`` has an RSNA label CSV beside its image folder."""
    return find_stage(root) is not None


def has_masks(root: Path) -> bool:
    """Whether ``root`` has the phantom ``masks/`` folder."""
    return (root / MASK_DIR).is_dir()


def read_labels(csv_path: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """Pivot the ``ID,Label`` rows to one row per image.

    Args:
        csv_path: ``stage_2_train.csv``.

    Returns:
        A frame indexed by image id (``ID_<id>``) with one int column per RSNA class
        (``any`` and the subtypes; missing where a row is absent), and problems for image ids
        whose rows contradict each other (left out).

    Raises:
        DatasetError: the CSV lacks ``ID``/``Label`` or an ID does not end in a known class.
    """
    try:
        raw = pd.read_csv(csv_path, dtype={"ID": str}, skipinitialspace=True)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read the labels: {exc}", csv_path) from exc
    raw = raw.rename(columns=lambda c: str(c).strip())
    if not {"ID", "Label"} <= set(raw.columns):
        raise DatasetError(f"expected columns 'ID,Label', found {list(raw.columns)}", csv_path)
    parts = raw["ID"].astype(str).str.rsplit("_", n=1, expand=True)
    cls = parts[1] if parts.shape[1] == 2 else pd.Series(None, index=raw.index, dtype=object)
    known = cls.isin(RSNA_CLASSES)
    if not known.all():
        raise DatasetError(
            f"ID {raw.loc[~known, 'ID'].iloc[0]!r} does not end in _<class> with a class in "
            f"{', '.join(RSNA_CLASSES)}",
            csv_path,
        )
    labels = pd.DataFrame(
        {"image": parts[0], "cls": cls, "value": pd.to_numeric(raw["Label"], errors="coerce")}
    ).drop_duplicates()
    problems: list[Problem] = []
    conflicts = labels.duplicated(["image", "cls"], keep=False) | ~labels["value"].isin([0, 1])
    for image in sorted(set(labels.loc[conflicts, "image"])):
        problems.append(
            Problem(BAD_LABEL, f"{csv_path}:{image}", "label rows contradict or are not 0/1")
        )
    labels = labels[~labels["image"].isin(set(labels.loc[conflicts, "image"]))]
    wide = labels.pivot(index="image", columns="cls", values="value")
    wide = wide.reindex(columns=list(RSNA_CLASSES))
    no_any = wide["any"].isna()
    for image in wide.index[no_any]:
        problems.append(Problem(BAD_LABEL, f"{csv_path}:{image}", "no 'any' label row"))
    return wide[~no_any], problems


def index(root: Path, workers: int | None = None, source: str = LAYOUT) -> AdapterResult:
    """Index an RSNA-layout folder (real RSNA-2019 or hemo phantoms).

    Args:
        root: The folder holding ``stage_2_train.csv``.
        workers: Processes reading headers (``None``: every core).
        source: Value of the ``source`` column (``rsna`` or ``phantom``).

    Returns:
        One row per labelled, readable image (``mask_path`` added when ``masks/`` exists), and
        the problems met.

    Raises:
        DatasetError: not an RSNA layout, or the label CSV is malformed.
    """
    stage = find_stage(root)
    if stage is None:
        raise DatasetError("no stage_2_train.csv beside a stage_2_train/ folder", root)
    csv_path, image_dir = stage
    labels, problems = read_labels(csv_path)

    files = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() == DICOM_SUFFIX}
    for image in sorted(set(labels.index) - set(files)):
        problems.append(
            Problem(
                MISSING_IMAGE, f"{csv_path}:{image}", f"no {image}{DICOM_SUFFIX} in {image_dir}"
            )
        )
    for image in sorted(set(files) - set(labels.index)):
        problems.append(Problem(MISSING_LABEL, str(files[image]), "no label rows in the CSV"))

    images = sorted(set(labels.index) & set(files))
    fields = headers.read_many([files[i] for i in images], workers=workers)
    mask_dir = root / MASK_DIR if has_masks(root) else None
    label_rows = labels.reindex(images).to_dict("index")
    rows = []
    for image, header in zip(images, fields, strict=True):
        if header.error is not None:
            problems.append(Problem(UNREADABLE, header.path, header.error))
            continue
        label = label_rows[image]
        row = {
            "path": str(files[image].resolve()),
            "label_any": int(label["any"]),
            **{s: label[s] for s in SUBTYPES},
            "patient_id": header.patient_id,
            "study_uid": header.study_uid,
            "series_uid": header.series_uid,
            "slice_z": header.slice_z,
        }
        if mask_dir is not None:
            mask = mask_dir / f"{image}{MASK_SUFFIX}"
            row["mask_path"] = str(mask.resolve()) if mask.is_file() else None
        rows.append(row)
    for problem in problems:
        log.warning("%s: %s: %s", problem.kind, problem.path, problem.reason)
    frame = make_frame(rows, source)
    if mask_dir is not None and "mask_path" not in frame:
        frame = frame.assign(mask_path=pd.Series(pd.NA, index=frame.index, dtype="string"))
    return AdapterResult(frame, tuple(problems))
