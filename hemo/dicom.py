"""Read one CT DICOM slice into Hounsfield units with PHI-free metadata.

Inputs are a path, raw bytes or a file-like upload, with or without a ``.dcm`` extension. A file
is DICOM when it carries ``DICM`` at byte 128 (DICOM PS3.10 section 7.1); without that marker it
is read with ``force=True`` and accepted only when the result holds image data ((0028,0010)
Rows, (0028,0011) Columns and (7FE0,0010) Pixel Data), so that text or random bytes are never
taken for a headerless DICOM.

Hounsfield units (PS3.3 C.11.1, C.8.2.1.1):

1. Stored values are decoded by pydicom (native) or its gdcm / pylibjpeg plugins (compressed).
2. The RSNA-2019 12-bit fault is corrected (see :func:`has_rsna_12bit_fault`).
3. HU = ``pydicom.pixels.apply_modality_lut`` (Rescale Slope/Intercept or a Modality LUT).
   A CT without (0028,1052)/(0028,1053) is read with the identity for the missing one (pydicom's
   own behaviour) and a logged warning; a zero or non-finite slope is refused.
4. Pixels equal to (0028,0120) Pixel Padding Value, or in the inclusive range it spans with
   (0028,0121) Pixel Padding Range Limit (PS3.3 C.7.5.1.1.2), become ``config.HU_AIR``.
5. HU below ``config.HU_FLOOR`` (outside the reconstruction circle, e.g. CQ500's -3024) become
   ``config.HU_AIR``.

(0028,0004) MONOCHROME1 only changes presentation (PS3.3 C.7.6.3.1.2: the minimum value is shown
white after the VOI transform); the modality LUT already yields HU in physical units, so HU are
never inverted and every CT is rendered with HU increasing towards white. The photometric
interpretation is kept in the metadata.

Multi-frame files (Enhanced CT Image Storage, or any CT with (0028,0008) Number of Frames > 1)
hold a whole series: :func:`read_dicom_frames` gives one :class:`CTSlice` per frame, each with
the frame's own position, orientation, spacing, rescale and window from the Per-frame
Functional Groups Sequence, else the Shared Functional Groups Sequence, else the top level
(PS3.3 C.7.6.16). :func:`read_dicom` reads one slice and refuses a file of several frames.

Refused on purpose, each with the tag, value and rule in the message: non-CT modalities, colour
(Samples per Pixel != 1), missing or short pixel data, and sizes over the limits in
:mod:`hemo.config` (checked before any pixel buffer is allocated).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import struct
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    RLETransferSyntaxes,
)

from hemo import config
from hemo.errors import DicomError, LimitError, NoImageDicomError
from hemo.sources import Source, as_stream, is_path, path_size, read_bytes, source_name
from hemo.windowing import Window

log = logging.getLogger(__name__)

# pydicom's reading validation warns with the raw value (a UID with a non-ASCII byte: the whole
# UID, dates and all) on stderr and in its log; hemo checks what it uses itself (:func:`conforms`)
# and never shows such values, so the warnings only leak them.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

#: PS3.10 section 7.1: a 128-byte preamble followed by the four bytes ``DICM``.
DICM_OFFSET = 128
DICM_MAGIC = b"DICM"
#: Modalities hemo reads (PS3.3 C.7.3.1.1.1).
SUPPORTED_MODALITIES = ("CT",)
#: Bits Allocated values a CT image may use (PS3.3 C.8.2.1.1.4 allows 16; 8 and 32 are read too).
SUPPORTED_BITS_ALLOCATED = (8, 16, 32)
#: Elements larger than this are not loaded when sniffing a headerless file from disk.
DEFER_SIZE_BYTES = 4096
#: Decoder plugins tried first, per transfer syntax. GDCM 3.2 aborts the whole process (an
#: uncaught C++ exception) on a corrupt JPEG 2000 stream, so JPEG 2000 and RLE go through
#: pylibjpeg / Pillow / pydicom when any of them is installed; GDCM stays the fallback and the
#: decoder for JPEG Lossless and JPEG-LS (which it reports as exceptions).
PREFERRED_PLUGINS: dict[str, tuple[str, ...]] = {
    **{uid: ("pylibjpeg", "pillow") for uid in JPEG2000TransferSyntaxes},
    **{uid: ("pylibjpeg", "pydicom") for uid in RLETransferSyntaxes},
}
#: Uncompressed little-endian transfer syntaxes (PS3.5 A.1, A.2) whose pixel data hemo reads in
#: place, as pydicom's native decoder would, without building its decoding pipeline.
IN_PLACE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: (0028,0103) Pixel Representation -> numpy integer kind (unsigned, two's complement).
PIXEL_KINDS = {0: "u", 1: "i"}
#: Longest value (bytes) of a header element hemo reads; a longer one is corrupt and ignored
#: (found by fuzzing: a header tag given the pixel data's 512 KB took 10 s to convert; the longest
#: real ones, UIDs and multi-valued windows, are well under 100 bytes).
MAX_HEADER_VALUE_BYTES = 1024
#: Every standard DICOM UID (SOP classes, transfer syntaxes) starts with this (PS3.5 9.1).
DICOM_UID_ROOT = "1.2.840.10008."
#: Root of the instance-UID pseudonyms (UUID-derived UIDs, PS3.5 B.2).
UID_PSEUDONYM_ROOT = "2.25."
#: Length of the patient pseudonym: hex characters of HMAC-SHA256(secret, PatientID).
PATIENT_KEY_HEX_CHARS = 16
#: Bytes of a newly created per-installation pseudonym secret.
PATIENT_KEY_SECRET_BYTES = 32

# The RSNA-2019 12-bit fault (Jeremy Howard, "Cleaning the data for rapid prototyping (fastai)",
# Kaggle RSNA Intracranial Hemorrhage Detection, 2019; reused by many top kernels as
# ``correct_dcm`` / ``fix_pxrepr``).
RSNA_FAULT_BITS_STORED = 12
RSNA_FAULT_PIXEL_REPRESENTATION = 0
#: The fault is present only when the intercept is above this (a sane CT intercept is ~ -1024).
RSNA_FAULT_INTERCEPT_ABOVE = -100.0
RSNA_FAULT_OFFSET = 1000
RSNA_FAULT_MODULUS = 4096
RSNA_FAULT_INTERCEPT = -1000.0
#: Every integer of magnitude below this is exact in float32 (24-bit significand).
FLOAT32_EXACT_INTEGERS = 2**24

#: PHI-free metadata: keywords of tags that are not in the DICOM PS3.15 Annex E basic
#: confidentiality profile (Table E.1-1). No names, IDs, dates, times, institutions, devices,
#: descriptions or instance UIDs; those never leave this module.
METADATA_KEYWORDS: tuple[str, ...] = (
    "SOPClassUID",
    "Modality",
    "ImageType",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "NumberOfFrames",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceLocation",
    "PatientPosition",
    "InstanceNumber",
    "SeriesNumber",
    "AcquisitionNumber",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "KVP",
    "XRayTubeCurrent",
    "ExposureTime",
    "Exposure",
    "ConvolutionKernel",
    "GantryDetectorTilt",
    "ReconstructionDiameter",
)
#: Elements read besides the whitelist: the instance UIDs, returned only as keyed pseudonyms
#: (:func:`pseudonymize_uid`), (0010,0020) Patient ID, which is only hashed into a pseudonym
#: (:data:`PATIENT_KEY_HEX_CHARS`), and Patient ID and (0010,0010) Patient's Name, kept only as
#: keyed digests of their parts that find them in file names (:func:`scrub_name`); none is
#: ever returned.
HEADER_KEYWORDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "PatientName",
)
#: Every element whose value hemo reads from a slice; each is converted once per file.
VALUE_KEYWORDS: tuple[str, ...] = METADATA_KEYWORDS + HEADER_KEYWORDS
#: Functional group macros of a multi-frame image that hemo reads, and the elements each holds
#: that replace the top-level ones for a frame (PS3.3 C.7.6.16.2: Plane Position, Plane
#: Orientation, Pixel Measures, Pixel Value Transformation, Frame VOI LUT).
FRAME_GROUP_KEYWORDS: dict[str, tuple[str, ...]] = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
    "PixelValueTransformationSequence": ("RescaleIntercept", "RescaleSlope", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth"),
}
#: Binary VRs decoded without pydicom's element machinery: ``struct`` format of one value
#: (PS3.5 section 6.2, Table 6.2-1).
BINARY_VR_FORMATS: dict[str, str] = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "FL": "f",
    "FD": "d",
}


@dataclass(frozen=True, eq=False)
class DicomHeader:
    """What the index and EDA need from one DICOM, read without its pixel data.

    Attributes:
        source: Path or upload name (never patient data).
        modality: (0008,0060) Modality, e.g. ``"CT"``; ``""`` when absent.
        rows: (0028,0010) Rows; 0 when absent.
        columns: (0028,0011) Columns; 0 when absent.
        pixel_spacing_mm: (0028,0030) (row, column) spacing in mm.
        slice_thickness_mm: (0018,0050) in mm.
        position_mm: (0020,0032) Image Position (Patient) in mm.
        orientation: (0020,0037) Image Orientation (Patient), six direction cosines.
        slice_z_mm: Position projected on the slice normal in mm (for ordering a series).
        instance_number: (0020,0013).
        study_uid: :func:`pseudonymize_uid` of (0020,000D).
        series_uid: :func:`pseudonymize_uid` of (0020,000E).
        sop_uid: :func:`pseudonymize_uid` of (0008,0018).
        patient_key: :func:`pseudonymize` of PatientID; for grouping splits only.
        default_window: First (0028,1050)/(0028,1051) pair, or ``None`` when absent or invalid.
        transfer_syntax: (0002,0010) Transfer Syntax UID.
        metadata: PHI-free whitelist (see :func:`phi_free_metadata`).
        name_keys: :func:`name_keys` of the file's Patient ID and Patient's Name (keyed
            digests, never the values), for :func:`scrub_name`.
    """

    source: str
    modality: str
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float] | None
    slice_thickness_mm: float | None
    position_mm: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    slice_z_mm: float | None
    instance_number: int | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    patient_key: str | None
    default_window: Window | None
    transfer_syntax: str | None
    metadata: Mapping[str, Any] = field(repr=False)
    name_keys: frozenset[str] = field(default=frozenset(), repr=False)


@dataclass(frozen=True, eq=False)
class CTSlice:
    """One CT slice in Hounsfield units.

    Attributes:
        hu: float32 (H, W) Hounsfield units, read-only. Padding and out-of-field values are
            ``config.HU_AIR``.
        source: Path or upload name (never patient data).
        pixel_spacing_mm: (row, column) spacing in mm.
        slice_thickness_mm: Slice thickness in mm.
        position_mm: Image Position (Patient) in mm.
        orientation: Image Orientation (Patient), six direction cosines.
        slice_z_mm: Position projected on the slice normal in mm.
        instance_number: Instance Number.
        study_uid: Pseudonym of the Study Instance UID (:func:`pseudonymize_uid`).
        series_uid: Pseudonym of the Series Instance UID.
        sop_uid: Pseudonym of the SOP Instance UID.
        patient_key: :func:`pseudonymize` of PatientID, for grouping splits only.
        default_window: The file's first window, or ``None``.
        modality: Always ``"CT"`` (other modalities are refused).
        metadata: PHI-free whitelist plus hemo's notes (``transfer_syntax``,
            ``rsna_12bit_fault_corrected``, ``rescale_assumed``).
        frame: The frame's number (1-based, as DICOM counts frames) in a multi-frame file, or
            the slice's number in a NIfTI volume (:mod:`hemo.nifti`); ``None`` for a
            single-frame file.
        name_keys: :func:`name_keys` of the file's Patient ID and Patient's Name (keyed
            digests, never the values): :func:`scrub_name` finds them in file and folder names.
    """

    hu: npt.NDArray[np.float32] = field(repr=False)
    source: str
    pixel_spacing_mm: tuple[float, float] | None
    slice_thickness_mm: float | None
    position_mm: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    slice_z_mm: float | None
    instance_number: int | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    patient_key: str | None
    default_window: Window | None
    modality: str
    metadata: Mapping[str, Any] = field(repr=False)
    frame: int | None = None
    name_keys: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the slice in pixels."""
        return self.hu.shape  # type: ignore[return-value]

    @property
    def label(self) -> str:
        """``source``, with the frame number for a frame of a multi-frame file (for messages)."""
        return self.source if self.frame is None else f"{self.source} (frame {self.frame})"


