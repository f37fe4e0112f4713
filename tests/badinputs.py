"""A corpus of bad (and borderline) inputs, generated in memory by code.

:func:`corpus` returns ``(kind, name, bytes)`` triples; :data:`EXPECTED` says, per kind, what the
library must do with it: the :class:`~hemo.errors.HemoError` subclass and a regex the message must
match (the message always starts with the input's name), or ``None`` where the input is documented
as accepted (e.g. a CT without rescale tags, a 16-bit PNG, a JPEG named ``.png``). ``via`` says
which entry point sees it: ``scan`` (``read_scan``), ``batch`` (``iter_scans``: zips, whose
per-member results are checked by name) or ``series`` (``iter_scans`` then ``group_series``).
Nothing here touches the disk.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import cv2
import dicom_factory
import numpy as np
from dicom_factory import to_bytes
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless, generate_uid

from hemo.errors import (
    DicomError,
    HemoError,
    ImageError,
    InputError,
    LimitError,
    SeriesError,
)

#: Seed of every random payload in the corpus (same seed, same bytes).
SEED = 6
#: Side of the synthetic CT slices (pixels); small so the corpus builds in milliseconds.
SIDE = 64
#: Rows and Columns declared by the "far beyond sane limits" DICOM (65535^2 ~ 4.3 G pixels).
HUGE_SIDE = 65535
#: Uncompressed size declared by the patched zip central directory (~4.29 GB, no Zip64).
HUGE_ZIP_DECLARED = 0xFFFFFFF0
#: Timestamp of every zip member (fixed, so the archives are the same bytes on every run).
ZIP_DATE_TIME = (2020, 1, 1, 0, 0, 0)
#: Bytes of zeros inside the zip bomb (compresses ~1000-fold).
BOMB_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Expect:
    """What the library must do with one kind of input.

    Attributes:
        error: The HemoError subclass raised (or carried by the batch result); ``None`` when the
            input is accepted and gives a valid scan.
        pattern: Regex the message must match after the input's name (``re.search``).
        via: ``"scan"``, ``"batch"`` (a zip: ``member`` is checked) or ``"series"``.
        member: For ``batch``: name of the result (``name`` or ``name/member``) that carries it.
        frames: For a multi-frame DICOM: ``read_scan`` (one scan) refuses it with ``error``,
            while the batch readers (``iter_scans``, ``hemo predict``, ``hemo inspect``) read
            this many slices from it.
    """

    error: type[HemoError] | None
    pattern: str = ""
    via: str = "scan"
    member: str | None = None
    frames: int = 0


def ct_dataset(hu=None, **kwargs):
    """:func:`dicom_factory.ct_dataset` with a SOP Instance UID fixed by its arguments."""
    ds = dicom_factory.ct_dataset(hu, **kwargs)
    uid = generate_uid(entropy_srcs=[str(SEED), repr(sorted(kwargs.items()))])
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPInstanceUID = uid
    return ds


def ct_bytes(hu=None, preamble: bool = True, **kwargs) -> bytes:
    """:func:`ct_dataset` encoded as a PS3.10 file (deterministic bytes)."""
    return to_bytes(ct_dataset(hu, **kwargs), preamble=preamble)


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def _png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    assert ok
    return buffer.tobytes()


def _jpeg(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", array)
    assert ok
    return buffer.tobytes()


def _head_png(dtype=np.uint8) -> np.ndarray:
    yy, xx = np.mgrid[:SIDE, :SIDE]
    disc = (yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2 < (SIDE / 2.5) ** 2
    full = np.iinfo(dtype).max
    return np.where(disc, full // 2, 0).astype(dtype)


def _palette_png() -> bytes:
    from PIL import Image

    image = Image.fromarray(_head_png()).convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _huge_ihdr_png() -> bytes:
    """A PNG whose IHDR declares 100000 x 100000 pixels (CRC fixed), with a tiny body."""
    data = bytearray(_png(_head_png()))
    struct.pack_into(">II", data, 16, 100_000, 100_000)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _compressed_garbage(syntax, soi: bytes) -> bytes:
    """A CT whose transfer syntax is compressed and whose single fragment is random bytes."""
    ds = ct_dataset()
    ds.file_meta.TransferSyntaxUID = syntax
    garbage = _rng().integers(0, 256, 3000, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([soi + garbage])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def _dicom_with(**changes) -> bytes:
    ds = ct_dataset()
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return to_bytes(ds)


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.compress_type = method
            archive.writestr(info, data)
    return buffer.getvalue()


def _zip_declaring_huge_size() -> bytes:
    """A small zip whose central directory claims one member of ~4.29 GB uncompressed."""
    data = bytearray(_zip({"slice.dcm": ct_bytes()}))
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, HUGE_ZIP_DECLARED)
    return bytes(data)


def _multiframe() -> bytes:
    ds = ct_dataset()
    ds.NumberOfFrames = 4
    ds.PixelData = ds.PixelData * 4
    return to_bytes(ds)


def _nifti(hu: bool = True) -> bytes:
    """A 3-slice NIfTI-1 volume: a disc of brain in air, in HU (int16) or scaled to 0-1."""
    import nibabel

    yy, xx = np.mgrid[:SIDE, :SIDE]
    disc = (yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2 < (SIDE / 3) ** 2
    plane = np.where(disc, 40.0, -1000.0)
    volume = np.stack([plane] * 3, axis=-1)
    data = volume.astype(np.int16) if hu else ((volume + 1000) / 1040).astype(np.float32)
    return nibabel.Nifti1Image(data, np.diag([-0.5, -0.5, 5.0, 1.0])).to_bytes()


def _rgb() -> bytes:
    ds = ct_dataset()
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.PixelData = ds.PixelData * 3
    return to_bytes(ds)


def _preamble_only() -> bytes:
    return b"\x00" * 128 + b"DICM"


def _meta_only() -> bytes:
    """Preamble, DICM and the file meta group, but no dataset after it."""
    full = ct_bytes()
    ds = ct_dataset()
    meta_end = full.find(b"\x08\x00\x16\x00")  # (0008,0016) SOP Class UID: first dataset tag
    assert meta_end > 132, ds
    return full[:meta_end]


def _pixel_offset(data: bytes) -> int:
    """Offset of the first pixel byte of an explicit-VR little-endian (7FE0,0010) OW element."""
    return data.rfind(b"\xe0\x7f\x10\x00") + 12


def corpus() -> list[tuple[str, str, bytes]]:
    """The bad-input corpus: ``(kind, name, bytes)`` for every kind in :data:`EXPECTED`.

    Returns:
        One triple per kind, in a fixed order; the bytes are the same on every call.
    """
    good = ct_bytes()
    pixels_at = _pixel_offset(good)
    rng = _rng()
    elf = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00" + rng.bytes(400)
    dup_a = ct_bytes(z_mm=5.0, instance=1)
    dup_b = ct_bytes(z_mm=5.0, instance=2)
    items = [
        ("empty", "empty.dcm", b""),
        ("random_bytes", "random.dcm", rng.bytes(4096)),
        ("text_as_dcm", "notes.dcm", b"Patient was seen today; scan attached.\n" * 40),
        ("elf_as_dcm", "program.dcm", elf),
        ("shell_as_dcm", "run.dcm", b'#!/bin/sh\nrm -rf "$HOME"\n' + b"# padding\n" * 30),
        ("truncated_header", "trunc_header.dcm", good[:200]),
        ("truncated_dataset", "trunc_dataset.dcm", good[: pixels_at - 300]),
        ("truncated_pixels", "trunc_pixels.dcm", good[: pixels_at + SIDE * SIDE]),
        ("no_pixel_data", "nopixels.dcm", _dicom_with(PixelData=None)),
        ("preamble_only", "preamble.dcm", _preamble_only()),
        ("meta_only", "meta.dcm", _meta_only()),
        ("headerless_no_image", "bare", to_bytes(_strip_image(ct_dataset()), preamble=False)),
        ("modality_mr", "mr.dcm", ct_bytes(modality="MR")),
        ("modality_cr", "cr.dcm", ct_bytes(modality="CR")),
        ("modality_us", "us.dcm", ct_bytes(modality="US")),
        ("rgb_dicom", "rgb.dcm", _rgb()),
        ("bits_allocated_lie", "bits32.dcm", _dicom_with(BitsAllocated=32, BitsStored=32)),
        ("bits_allocated_odd", "bits12.dcm", _dicom_with(BitsAllocated=12)),
        ("rows_lie", "rows.dcm", _dicom_with(Rows=SIDE * 4)),
        ("columns_lie", "columns.dcm", _dicom_with(Columns=SIDE * 2)),
        ("zero_rows", "rows0.dcm", _dicom_with(Rows=0)),
        ("huge_declared", "huge.dcm", _dicom_with(Rows=HUGE_SIDE, Columns=HUGE_SIDE)),
        ("multiframe", "multiframe.dcm", _multiframe()),
        ("missing_rescale", "norescale.dcm", ct_bytes(intercept=None, slope=None)),
        ("zero_slope", "slope0.dcm", ct_bytes(RescaleSlope=0)),
        ("jpeg_lossless_garbage", "jll.dcm", _compressed_garbage(JPEGLosslessSV1, b"\xff\xd8")),
        ("j2k_garbage", "j2k.dcm", _compressed_garbage(JPEG2000Lossless, b"\xff\x4f\xff\x51")),
        ("rle_garbage", "rle.dcm", _compressed_garbage(RLELossless, b"")),
        ("png_16bit", "sixteen.png", _png(_head_png(np.uint16))),
        ("png_palette", "palette.png", _palette_png()),
        ("png_rgba", "rgba.png", _png(np.dstack([_head_png()] * 3 + [_head_png() // 2 + 1]))),
        ("png_1x1", "dot.png", _png(np.zeros((1, 1), np.uint8))),
        ("png_empty", "empty.png", b""),
        ("png_truncated", "cut.png", _png(_head_png())[:60]),
        ("png_huge_ihdr", "huge.png", _huge_ihdr_png()),
        ("jpeg_named_png", "photo.png", _jpeg(_head_png())),
        ("jpeg_truncated", "cut.jpg", _jpeg(_head_png())[:-200]),
        ("nifti_not_hu", "unit.nii", _nifti(hu=False)),
        ("nifti_truncated", "cut.nii", _nifti()[:1000]),
        ("gzip_not_nifti", "table.nii.gz", gzip.compress(b"id,label\n1,0\n" * 20, mtime=0)),
        ("zip_traversal", "traversal.zip", _zip({"../../etc/evil.dcm": good, "ok.dcm": good})),
        ("zip_bomb", "bomb.zip", _zip({"zeros.dcm": bytes(BOMB_BYTES)})),
        ("zip_huge_declared", "declared.zip", _zip_declaring_huge_size()),
        ("zip_mixed", "mixed.zip", _zip({"a_good.dcm": good, "b_bad.dcm": b"garbage" * 40})),
        ("zip_nested", "nested.zip", _zip({"inner.zip": _zip({"x.dcm": good})})),
        ("zip_corrupt", "corrupt.zip", b"PK\x03\x04" + rng.bytes(600)),
        ("series_duplicate_positions", "dups.zip", _zip({"s1.dcm": dup_a, "s2.dcm": dup_b})),
    ]
    assert [k for k, _, _ in items] == list(EXPECTED), "corpus and EXPECTED disagree"
    return items


def _strip_image(ds):
    """A dataset without Rows, Columns and Pixel Data (a headerless file with no image)."""
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(ds, keyword)
    return ds


_NOT_A_SCAN = r"not a DICOM, PNG, JPEG, TIFF or NIfTI file \(the kind is read from the bytes"
_SHORT = r"\(7FE0,0010\) Pixel Data is \d+ bytes, shorter than .*: the file is truncated or its header lies"

#: Per kind: what the library must do (see :class:`Expect`).
EXPECTED: dict[str, Expect] = {
    "empty": Expect(InputError, r"file is empty \(0 bytes\)"),
    "random_bytes": Expect(InputError, _NOT_A_SCAN),
    "text_as_dcm": Expect(InputError, _NOT_A_SCAN),
    "elf_as_dcm": Expect(InputError, _NOT_A_SCAN),
    "shell_as_dcm": Expect(InputError, _NOT_A_SCAN),
    "truncated_header": Expect(DicomError, r"not a readable DICOM file|Pixel Data is missing"),
    "truncated_dataset": Expect(DicomError, r"not a readable DICOM file|Pixel Data is missing"),
    "truncated_pixels": Expect(DicomError, rf"not a readable DICOM file|{_SHORT}"),
    "no_pixel_data": Expect(
        DicomError, r"\(7FE0,0010\) Pixel Data is missing: the file holds no image"
    ),
    "preamble_only": Expect(DicomError, r"Pixel Data is missing|not a readable DICOM file"),
    "meta_only": Expect(DicomError, r"Pixel Data is missing|not a readable DICOM file"),
    "headerless_no_image": Expect(
        DicomError, r"is DICOM \(without the 128-byte preamble\) but holds no image .*CT Image"
    ),
    "modality_mr": Expect(DicomError, r"\(0008,0060\) Modality is 'MR': hemo reads CT only"),
    "modality_cr": Expect(DicomError, r"\(0008,0060\) Modality is 'CR': hemo reads CT only"),
    "modality_us": Expect(DicomError, r"\(0008,0060\) Modality is 'US': hemo reads CT only"),
    "rgb_dicom": Expect(DicomError, r"\(0028,0002\) Samples per Pixel is 3: colour DICOM"),
    "bits_allocated_lie": Expect(DicomError, _SHORT),
    "bits_allocated_odd": Expect(DicomError, r"\(0028,0100\) Bits Allocated is 12: CT pixel data"),
    "rows_lie": Expect(DicomError, _SHORT),
    "columns_lie": Expect(DicomError, _SHORT),
    "zero_rows": Expect(DicomError, r"Rows x \(0028,0011\) Columns is 0 x 64: both must be"),
    "huge_declared": Expect(
        LimitError, r"65535 x 65535 = 4294836225 pixels, more than the limit of \d+"
    ),
    "multiframe": Expect(
        DicomError, r"\(0028,0008\) Number of Frames is 4: the file holds 4 slices", frames=4
    ),
    "missing_rescale": Expect(None),
    "zero_slope": Expect(
        DicomError, r"\(0028,1053\) Rescale Slope is 0: must be a finite non-zero"
    ),
    "jpeg_lossless_garbage": Expect(DicomError, r"cannot decode \(7FE0,0010\) Pixel Data \(JPEG"),
    "j2k_garbage": Expect(DicomError, r"cannot decode \(7FE0,0010\) Pixel Data \(JPEG 2000"),
    "rle_garbage": Expect(DicomError, r"cannot decode \(7FE0,0010\) Pixel Data \(RLE Lossless"),
    "png_16bit": Expect(None),
    "png_palette": Expect(None),
    "png_rgba": Expect(None),
    "png_1x1": Expect(ImageError, r"image is 1 x 1 pixels: each side must be at least 16"),
    "png_empty": Expect(InputError, r"file is empty \(0 bytes\)"),
    "png_truncated": Expect(ImageError, r"cannot decode the PNG: the file is truncated or corrupt"),
    "png_huge_ihdr": Expect(LimitError, r"image is 100000 x 100000 = 10000000000 pixels"),
    "jpeg_named_png": Expect(None),
    "jpeg_truncated": Expect(ImageError, r"JPEG ends without its end-of-image marker"),
    "nifti_not_hu": Expect(InputError, r"its values do not look like Hounsfield units"),
    "nifti_truncated": Expect(InputError, r"the NIfTI header declares .* but the file holds 1000"),
    "gzip_not_nifti": Expect(InputError, r"not a NIfTI-1 or NIfTI-2 volume"),
    "zip_traversal": Expect(
        SeriesError,
        r"zip member path '\.\./\.\./etc/evil\.dcm' leaves the archive",
        via="batch",
        member="traversal.zip/../../etc/evil.dcm",
    ),
    "zip_bomb": Expect(
        LimitError, r"zip expands \d+-fold .* refused as a possible zip bomb", via="batch"
    ),
    "zip_huge_declared": Expect(
        LimitError, r"zip declares 4294967280 bytes uncompressed, more than the limit", via="batch"
    ),
    "zip_mixed": Expect(InputError, _NOT_A_SCAN, via="batch", member="mixed.zip/b_bad.dcm"),
    "zip_nested": Expect(
        InputError, r"nested zip archive: not expanded", via="batch", member="nested.zip/inner.zip"
    ),
    "zip_corrupt": Expect(SeriesError, r"not a readable zip archive", via="batch"),
    "series_duplicate_positions": Expect(
        SeriesError, r"two slices at the same position z = 5\.000 mm", via="series"
    ),
}

#: Kinds a batch reader (``iter_scans``) must report with at least one good result beside them.
BATCH_WITH_GOOD = ("zip_traversal", "zip_mixed")
