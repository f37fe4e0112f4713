"""Synthetic CT DICOM bytes for tests (built in memory with pydicom; nothing on disk)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: Patient data written into test files; none of it may ever come out of hemo.
PHI = {
    "PatientName": "Doe^Jane^Q",
    "PatientID": "MRN-00424242",
    "PatientBirthDate": "19470312",
    "InstitutionName": "Saint Phantom Hospital",
    "AccessionNumber": "ACC98765431",
    "StudyDate": "20190704",
    "ReferringPhysicianName": "House^Gregory",
    "DeviceSerialNumber": "SN-7731-XQ",
}


def ct_dataset(
    hu: np.ndarray | None = None,
    *,
    z_mm: float = 0.0,
    instance: int | None = 1,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    study_uid: str = "1.2.826.0.1.3680043.8.498.2",
    modality: str = "CT",
    intercept: float | None = -1024.0,
    slope: float | None = 1.0,
    **tags: Any,
) -> Dataset:
    """A single-frame 16-bit signed CT dataset whose HU are ``hu`` (default: a 64x64 head-ish disc)."""
    if hu is None:
        yy, xx = np.mgrid[:64, :64]
        hu = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 24**2, 40, -1000).astype(np.int16)
    stored = (np.asarray(hu, dtype=np.float64) - (intercept or 0.0)) / (slope or 1.0)
    stored = stored.astype(np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    if instance is not None:
        ds.InstanceNumber = instance
    ds.ImagePositionPatient = [-100.0, -100.0, z_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 5.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if slope is not None:
        ds.RescaleSlope = slope
    ds.WindowCenter = 40
    ds.WindowWidth = 80
    ds.PixelData = stored.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def to_bytes(ds: Dataset, preamble: bool = True) -> bytes:
    """Encode ``ds`` as a PS3.10 file (preamble + DICM), or as a bare dataset without them."""
    if preamble:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    raw = DicomBytesIO()
    raw.is_implicit_VR = False
    raw.is_little_endian = True
    pydicom.filewriter.write_dataset(raw, ds)
    return raw.getvalue()


def ct_bytes(hu: np.ndarray | None = None, preamble: bool = True, **kwargs: Any) -> bytes:
    """:func:`ct_dataset` encoded by :func:`to_bytes`."""
    return to_bytes(ct_dataset(hu, **kwargs), preamble=preamble)


#: SOP Class UID of Enhanced CT Image Storage (PS3.4 B.5).
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
#: How much :func:`enhanced_ct` raises the stored values of its ``shift_frame``.
STORED_SHIFT = 1000


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def enhanced_ct(
    slices: list[Path], *, functional_groups: bool = True, shift_frame: int | None = None
) -> Dataset:
    """An Enhanced CT (or, without functional groups, a plain multi-frame CT) of real slices.

    The stored values of ``shift_frame`` are raised by :data:`STORED_SHIFT` and its Rescale
    Intercept lowered by as much, so its HU stay the same only if the per-frame rescale is read.
    """
    sources = [pydicom.dcmread(p) for p in slices]
    first = sources[0]
    frames = []
    for k, src in enumerate(sources):
        stored = src.pixel_array.astype(np.int32)
        if k == shift_frame:
            stored = stored + STORED_SHIFT
        frames.append(stored.astype(np.uint16 if stored.min() >= 0 else np.int16))
    signed = any(f.dtype == np.int16 for f in frames)
    pixels = np.stack([f.astype(np.int16 if signed else np.uint16) for f in frames])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = pixels.shape[1:]
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    if functional_groups:
        ds.SharedFunctionalGroupsSequence = Sequence(
            [
                _item(
                    PlaneOrientationSequence=Sequence(
                        [_item(ImageOrientationPatient=first.ImageOrientationPatient)]
                    ),
                    PixelMeasuresSequence=Sequence(
                        [
                            _item(
                                PixelSpacing=first.PixelSpacing,
                                SliceThickness=first.SliceThickness,
                            )
                        ]
                    ),
                    FrameVOILUTSequence=Sequence([_item(WindowCenter=40, WindowWidth=80)]),
                )
            ]
        )
        per_frame = []
        for k, src in enumerate(sources):
            intercept = float(src.RescaleIntercept) - (STORED_SHIFT if k == shift_frame else 0)
            per_frame.append(
                _item(
                    PlanePositionSequence=Sequence(
                        [_item(ImagePositionPatient=src.ImagePositionPatient)]
                    ),
                    PixelValueTransformationSequence=Sequence(
                        [
                            _item(
                                RescaleIntercept=intercept,
                                RescaleSlope=float(src.RescaleSlope),
                                RescaleType="HU",
                            )
                        ]
                    ),
                )
            )
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    else:
        ds.RescaleIntercept = first.RescaleIntercept
        ds.RescaleSlope = first.RescaleSlope
        ds.ImagePositionPatient = first.ImagePositionPatient
        ds.ImageOrientationPatient = first.ImageOrientationPatient
        ds.PixelSpacing = first.PixelSpacing
    ds.PixelData = pixels.tobytes()
    return ds


def nifti_volume(slices: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (column, row, slice) in HU as int16 and their RAS affine, as DICOM-to-NIfTI
    converters make them from consecutive ``CTSlice``s (the LPS affine of PS3.3 C.7.6.2.1.1
    turned to RAS)."""
    data = np.stack([s.hu.T for s in slices], axis=-1).round().astype(np.int16)
    row_cos, col_cos = np.asarray(slices[0].orientation[:3]), np.asarray(slices[0].orientation[3:])
    row_mm, col_mm = slices[0].pixel_spacing_mm
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_mm  # along i: the next column
    lps[:3, 1] = col_cos * row_mm  # along j: the next row
    lps[:3, 2] = np.subtract(slices[1].position_mm, slices[0].position_mm)
    lps[:3, 3] = slices[0].position_mm
    return data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