# Reading -----------------------------------------------------------------------------------------


#: Longest exception text a message quotes.
MAX_CAUSE_CHARS = 400
#: Longest value (per value of a multi-valued element) of each text VR (PS3.5 Table 6.2-1). A
#: header value longer than its VR allows, or holding control characters, is not shown anywhere
#: (messages, metadata): a corrupt length makes an element swallow the elements after it, names
#: and dates included.
VR_MAX_CHARS: dict[str, int] = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "SH": 16,
    "TM": 14, "UI": 64,
}  # fmt: skip
#: What a message says instead of a header value it may not show.
NOT_SHOWN = "not shown: not a valid value of its VR, so the header is corrupt"
#: A quoted text inside an exception message (pydicom quotes the values it fails on).
_QUOTED = re.compile("'[^'\\n]*'|\"[^\"\\n]*\"")


def conforms(value: Any, vr: str) -> bool:
    """Whether a header value may be shown: every value of it (a multi-valued element's too)
    is a number, or text within its VR's length (:data:`VR_MAX_CHARS`; 1024 for other text VRs)
    without control characters. A sequence, bytes or anything else is not shown."""
    if isinstance(value, MultiValue | list | tuple):
        return all(conforms(v, vr) for v in value)
    if isinstance(value, bool | int | float):
        return True
    if not isinstance(value, str):
        return False
    limit = VR_MAX_CHARS.get(vr, MAX_HEADER_VALUE_BYTES)
    return len(value) <= limit and value.isprintable()


def shown(value: Any, vr: str) -> str:
    """A header value for a message: quoted when :func:`conforms`, else its size and
    :data:`NOT_SHOWN` (never the value: it may hold the elements a corrupt length swallowed)."""
    if conforms(value, vr) and not isinstance(value, MultiValue | list | tuple):
        return repr(value)
    if isinstance(value, str | bytes):
        return f"a value of {len(value)} characters ({NOT_SHOWN})"
    kind = "a sequence" if isinstance(value, pydicom.Sequence) else f"a {type(value).__name__}"
    return f"{kind} ({NOT_SHOWN})"


def _redact_quoted(text: str) -> str:
    """``text`` with every quoted part that would not be shown (:func:`conforms` as LO) replaced
    by :data:`NOT_SHOWN` (pydicom quotes raw values in its messages, escapes included)."""

    def replace(match: re.Match[str]) -> str:
        inner = match.group(0)[1:-1]
        return match.group(0) if conforms(inner, "LO") and "\\" not in inner else f"({NOT_SHOWN})"

    return _QUOTED.sub(replace, text)


def _cause(exc: BaseException) -> str:
    """``Type: text`` of an exception on one line: a multi-line text (pydicom lists each
    decoder's reason on its own line) is joined with ``; ``, long ones are cut, and a quoted
    value that could hold swallowed elements is not shown (:func:`_redact_quoted`)."""
    lines = [_redact_quoted(line.strip()) for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0] if len(lines) == 1 else lines[0].rstrip(":") + ": " + "; ".join(lines[1:])
    if len(text) > MAX_CAUSE_CHARS:
        text = text[: MAX_CAUSE_CHARS - 3].rstrip() + "..."
    return f"{type(exc).__name__}: {text}"


def _has_image_tags(ds: Dataset) -> bool:
    return "PixelData" in ds and "Rows" in ds and "Columns" in ds


#: The (7FE0,0010) Pixel Data tag as little-endian bytes (every transfer syntax hemo reads).
PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"


#: The Sequence Delimitation Item that closes encapsulated (compressed) pixel data.
SEQUENCE_DELIMITER_LE = b"\xfe\xff\xdd\xe0"
#: The value length that says "undefined, up to a delimiter".
UNDEFINED_LENGTH = 0xFFFFFFFF


def _ends_inside_pixel_data(data: bytes) -> bool:
    """Whether the file stops inside its last (7FE0,0010) element: an encapsulated one
    (undefined length) never closed by its delimiter, or a defined length past the end. A
    complete nested one (an icon image in a sequence) is not."""
    start = data.rfind(PIXEL_DATA_TAG_LE, DICM_OFFSET)
    if start < 0:
        return False
    head = data[start + 4 : start + 12]
    if head[:2] in (b"OB", b"OW", b"OF", b"UN"):  # explicit VR: 2 reserved bytes, 4-byte length
        if len(head) < 8:
            return True
        length, value_start = int.from_bytes(head[4:8], "little"), start + 12
    else:  # implicit VR: the 4-byte length follows the tag
        if len(head) < 4:
            return True
        length, value_start = int.from_bytes(head[:4], "little"), start + 8
    if length == UNDEFINED_LENGTH:
        return SEQUENCE_DELIMITER_LE not in data[value_start:]
    return value_start + length > len(data)


def _parse(source: Source, name: str | None, *, pixels: bool) -> tuple[Dataset, str]:
    """Parse the dataset of ``source``; the pixel data is kept (not decoded) when ``pixels``."""
    label = source_name(source, name)
    if is_path(source):
        path_size(source, label)
        try:
            with open(source, "rb") as fh:
                # with its pixels the whole file is needed: one read, then parsed in memory
                data = fh.read() if pixels else fh.read(DICM_OFFSET + len(DICM_MAGIC))
        except OSError as exc:
            raise DicomError(f"cannot read the file: {exc.strerror or exc}", label) from exc
        head = data[: DICM_OFFSET + len(DICM_MAGIC)]
        target: Any = as_stream(data) if pixels else source
    else:
        data = read_bytes(source, label)
        head = data[: DICM_OFFSET + len(DICM_MAGIC)]
        target = as_stream(data)
    marked = head[DICM_OFFSET:] == DICM_MAGIC
    try:
        if marked:
            ds = pydicom.dcmread(target, stop_before_pixels=not pixels)
        else:
            defer = DEFER_SIZE_BYTES if (is_path(source) and not pixels) else None
            ds = pydicom.dcmread(target, force=True, defer_size=defer)
    except Exception as exc:  # pydicom raises many types on malformed input
        raise DicomError(f"not a readable DICOM file ({_cause(exc)})", label) from exc
    if not marked and not _has_image_tags(ds):
        sop_class = _get(ds, "SOPClassUID")
        if sop_class is not None and str(sop_class).startswith(DICOM_UID_ROOT):
            raise NoImageDicomError(
                "is DICOM (without the 128-byte preamble) but holds no image ((0028,0010) "
                "Rows, (0028,0011) Columns, (7FE0,0010) Pixel Data; its (0008,0016) SOP Class "
                f"is {_uid_name(sop_class)}); hemo reads CT image slices",
                label,
            )
        raise DicomError(
            f"not a DICOM file: no '{DICM_MAGIC.decode()}' marker at byte {DICM_OFFSET}, and "
            "read without it the bytes hold no image ((0028,0010) Rows, (0028,0011) Columns, "
            "(7FE0,0010) Pixel Data)",
            label,
        )
    if pixels and "PixelData" not in ds and _ends_inside_pixel_data(data):
        # pydicom drops an encapsulated Pixel Data element the file ends inside of
        raise DicomError(
            f"the file ends inside its (7FE0,0010) Pixel Data ({len(data):,} bytes): it is "
            "truncated",
            label,
        )
    _ensure_transfer_syntax(ds)
    return ds, label


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a headerless (forced) dataset the transfer syntax it was actually read with."""
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = ds.original_encoding
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif little is False:
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


@functools.cache
def _tag(keyword: str) -> BaseTag:
    """The tag of a dictionary keyword (cached: keyword lookups dominate header reading)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"not a DICOM keyword: {keyword}")
    return Tag(tag)


def _get(ds: Dataset, keyword: str) -> Any:
    """Value of ``keyword`` or ``None`` when absent, empty or unparsable."""
    tag = _tag(keyword)
    if tag not in ds:
        return None
    raw = ds.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.length > MAX_HEADER_VALUE_BYTES:
        log.debug("%s is %d bytes, over %d: ignored", keyword, raw.length, MAX_HEADER_VALUE_BYTES)
        return None
    try:
        value = ds[tag].value
    except Exception:  # an invalid value (e.g. a DS that is not a number) counts as absent
        log.debug("unparsable %s ignored", keyword, exc_info=True)
        return None
    if value is None or value == "":
        return None
    return value


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    if len(out) != count or not all(math.isfinite(v) for v in out):
        return None
    return out


def _float(value: Any) -> float | None:
    floats = _floats(value, 1)
    return floats[0] if floats else None


def _first(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return value[0] if len(value) else None
    return value


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a pydicom value (numbers, strings, lists)."""
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, UID):
        return str(value)
    if isinstance(value, bool | int | float | str):
        if isinstance(value, float):
            return float(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        return str(value) if isinstance(value, str) else value
    if isinstance(value, bytes):
        return None
    return str(value)


def _split_padded(text: str) -> list[str]:
    """Values of a string element without its trailing space / NUL padding (PS3.5 6.2)."""
    return text.rstrip(" \x00").split("\\")


#: Text VRs decoded without pydicom's element machinery when their bytes are plain ASCII, each
#: as pydicom 3 does it (``pydicom.values.convert_*``), so the values are the same.
_TEXT_VR_PARSERS: dict[str, Any] = {
    "DS": lambda text: [float(v) for v in _split_padded(text.strip())],
    "IS": lambda text: [int(v) for v in _split_padded(text)],
    "CS": _split_padded,
    "AS": _split_padded,
    "UI": _split_padded,
    "SH": lambda text: [v.rstrip("\x00 ") for v in text.split("\\")],
    "LO": lambda text: [v.rstrip("\x00 ") for v in text.split("\\")],
}
#: Marks a raw element that :func:`_decode_raw` leaves to pydicom.
_UNDECODED = object()
#: ESC starts an ISO 2022 character-set switch (PS3.5 6.1.2.5.3): such text goes to pydicom.
_ESCAPE = b"\x1b"


def _decode_raw(raw: RawDataElement, vr: str) -> Any:
    """Value of a raw element of a common VR, or ``_UNDECODED`` for pydicom to convert.

    Same result as pydicom for what it handles (numbers, ASCII strings; a single value as a
    scalar, several as a list, an empty value as ``None``); anything unusual (a deferred value,
    a length that is not a whole number of values, non-ASCII text, a value that does not parse)
    is left to pydicom so its rules and warnings apply unchanged.
    """
    data = raw.value
    if data is None:
        return _UNDECODED if raw.length else None
    if not data:
        return None
    fmt = BINARY_VR_FORMATS.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        if len(data) % size:
            return _UNDECODED
        order = "<" if raw.is_little_endian else ">"
        items: list[Any] = list(struct.unpack(order + fmt * (len(data) // size), data))
    else:
        parse = _TEXT_VR_PARSERS.get(vr)
        if parse is None or not data.isascii() or _ESCAPE in data:
            return _UNDECODED
        try:
            items = parse(data.decode("ascii"))
        except ValueError:
            return _UNDECODED
    if len(items) == 1:
        return None if items[0] == "" else items[0]
    return items


@functools.cache
def _dictionary_vr(keyword: str) -> str:
    """The VR the data dictionary gives ``keyword`` (used for implicit-VR files)."""
    return dictionary_VR(_tag(keyword))


def _values(ds: Dataset, keywords: tuple[str, ...] = VALUE_KEYWORDS) -> dict[str, Any]:
    """Values of ``keywords`` (default :data:`VALUE_KEYWORDS`) present in ``ds``, each converted once.

    Raw elements of common VRs are decoded directly (see :func:`_decode_raw`); the rest go
    through :func:`_get` (pydicom). Absent, empty and unparsable values are left out, as
    :func:`_get` returns ``None`` for them. ``ds`` is not modified.
    """
    out: dict[str, Any] = {}
    for keyword in keywords:
        elem = ds.get_item(_tag(keyword), keep_deferred=True)
        if elem is None:
            continue
        if isinstance(elem, RawDataElement) and elem.length > MAX_HEADER_VALUE_BYTES:
            log.debug(
                "%s is %d bytes, over %d: ignored", keyword, elem.length, MAX_HEADER_VALUE_BYTES
            )
            continue
        value: Any = _UNDECODED
        if isinstance(elem, RawDataElement):
            vr = elem.VR or _dictionary_vr(keyword)
            if " or " not in vr:  # an ambiguous VR (e.g. 'US or SS') needs pydicom's context
                value = _decode_raw(elem, vr)
        if value is _UNDECODED:
            value = _get(ds, keyword)
        if value is not None:
            out[keyword] = value
    return out


def _whitelisted(values: Mapping[str, Any], ds: Dataset) -> dict[str, Any]:
    """The PHI-free metadata from :func:`_values` output (see :func:`phi_free_metadata`)."""
    out: dict[str, Any] = {}
    for keyword in METADATA_KEYWORDS:
        value = values.get(keyword)
        if value is None:
            continue
        if not conforms(value, _dictionary_vr(keyword)):  # e.g. a sequence, a swallowing length
            log.debug("%s is not a valid %s value: left out", keyword, _dictionary_vr(keyword))
            continue
        plain = _plain(value)
        if plain is not None:
            out[keyword] = plain
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        out["TransferSyntaxUID"] = str(meta.TransferSyntaxUID)
    return out


def phi_free_metadata(ds: Dataset) -> dict[str, Any]:
    """Whitelisted, PHI-free metadata of a dataset.

    Only the tags named in :data:`METADATA_KEYWORDS` are copied; none of them is in the DICOM
    PS3.15 Annex E basic application level confidentiality profile, so no name, ID, date, time,
    institution, physician, device serial, free-text description or instance UID is returned.
    Multi-valued elements (e.g. several Window Centers) keep all their values.

    Args:
        ds: A pydicom dataset. Not modified.

    Returns:
        ``{keyword: value}`` with JSON-friendly values (numbers, strings, lists), plus
        ``TransferSyntaxUID`` from the file meta information when known.
    """
    return _whitelisted(_values(ds), ds)


@functools.cache
def patient_key_secret() -> bytes:
    """The HMAC key of :func:`pseudonymize` (read once per process).

    ``$HEMO_PATIENT_KEY_SECRET`` when set; else ``config.PATIENT_KEY_SECRET_FILE``, created on
    first use with 32 random bytes (mode 0600, written to a temporary name and linked into place
    so concurrent first uses agree). When the file cannot be written (a read-only home), a
    random secret for this process is used and a warning logged: pseudonyms then agree within
    the process only.
    """
    env = os.environ.get(config.PATIENT_KEY_SECRET_ENV)
    if env:
        return env.encode("utf-8")
    path = Path(config.PATIENT_KEY_SECRET_FILE)
    try:
        return _read_or_create_secret(path)
    except OSError as exc:
        log.warning(
            "cannot read or create the pseudonym secret %s (%s): using a per-process secret; "
            "set %s to share one",
            path,
            exc.strerror or exc,
            config.PATIENT_KEY_SECRET_ENV,
        )
        return secrets.token_bytes(PATIENT_KEY_SECRET_BYTES)


def _read_or_create_secret(path: Path) -> bytes:
    if path.is_file():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(PATIENT_KEY_SECRET_BYTES))
        try:
            os.link(tmp, path)  # fails if another process created it first: theirs wins
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def pseudonymize(patient_id: str) -> str:
    """Pseudonym of a PatientID: HMAC-SHA256 under :func:`patient_key_secret`, hex[:16].

    The index only needs to group the slices of one patient within one dataset build, so the
    key is secret (per installation) rather than public: an unsalted or public-salted hash of
    a short MRN is reversed by trying every MRN, a keyed one is not without the secret. The
    same ID gives the same pseudonym wherever the secret is the same (share
    ``$HEMO_PATIENT_KEY_SECRET`` across machines that must agree); splits are stored in the
    index, so keeping the index keeps them.

    Args:
        patient_id: (0010,0020) Patient ID, as read.

    Returns:
        16 lowercase hex characters.
    """
    digest = hmac.new(patient_key_secret(), patient_id.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:PATIENT_KEY_HEX_CHARS]


def pseudonymize_uid(uid: str) -> str:
    """Pseudonym of an instance UID (study, series, SOP): ``2.25.`` and a keyed 128-bit number.

    Instance UIDs are in the PS3.15 Annex E basic profile (action U: replace, consistently),
    and real ones often embed the device's serial number or the acquisition date and time, so
    they never leave this module as read. The replacement is a valid UID under the ``2.25``
    (UUID-derived) root, 44 characters at most, the same for the same UID wherever
    :func:`patient_key_secret` is the same, so slices still group into their series and study.

    Args:
        uid: The UID as read.

    Returns:
        ``2.25.<decimal>``.
    """
    digest = hmac.new(patient_key_secret(), b"uid\0" + uid.encode("utf-8"), hashlib.sha256)
    return f"{UID_PSEUDONYM_ROOT}{int.from_bytes(digest.digest()[:16], 'big')}"


#: What :func:`scrub_name` puts in place of a patient's ID or name part found in a name.
SCRUBBED_NAME = "[patient]"
#: Fewest letters and digits of an ID or name part :func:`scrub_name` looks for (shorter ones
#: would match slice numbers and initials that are not the patient's).
MIN_SCRUB_CHARS = 3
#: Longest run of a name compared with a patient's ID or name (the LO and PN component
#: limits, PS3.5 6.2).
MAX_SCRUB_CHARS = 64
#: Hex characters kept of a name part's digest.
NAME_KEY_HEX_CHARS = 32
_NAME_TOKEN = re.compile(r"[^\W_]+")  # letters and digits, any script
#: PS3.5 6.2.1: a person name's component groups (alphabetic, ideographic, phonetic) and the
#: components of a group (family, given, middle, prefix, suffix).
PN_GROUP_SEPARATOR = "="
PN_COMPONENT_SEPARATOR = "^"


def _words(text: str) -> list[str]:
    """The letters-and-digits runs of ``text``, NFC-normalised and case-folded (macOS writes
    file names decomposed: ``u`` + combining diaeresis for ``ü``)."""
    return _NAME_TOKEN.findall(unicodedata.normalize("NFC", text).casefold())


def _name_key(words: Sequence[str]) -> str:
    """Keyed digest of one ID or name part, as its words: the separators between them do not
    count (``CQ500-CT-0`` = ``cq500_ct_0``); never the text itself."""
    text = "\0".join(words).encode("utf-8")
    digest = hmac.new(patient_key_secret(), b"name\0" + text, hashlib.sha256)
    return digest.hexdigest()[:NAME_KEY_HEX_CHARS]


def name_keys(patient_id: Any, patient_name: Any) -> frozenset[str]:
    """Keyed digests of a file's patient identifiers, for :func:`scrub_name`.

    The parts looked for: each value of (0010,0020) Patient ID; and for (0010,0010) Patient's
    Name (PS3.5 6.2.1), each component group whole (``Li^Bo`` as ``Li Bo``, and written
    together, as ``山田^太郎`` is ``山田太郎``), each component and each word of one. Parts with
    fewer than :data:`MIN_SCRUB_CHARS` letters and digits are left out.

    Args:
        patient_id: The Patient ID as read (text, or several values), or ``None``.
        patient_name: The Patient's Name as read (a ``PersonName`` or text), or ``None``.

    Returns:
        The digests (:func:`_name_key`); the values themselves are never kept.
    """
    parts: list[list[str]] = []
    ids = patient_id if isinstance(patient_id, MultiValue | list | tuple) else [patient_id]
    parts += [_words(value) for value in ids if isinstance(value, str) and conforms(value, "LO")]
    name = "" if patient_name is None else str(patient_name)
    if name and conforms(name, "PN"):
        for group in name.split(PN_GROUP_SEPARATOR):
            whole = _words(group)
            parts += [whole, ["".join(whole)]]
            for component in group.split(PN_COMPONENT_SEPARATOR):
                words = _words(component)
                parts += [words, *([word] for word in words)]
    return frozenset(_name_key(part) for part in parts if len("".join(part)) >= MIN_SCRUB_CHARS)


def scrub_name(name: str, keys: frozenset[str] | set[str]) -> str:
    """``name`` with every run of its words that is a patient's ID or name part replaced by
    :data:`SCRUBBED_NAME` (a folder of an export is often named after the patient).

    A run of words (letters and digits) matches when its words are those of one of ``keys``'
    parts (:func:`name_keys`), case-insensitively and whatever separates them:
    ``cq500_ct_0/CT000001.dcm`` with Patient ID ``CQ500-CT-0`` gives ``[patient]/CT000001.dcm``;
    a part inside a longer word (``12`` in ``CT000012``) is not one. Runs of up to
    :data:`MAX_SCRUB_CHARS` characters are compared, the longest first.

    Args:
        name: A file, member or folder name.
        keys: Digests from :func:`name_keys` (of every file of one upload, say).

    Returns:
        The scrubbed name (NFC-normalised); ``name`` itself when nothing matches.
    """
    if not keys:
        return name
    text = unicodedata.normalize("NFC", name)
    found = list(_NAME_TOKEN.finditer(text))
    words = [m.group(0).casefold() for m in found]
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(found):
        ends = [
            j
            for j in range(i + 1, len(found) + 1)
            if found[j - 1].end() - found[i].start() <= MAX_SCRUB_CHARS
        ]
        for j in reversed(ends):  # the longest run first
            if len("".join(words[i:j])) >= MIN_SCRUB_CHARS and _name_key(words[i:j]) in keys:
                spans.append((found[i].start(), found[j - 1].end()))
                i = j
                break
        else:
            i += 1
    if not spans:
        return name
    out, last = [], 0
    for start, end in spans:
        out += [text[last:start], SCRUBBED_NAME]
        last = end
    return "".join([*out, text[last:]])


def _uid_pseudonym(value: Any) -> str | None:
    uid = _str(value)
    return None if uid is None else pseudonymize_uid(uid)


def _patient_key(values: Mapping[str, Any]) -> str | None:
    patient_id = values.get("PatientID")
    if patient_id is None or not str(patient_id).strip():
        return None
    return pseudonymize(str(patient_id))


def _default_window(values: Mapping[str, Any], label: str) -> Window | None:
    center = _float(_first(values.get("WindowCenter")))
    width = _float(_first(values.get("WindowWidth")))
    if center is None or width is None:
        return None
    if width <= 0:
        log.warning(
            "%s: (0028,1051) Window Width must be greater than 0, got %g; default window ignored",
            label,
            width,
        )
        return None
    return Window("file", center, width)


def _slice_z(
    position: tuple[float, ...] | None, orientation: tuple[float, ...] | None
) -> float | None:
    """Position along the slice normal (row cosines x column cosines), PS3.3 C.7.6.2.1.1."""
    if position is None:
        return None
    if orientation is None:
        return position[2]
    # plain floats: six cosines do not repay numpy's per-call overhead
    (rx, ry, rz), (cx, cy, cz) = orientation[:3], orientation[3:]
    normal = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
    norm = math.sqrt(sum(n * n for n in normal))
    if norm == 0.0:
        return position[2]
    return sum(p * n / norm for p, n in zip(position, normal, strict=True))


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


#: :attr:`DicomHeader.modality` of a Modality that is not a valid code string.
MALFORMED_MODALITY = "(malformed)"


def _modality(value: Any) -> str:
    """(0008,0060) as an upper-case code, "" when absent, :data:`MALFORMED_MODALITY` when not a
    valid code string (never the value: a corrupt one may hold the elements after it)."""
    if value is None:
        return ""
    if not (isinstance(value, str) and conforms(value, "CS")):
        return MALFORMED_MODALITY
    return value.strip().upper()


def _uid_name(value: Any) -> str:
    """A UID's registered name, or the UID itself, for a message (:func:`shown` rules)."""
    text = str(value) if isinstance(value, str) else value
    if not conforms(text, "UI"):
        return shown(text, "UI")
    return UID(text).name


def _header(ds: Dataset, label: str, values: Mapping[str, Any]) -> DicomHeader:
    """The header of ``ds`` from its converted ``values`` (:func:`_values`)."""
    position = _floats(values.get("ImagePositionPatient"), 3)
    orientation = _floats(values.get("ImageOrientationPatient"), 6)
    spacing = _floats(values.get("PixelSpacing"), 2)
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    return DicomHeader(
        source=label,
        modality=_modality(values.get("Modality")),
        rows=_int(values.get("Rows")) or 0,
        columns=_int(values.get("Columns")) or 0,
        pixel_spacing_mm=spacing,  # type: ignore[arg-type]
        slice_thickness_mm=_float(values.get("SliceThickness")),
        position_mm=position,  # type: ignore[arg-type]
        orientation=orientation,
        slice_z_mm=_slice_z(position, orientation),
        instance_number=_int(values.get("InstanceNumber")),
        study_uid=_uid_pseudonym(values.get("StudyInstanceUID")),
        series_uid=_uid_pseudonym(values.get("SeriesInstanceUID")),
        sop_uid=_uid_pseudonym(values.get("SOPInstanceUID")),
        patient_key=_patient_key(values),
        default_window=_default_window(values, label),
        transfer_syntax=None if transfer_syntax is None else str(transfer_syntax),
        metadata=_whitelisted(values, ds),
        name_keys=name_keys(values.get("PatientID"), values.get("PatientName")),
    )


def read_dicom_header(source: Source, name: str | None = None) -> DicomHeader:
    """Read the header of one DICOM without its pixel data (fast; for the index and EDA).

    Args:
        source: Path, bytes or binary file-like object; any extension or none.
        name: Display name for messages and ``source``; defaults to the path or upload name.

    Returns:
        The header. Nothing is refused for its modality or size here: :func:`read_dicom` does.

    Raises:
        InputError: missing or empty file.
        LimitError: file larger than ``config.MAX_FILE_BYTES``.
        DicomError: not a DICOM file.
    """
    ds, label = _parse(source, name, pixels=False)
    return _header(ds, label, _values(ds))


# Pixel checks -----------------------------------------------------------------------------------


def _check_image(
    ds: Dataset, header: DicomHeader, values: Mapping[str, Any]
) -> tuple[Decoder, str, int]:
    """Refuse what hemo does not read, before any pixel buffer is allocated.

    Returns:
        pydicom's decoder for the transfer syntax, the plugin to use (see
        :data:`PREFERRED_PLUGINS`; ``""`` for pydicom's default choice) and the number of frames.
    """
    label = header.source
    if "PixelData" not in ds:
        raise DicomError("(7FE0,0010) Pixel Data is missing: the file holds no image", label)
    modality = header.modality
    if not modality:
        if str(values.get("SOPClassUID") or "") != CTImageStorage:
            raise DicomError(
                "(0008,0060) Modality is missing and (0008,0016) SOP Class UID is not CT Image "
                "Storage: hemo reads CT only",
                label,
            )
    elif modality == MALFORMED_MODALITY:
        raise DicomError(
            f"(0008,0060) Modality is {shown(values.get('Modality'), 'CS')}: hemo reads CT "
            "only (Modality 'CT')",
            label,
        )
    elif modality not in SUPPORTED_MODALITIES:
        raise DicomError(
            f"(0008,0060) Modality is '{modality}': hemo reads CT only (Modality 'CT')", label
        )
    samples = _int(values.get("SamplesPerPixel"))
    if samples is not None and samples != 1:
        raise DicomError(
            f"(0028,0002) Samples per Pixel is {samples}: colour DICOM is not supported; "
            "CT must be grayscale (Samples per Pixel 1)",
            label,
        )
    frames = _int(values.get("NumberOfFrames"))
    if frames is None:
        frames = 1
    elif frames < 1:
        raise DicomError(f"(0028,0008) Number of Frames is {frames}: must be at least 1", label)
    elif frames > config.MAX_SLICES_PER_SERIES:
        raise LimitError(
            f"(0028,0008) Number of Frames is {frames}, more than the limit of "
            f"{config.MAX_SLICES_PER_SERIES} slices (config.MAX_SLICES_PER_SERIES)",
            label,
        )
    rows, columns = header.rows, header.columns
    if rows <= 0 or columns <= 0:
        raise DicomError(
            f"(0028,0010) Rows x (0028,0011) Columns is {rows} x {columns}: both must be "
            "present and greater than 0",
            label,
        )
    if rows * columns > config.MAX_PIXELS_PER_SLICE:
        raise LimitError(
            f"(0028,0010) Rows x (0028,0011) Columns is {rows} x {columns} = {rows * columns} "
            f"pixels, more than the limit of {config.MAX_PIXELS_PER_SLICE} "
            "(config.MAX_PIXELS_PER_SLICE)",
            label,
        )
    if frames * rows * columns > config.MAX_PIXELS_PER_FILE:
        raise LimitError(
            f"(0028,0008) Number of Frames x Rows x Columns is {frames} x {rows} x {columns} = "
            f"{frames * rows * columns} pixels, more than the limit of "
            f"{config.MAX_PIXELS_PER_FILE} for one file (config.MAX_PIXELS_PER_FILE)",
            label,
        )
    bits = _int(values.get("BitsAllocated"))
    if bits not in SUPPORTED_BITS_ALLOCATED:
        raise DicomError(
            f"(0028,0100) Bits Allocated is {bits}: CT pixel data must use one of "
            f"{', '.join(map(str, SUPPORTED_BITS_ALLOCATED))} bits",
            label,
        )
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    try:
        encapsulated = syntax.is_encapsulated
    except ValueError as exc:  # pydicom: "UID is not a transfer syntax"
        raise DicomError(
            f"(0002,0010) Transfer Syntax UID is {shown(str(syntax), 'UI')}: not a transfer syntax "
            "(PS3.5 section 10); the file meta information is corrupt",
            label,
        ) from exc
    if not encapsulated:
        expected = rows * columns * bits // 8 * frames
        actual = len(ds.PixelData or b"")
        if actual < expected:
            formula = "(0028,0010) Rows x (0028,0011) Columns x (0028,0100) Bits Allocated / 8"
            numbers = f"{rows} x {columns} x {bits} / 8"
            if frames > 1:
                formula, numbers = (
                    f"{formula} x (0028,0008) Number of Frames",
                    f"{numbers} x {frames}",
                )
            raise DicomError(
                f"(7FE0,0010) Pixel Data is {actual} bytes, shorter than {formula} = {numbers} = "
                f"{expected} bytes: the file is truncated or its header lies",
                label,
            )
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise DicomError(
            f"(0002,0010) Transfer Syntax UID is {syntax} ({syntax.name}): no decoder exists for "
            "it in pydicom; convert the file to an uncompressed transfer syntax (e.g. gdcmconv "
            "--raw)",
            label,
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "python-gdcm or pylibjpeg"
        raise DicomError(
            f"(0002,0010) Transfer Syntax UID is {syntax} ({syntax.name}): no decoder for it is "
            f"installed; install one of: {missing}",
            label,
        )
    available = decoder.available_plugins
    plugin = next((p for p in PREFERRED_PLUGINS.get(syntax, ()) if p in available), "")
    return decoder, plugin, frames


class _Rescale(NamedTuple):
    """The modality transform of a slice (PS3.3 C.11.1).

    Attributes:
        lut: A (0028,3000) Modality LUT Sequence applies (slope and intercept then unused).
        slope: (0028,1053) Rescale Slope, or ``None`` when absent beside a Modality LUT.
        intercept: (0028,1052) Rescale Intercept, or ``None`` when absent beside a Modality LUT.
        assumed: A missing slope or intercept was taken as the identity (1 or 0).
    """

    lut: bool
    slope: float | None
    intercept: float | None
    assumed: bool


def _rescale(
    ds: Dataset, label: str, values: Mapping[str, Any], *, fill: bool = True, warn: bool = True
) -> _Rescale:
    """Validate (0028,1052)/(0028,1053), filling a missing one with the identity.

    With ``fill`` the identity is also set in ``ds`` (for ``apply_modality_lut``); a frame of a
    multi-frame or enhanced file leaves ``ds`` alone (each frame has its own rescale, applied
    through :func:`_rescale_dataset`), and only its first frame logs an assumed rescale.

    Raises:
        DicomError: a slope or intercept that is not a finite number, or a zero slope.
    """
    if _tag("ModalityLUTSequence") in ds:  # present at any size (_get drops long values)
        return _Rescale(
            True,
            _float(values.get("RescaleSlope")),
            _float(values.get("RescaleIntercept")),
            False,
        )
    assumed = []
    parsed: dict[str, float] = {}
    for keyword, tag, identity in (
        ("RescaleSlope", "(0028,1053) Rescale Slope", 1.0),
        ("RescaleIntercept", "(0028,1052) Rescale Intercept", 0.0),
    ):
        value = values.get(keyword)
        if not (isinstance(value, float) and math.isfinite(value)):
            # not one plain finite number: pydicom's reading decides (and names the fault)
            try:
                raw = ds[keyword].value if keyword in ds else None
            except Exception as exc:
                raise DicomError(f"{tag} cannot be parsed ({_cause(exc)})", label) from exc
            if raw is None or raw == "":
                if fill:
                    setattr(ds, keyword, identity)
                assumed.append(f"{tag} missing, taken as {identity:g}")
                parsed[keyword] = identity
                continue
            value = _float(raw)
            if value is None:
                raise DicomError(f"{tag} is {shown(raw, 'DS')}: must be a finite number", label)
        if keyword == "RescaleSlope" and value == 0:
            raise DicomError(f"{tag} is 0: must be a finite non-zero number", label)
        parsed[keyword] = value
    if assumed and warn:
        log.warning("%s: %s (stored values are read as HU)", label, "; ".join(assumed))
    return _Rescale(False, parsed["RescaleSlope"], parsed["RescaleIntercept"], bool(assumed))


def _has_fault(values: Mapping[str, Any], slope: float | None, intercept: float | None) -> bool:
    """The rule of :func:`has_rsna_12bit_fault` on converted values and a given rescale (both
    as stated in the file: ``None`` when missing)."""
    return (
        _int(values.get("BitsStored")) == RSNA_FAULT_BITS_STORED
        and _int(values.get("PixelRepresentation")) == RSNA_FAULT_PIXEL_REPRESENTATION
        and slope == 1.0
        and intercept is not None
        and intercept > RSNA_FAULT_INTERCEPT_ABOVE
    )


def has_rsna_12bit_fault(ds: Dataset) -> bool:
    """True when a dataset carries the RSNA-2019 12-bit Rescale Intercept fault.

    Some RSNA-2019 slices store signed 12-bit values as unsigned with a wrong Rescale Intercept.
    The rule used by the RSNA-2019 kernels (J. Howard, "Cleaning the data for rapid prototyping
    (fastai)", Kaggle 2019, ``fix_pxrepr``/``correct_dcm``): the fault is present when
    (0028,0101) Bits Stored == 12 and (0028,0103) Pixel Representation == 0 and
    (0028,1052) Rescale Intercept > -100; hemo also asks for (0028,1053) Rescale Slope == 1 and
    both present, as in every faulty RSNA slice (a 12-bit unsigned file with another slope, or
    no rescale, is not one of them). See :func:`correct_rsna_12bit` for the correction.

    Args:
        ds: A pydicom dataset. Not modified.
    """
    values = _values(ds)
    return _has_fault(
        values, _float(values.get("RescaleSlope")), _float(values.get("RescaleIntercept"))
    )


def correct_rsna_12bit(stored: npt.NDArray[np.integer]) -> npt.NDArray[np.int32]:
    """Correct stored values of a slice with the RSNA-2019 12-bit fault.

    ``corrected = (stored + 1000) mod 4096`` (the kernels' ``x = x + 1000;
    x[x >= 4096] -= 4096``), after which the Rescale Intercept is taken as -1000, so
    ``HU = corrected * RescaleSlope - 1000``: stored 0 -> 0 HU, stored 3096 (-1000 as signed
    12-bit) -> -1000 HU, stored 4095 (-1 as signed 12-bit) -> -1 HU.

    Args:
        stored: (H, W) stored values in [0, 4095]. Not modified.

    Returns:
        int32 (H, W) corrected stored values, a new array.
    """
    shifted = stored.astype(np.int32) + RSNA_FAULT_OFFSET
    np.remainder(shifted, RSNA_FAULT_MODULUS, out=shifted)
    return shifted


def _padding_range(values: Mapping[str, Any], dtype: np.dtype[Any]) -> tuple[int, int] | None:
    """Inclusive stored-value range of Pixel Padding Value / Range Limit (PS3.3 C.7.5.1.1.2).

    ``None`` when there is no padding or its range lies outside ``dtype``.
    """
    value = _int(_first(values.get("PixelPaddingValue")))
    if value is None or not np.issubdtype(dtype, np.integer):
        return None
    limit = _int(_first(values.get("PixelPaddingRangeLimit")))
    info = np.iinfo(dtype)
    low, high = (value, value) if limit is None else (min(value, limit), max(value, limit))
    low, high = max(low, int(info.min)), min(high, int(info.max))
    return None if low > high else (low, high)


def _padding_mask(
    stored: npt.NDArray[np.integer], padding: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """Pixels whose stored value lies in the inclusive ``padding`` range."""
    low, high = padding
    if low == high:
        return stored == low
    return (stored >= low) & (stored <= high)


def _float32_exact(rescale: _Rescale, max_abs_stored: int) -> bool:
    """True when HU and HU - ``config.HU_AIR`` are exact in float32 for every stored value.

    Then float32 arithmetic gives bit for bit what ``apply_modality_lut`` gives in float64 and
    the cast to float32 (integer slope and intercept, every intermediate below 2**24).
    """
    slope, intercept = rescale.slope, rescale.intercept
    if rescale.lut or slope is None or intercept is None:
        return False
    if not (slope.is_integer() and intercept.is_integer()):
        return False
    margin = abs(intercept) + abs(config.HU_AIR)
    return max_abs_stored * abs(slope) + margin < FLOAT32_EXACT_INTEGERS


def _to_hu(
    stored: npt.NDArray[np.integer], ds: Dataset, rescale: _Rescale, max_abs_stored: int
) -> npt.NDArray[np.float32]:
    """HU with values below ``config.HU_FLOOR`` set to ``config.HU_AIR``: a new float32 array.

    The common CT case (integer slope and intercept, see :func:`_float32_exact`) runs in exact
    float32: ``x = stored * slope + (intercept - HU_AIR)``, one ``cv2.threshold`` (TOZERO)
    zeroes every ``x < HU_FLOOR - HU_AIR``, then ``x + HU_AIR`` -- branch-free, where a
    masked assignment costs ~10x more on a slice that is 30 % outside the field of view.
    Anything else (a Modality LUT, fractional rescale values, very wide stored values) goes
    through ``pydicom.pixels.apply_modality_lut`` and a mask. Both give the same numbers.
    """
    air = np.float32(config.HU_AIR)
    if np.issubdtype(stored.dtype, np.integer) and _float32_exact(rescale, max_abs_stored):
        import cv2  # here, not at the top: `hemo inspect` and the index start without OpenCV

        slope = np.float32(rescale.slope)
        shift = np.float32(rescale.intercept) - air
        x = stored.astype(np.float32)
        if slope != 1:
            x *= slope
        x += shift
        # keep x >= HU_FLOOR - HU_AIR: TOZERO keeps src > thresh, so thresh is the float32 below
        keep_above = np.nextafter(np.float32(config.HU_FLOOR) - air, np.float32(-np.inf))
        cv2.threshold(x, float(keep_above), 0.0, cv2.THRESH_TOZERO, dst=x)
        x += air
        return x
    hu = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    if hu is stored or not hu.flags.writeable:
        hu = hu.copy()
    np.putmask(hu, hu < config.HU_FLOOR, air)
    return hu


def _in_place_pixels(
    ds: Dataset, values: Mapping[str, Any], header: DicomHeader, index: int = 0
) -> npt.NDArray[np.integer] | None:
    """Stored values of frame ``index`` (0-based) of uncompressed little-endian pixel data.

    Read in place, or ``None`` (pydicom decodes) for anything but the one-sample images
    :func:`_check_image` lets through in those syntaxes. Gives what pydicom's native decoder
    gives (PS3.5 section 8.1.1: unused high bits are masked, or sign-extended for Pixel
    Representation 1; frames follow one another, PS3.5 section 8.1.1). The array is a read-only
    view of the pixel data unless unused bits had to be cleared.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID")
    bits_allocated = _int(values.get("BitsAllocated"))
    bits_stored = _int(values.get("BitsStored"))
    kind = PIXEL_KINDS.get(_int(values.get("PixelRepresentation")))  # type: ignore[arg-type]
    if syntax not in IN_PLACE_SYNTAXES or kind is None or bits_allocated is None:
        return None
    if bits_stored is None or not 0 < bits_stored <= bits_allocated:
        return None
    count = header.rows * header.columns
    dtype = np.dtype(f"<{kind}{bits_allocated // 8}")
    stored = np.frombuffer(
        ds.PixelData, dtype=dtype, count=count, offset=index * count * dtype.itemsize
    )
    stored = stored.reshape(header.rows, header.columns)
    unused = bits_allocated - bits_stored
    if unused:
        stored = np.left_shift(stored, unused)
        np.right_shift(stored, unused, out=stored)
    return stored


def read_dicom(source: Source, name: str | None = None) -> CTSlice:
    """Read one CT DICOM slice into Hounsfield units.

    Args:
        source: Path, bytes or binary file-like object (an upload); any extension or none.
            A file-like object is read from its start and its position restored.
        name: Display name for messages and ``CTSlice.source``; defaults to the path or the
            upload's ``name``.

    Returns:
        The slice, with ``hu`` float32 (H, W) read-only (see the module docstring for the rules).
        An enhanced (functional-group) file of one frame is read through its functional groups.

    Raises:
        InputError: missing or empty file.
        LimitError: file over ``config.MAX_FILE_BYTES`` or Rows x Columns over
            ``config.MAX_PIXELS_PER_SLICE`` (checked before decoding).
        DicomError: not DICOM; no pixel data; non-CT modality; colour; several frames (use
            :func:`read_dicom_frames`); pixel data shorter than the header says; a rescale that
            is not a finite non-zero slope; no decoder installed for the transfer syntax; the
            decoder failed. The message names the file, the tag, the value and the rule; a
            library exception is kept as ``__cause__``.
    """
    image = _open_image(source, name)
    if image.frames > 1:
        raise DicomError(
            f"(0028,0008) Number of Frames is {image.frames}: the file holds {image.frames} "
            "slices, not one; read it with hemo.dicom.read_dicom_frames or hemo.io.iter_scans "
            "(hemo predict, hemo explain and the app read every frame)",
            image.label,
        )
    return _read_frame(image, 0)


def read_dicom_frames(source: Source, name: str | None = None) -> Iterator[CTSlice | DicomError]:
    """Read every frame of a CT DICOM file, single- or multi-frame, as slices in HU.

    The file is parsed and checked at once (a problem with the file as a whole raises here);
    frames are then decoded one at a time as the iterator is consumed, so a long series never
    sits in memory as HU all at once, and a frame that cannot be decoded is yielded as its
    :class:`~hemo.errors.DicomError` (naming the frame) while the other frames are still read.

    Args:
        source: Path, bytes or binary file-like object; any extension or none.
        name: Display name for messages and ``CTSlice.source``.

    Returns:
        An iterator over the frames in file order: a :class:`CTSlice` (``frame`` is its 1-based
        number when the file has several, else ``None``) or the frame's error.

    Raises:
        The errors of :func:`read_dicom` for the file as a whole (not "several frames").
        LimitError: more frames than ``config.MAX_SLICES_PER_SERIES``.
    """
    image = _open_image(source, name)
    return _iter_frames(image)


def _iter_frames(image: _Image) -> Iterator[CTSlice | DicomError]:
    for index in range(image.frames):
        try:
            yield _read_frame(image, index)
        except DicomError as exc:
            yield exc


class _Image(NamedTuple):
    """A parsed and checked DICOM image, ready to decode frame by frame."""

    ds: Dataset
    label: str
    values: dict[str, Any]
    header: DicomHeader
    decoder: Decoder
    plugin: str
    frames: int
    enhanced: bool


def _open_image(source: Source, name: str | None) -> _Image:
    ds, label = _parse(source, name, pixels=True)
    values = _values(ds)
    header = _header(ds, label, values)
    decoder, plugin, frames = _check_image(ds, header, values)
    enhanced = any(
        _tag(keyword) in ds
        for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
    )
    return _Image(ds, label, values, header, decoder, plugin, frames, enhanced)


def _group_item(ds: Dataset, keyword: str, index: int) -> Dataset | None:
    """Item ``index`` of a functional groups sequence (not size-capped like header values)."""
    try:
        groups = ds.get(keyword)
    except Exception:  # a corrupt sequence counts as absent; the top-level values then apply
        log.debug("unparsable %s ignored", keyword, exc_info=True)
        return None
    if not groups or index >= len(groups):
        return None
    item = groups[index]
    return item if isinstance(item, Dataset) else None


def _frame_values(image: _Image, index: int) -> dict[str, Any]:
    """The top-level values, overlaid by the shared and then the frame's functional groups."""
    out = dict(image.values)
    for keyword, item_index in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", index),
    ):
        groups = _group_item(image.ds, keyword, item_index)
        if groups is None:
            continue
        for macro, keywords in FRAME_GROUP_KEYWORDS.items():
            item = _group_item(groups, macro, 0)
            if item is not None:
                out.update(_values(item, keywords))
    return out


def _rescale_dataset(rescale: _Rescale) -> Dataset:
    """A dataset holding only a frame's rescale, for ``apply_modality_lut``."""
    ds = Dataset()
    ds.RescaleSlope = rescale.slope
    ds.RescaleIntercept = rescale.intercept
    return ds


def _read_frame(image: _Image, index: int) -> CTSlice:
    """Frame ``index`` (0-based) of a checked image as a :class:`CTSlice`."""
    ds, decoder, plugin = image.ds, image.decoder, image.plugin
    values, header, label = image.values, image.header, image.label
    multi = image.frames > 1
    if image.enhanced:
        values = _frame_values(image, index)
        header = _header(ds, label, values)
    elif multi:  # frames without functional groups: the top-level position is not each frame's
        header = dataclasses.replace(header, position_mm=None, slice_z_mm=None)
    if multi:
        label = f"{label} (frame {index + 1})"
    # a frame of a multi-frame or enhanced file leaves ds alone and warns once per file
    per_frame = image.enhanced or multi
    rescale = _rescale(ds, label, values, fill=not per_frame, warn=index == 0)
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    try:
        stored = _in_place_pixels(ds, values, header, index)
        if stored is None:
            stored, _ = decoder.as_array(ds, index=index if multi else None, decoding_plugin=plugin)
    except Exception as exc:  # decoders raise many types on corrupt data
        raise DicomError(
            f"cannot decode (7FE0,0010) Pixel Data ({syntax.name}): {_cause(exc)}", label
        ) from exc
    if stored.shape != (header.rows, header.columns):
        raise DicomError(
            f"decoded (7FE0,0010) Pixel Data has shape {stored.shape}, not (0028,0010) Rows x "
            f"(0028,0011) Columns = ({header.rows}, {header.columns})",
            label,
        )
    padding = _padding_range(values, stored.dtype)
    fault = not rescale.assumed and _has_fault(values, rescale.slope, rescale.intercept)
    max_abs_stored = _max_abs(stored.dtype)
    mask = None
    if fault:
        log.info("%s: RSNA-2019 12-bit Rescale Intercept fault corrected", label)
        mask = None if padding is None else _padding_mask(stored, padding)
        stored = correct_rsna_12bit(stored)
        max_abs_stored = RSNA_FAULT_MODULUS - 1
        # the frame's own rescale: ds stays as read (its other frames are not corrected twice)
        rescale = rescale._replace(intercept=RSNA_FAULT_INTERCEPT)
    elif padding is not None and not _padding_below_floor(rescale, padding, max_abs_stored):
        mask = _padding_mask(stored, padding)
    lut_ds = _rescale_dataset(rescale) if (per_frame or fault) and not rescale.lut else ds
    try:
        hu = _to_hu(stored, lut_ds, rescale, max_abs_stored)
    except Exception as exc:
        raise DicomError(f"cannot apply the modality LUT/rescale: {_cause(exc)}", label) from exc
    if mask is not None:
        hu[mask] = config.HU_AIR
    hu.setflags(write=False)
    metadata = dict(header.metadata)
    metadata["rsna_12bit_fault_corrected"] = fault
    metadata["rescale_assumed"] = rescale.assumed
    return CTSlice(
        hu=hu,
        source=image.label,
        pixel_spacing_mm=header.pixel_spacing_mm,
        slice_thickness_mm=header.slice_thickness_mm,
        position_mm=header.position_mm,
        orientation=header.orientation,
        slice_z_mm=header.slice_z_mm,
        instance_number=header.instance_number,
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        sop_uid=header.sop_uid,
        patient_key=header.patient_key,
        default_window=header.default_window,
        modality=header.modality or "CT",
        metadata=metadata,
        frame=index + 1 if multi else None,
        name_keys=header.name_keys,
    )


def _max_abs(dtype: np.dtype[Any]) -> int:
    """Largest magnitude an integer ``dtype`` holds (0 for non-integer dtypes: unused)."""
    if not np.issubdtype(dtype, np.integer):
        return 0
    info = np.iinfo(dtype)
    return max(abs(int(info.min)), int(info.max))


def _padding_below_floor(rescale: _Rescale, padding: tuple[int, int], max_abs_stored: int) -> bool:
    """True when every padded value is below ``config.HU_FLOOR`` in exact float32 HU.

    Padding and out-of-field values both become ``config.HU_AIR``, so the padding mask is
    then redundant: the floor rule alone gives the same pixels.
    """
    slope, intercept = rescale.slope, rescale.intercept
    if slope is None or intercept is None or not _float32_exact(rescale, max_abs_stored):
        return False
    highest = max(padding[0] * slope + intercept, padding[1] * slope + intercept)
    return highest < config.HU_FLOOR


__all__ = [
    "CTSlice",
    "DicomHeader",
    "correct_rsna_12bit",
    "has_rsna_12bit_fault",
    "name_keys",
    "phi_free_metadata",
    "pseudonymize",
    "read_dicom",
    "read_dicom_header",
    "scrub_name",
]
