"""Read PNG, JPEG and TIFF images into display grayscale (no Hounsfield units).

The kind is sniffed from the bytes (magic numbers), never from the file name. Images are decoded
with ``cv2.imdecode(..., IMREAD_UNCHANGED)``; TIFFs go through ``tifffile`` (first page only),
and through OpenCV when their compression needs a codec tifffile does not have (LZW). Declared width and height are checked against ``config.MAX_PIXELS_PER_SLICE``
before decoding. The result is float32 (H, W) in [0, 1]:

* 8-bit values / 255, 16-bit values / 65535;
* colour -> luminance Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, OpenCV's ``BGR2GRAY``);
* alpha dropped; palette images expanded by the decoder.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hemo import config
from hemo.errors import HemoError, ImageError, LimitError
from hemo.sources import Source, read_bytes, read_head, source_name

#: Magic numbers (PNG spec 5.2; JPEG ITU T.81 B.1.1.2 SOI; TIFF 6.0 section 2; PKWARE APPNOTE
#: 4.3.7 local header and 4.3.16 end of central directory for an empty archive; DICOM PS3.10 7.1).
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
DICM_OFFSET = 128
DICM_MAGIC = b"DICM"
#: gzip (RFC 1952 2.3.1), e.g. a ``.nii.gz`` volume.
GZIP_MAGIC = b"\x1f\x8b"
#: NIfTI-1 and NIfTI-2 (header size, offset of the magic, single-file magic): nifti1.h, nifti2.h.
NIFTI_SIGNATURES = ((1, 348, 344, b"n+1\x00"), (2, 540, 4, b"n+2\x00"))
#: Magic of a NIfTI header whose image is in a separate ``.img`` file.
NIFTI_PAIR_MAGICS = (b"ni1\x00", b"ni2\x00")
#: Bytes needed by :func:`sniff_kind` (a NIfTI-1 magic ends at byte 348).
SNIFF_BYTES = 348
#: JPEG end-of-image marker (ITU T.81 B.1.1.2); a file without it is truncated.
JPEG_EOI = b"\xff\xd9"
#: JPEG start-of-frame markers that carry the image size (T.81 Table B.1), i.e. 0xC0-0xCF
#: except DHT (0xC4), JPG (0xC8) and DAC (0xCC).
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Luminance weights in OpenCV's BGR channel order (BT.601).
BGR_LUMA = np.array([0.114, 0.587, 0.299], dtype=np.float32)
#: Full-scale value per supported sample dtype.
FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
IMAGE_KINDS = ("png", "jpeg", "tiff")


@dataclass(frozen=True, eq=False)
class Image2D:
    """A decoded image in display grayscale.

    Attributes:
        pixels: float32 (H, W) in [0, 1], read-only.
        source: Path or upload name.
        kind: ``"png"``, ``"jpeg"`` or ``"tiff"`` (sniffed from the bytes).
        original_shape: Shape as decoded, e.g. ``(957, 821, 4)``.
        bit_depth: 8 or 16 bits per sample.
    """

    pixels: npt.NDArray[np.float32] = field(repr=False)
    source: str
    kind: str
    original_shape: tuple[int, ...]
    bit_depth: int

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image in pixels."""
        return self.pixels.shape  # type: ignore[return-value]


#: A whole PNG ends with its IEND chunk (empty, then its CRC).
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: Bytes read from a file's end to look for its IEND chunk (writers may add a little after it).
TAIL_BYTES = 1024


def truncation_reason(path: str | os.PathLike) -> str | None:
    """Why a PNG or JPEG file is cut short, from its first and last bytes only (no decoding:
    cheap enough for every image of a large dataset); ``None`` for a whole one or another kind.

    Raises:
        OSError: The file cannot be read.
    """
    with open(path, "rb") as handle:
        head = handle.read(len(PNG_MAGIC))
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - TAIL_BYTES))
        tail = handle.read()
    if head.startswith(PNG_MAGIC) and PNG_END not in tail:
        return "the PNG ends before its IEND chunk: the file is truncated"
    if head.startswith(JPEG_MAGIC) and not tail.rstrip(b"\x00").endswith(JPEG_EOI):
        return "the JPEG has no end-of-image marker: the file is truncated"
    return None


def sniff_kind(head: bytes) -> str | None:
    """Kind of a file from its first bytes.

    Args:
        head: The first :data:`SNIFF_BYTES` (348) bytes or more; fewer is fine for images and
            DICOM (132), but a NIfTI-2 magic sits at byte 4 and a NIfTI-1 one at byte 344.

    Returns:
        ``"dicom"``, ``"png"``, ``"jpeg"``, ``"tiff"``, ``"zip"``, ``"nifti"`` (a NIfTI-1 or -2
        volume, header and image in one file), ``"gzip"`` (e.g. a ``.nii.gz``) or ``None`` when
        unknown. A DICOM without the PS3.10 preamble is ``None`` here (see :mod:`hemo.io`).
    """
    head = bytes(head[:SNIFF_BYTES])
    if head[DICM_OFFSET : DICM_OFFSET + len(DICM_MAGIC)] == DICM_MAGIC:
        return "dicom"
    if nifti_version(head) is not None:
        return "nifti"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(TIFF_MAGICS):
        return "tiff"
    if head.startswith(ZIP_MAGICS):
        return "zip"
    return None


#: Files :func:`images_only` sniffs.
IMAGES_ONLY_SAMPLE = 16


def images_only(paths: Iterable[Any]) -> tuple[str, str] | None:
    """``(first file, its kind)`` when the first :data:`IMAGES_ONLY_SAMPLE` readable files of
    ``paths`` are all PNG/JPEG/TIFF images (no Hounsfield units anywhere), else ``None``.

    Sniffed from their first bytes; files that cannot be read are passed over (they are
    reported where they are read).
    """
    kinds: list[tuple[str, str]] = []
    for path in paths:
        if len(kinds) >= IMAGES_ONLY_SAMPLE:
            break
        try:
            kinds.append((str(path), sniff_kind(read_head(path, SNIFF_BYTES)) or "dicom"))
        except HemoError:
            continue
    if kinds and all(kind in IMAGE_KINDS for _, kind in kinds):
        return kinds[0]
    return None


def nifti_version(head: bytes) -> int | None:
    """1 or 2 when ``head`` starts a NIfTI-1 / NIfTI-2 header (single file or .hdr), else None.

    The header size (348 or 540, either byte order) and the magic must both match.
    """
    for version, size, offset, magic in NIFTI_SIGNATURES:
        if len(head) < offset + len(magic):
            continue
        sizes = {struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]}
        found = head[offset : offset + len(magic)]
        if size in sizes and (found == magic or found in NIFTI_PAIR_MAGICS):
            return version
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the IHDR chunk (PNG spec 11.2.2), or ``None`` if absent."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the first SOF segment (T.81 B.2.2), or ``None`` if not found.

    Bytes between segments that are not a marker are skipped to the next ``FF``, as libjpeg
    skips them (with only a warning) before it decodes: a stray byte must not hide the size."""
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return None
            continue
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in JPEG_SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return height, width
        pos += 2 + length
    return None


def _check_pixels(height: int, width: int, label: str) -> None:
    if height * width > config.MAX_PIXELS_PER_SLICE:
        raise LimitError(
            f"image is {width} x {height} = {width * height} pixels, more than the limit of "
            f"{config.MAX_PIXELS_PER_SLICE} (config.MAX_PIXELS_PER_SLICE)",
            label,
        )


def _check_min_side(height: int, width: int, label: str) -> None:
    if min(height, width) < config.MIN_IMAGE_SIDE:
        raise ImageError(
            f"image is {width} x {height} pixels: each side must be at least "
            f"{config.MIN_IMAGE_SIDE} pixels (config.MIN_IMAGE_SIDE) to hold a head CT",
            label,
        )


def _decode_tiff(data: bytes, label: str) -> npt.NDArray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if not tif.pages:
                raise ImageError("TIFF holds no image (no pages)", label)
            page = tif.pages[0]
            # the tags, not the array shape: a planar page's shape starts with its samples
            _check_pixels(int(page.imagelength), int(page.imagewidth), label)
            return page.asarray()
    except ImageError:
        raise
    except LimitError:
        raise
    except ValueError as exc:
        if "imagecodecs" not in str(exc):
            raise ImageError(f"cannot decode the TIFF (ValueError: {exc})", label) from exc
        # A compression tifffile leaves to imagecodecs (LZW, as OpenCV and many scanners
        # write): the structure was read and checked above; OpenCV's libtiff decodes it
        return _decode_tiff_with_opencv(data, label, exc)
    except Exception as exc:  # tifffile raises many types on corrupt data
        raise ImageError(f"cannot decode the TIFF ({type(exc).__name__}: {exc})", label) from exc


def _decode_tiff_with_opencv(data: bytes, label: str, cause: Exception) -> npt.NDArray:
    import cv2

    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageError(f"cannot decode the TIFF ({cause}; OpenCV: {exc.err})", label) from exc
    if array is None:
        raise ImageError(f"cannot decode the TIFF ({cause}; OpenCV could not either)", label)
    return array


def _decode(data: bytes, kind: str, label: str) -> npt.NDArray:
    import cv2

    declared = _png_size(data) if kind == "png" else _jpeg_size(data) if kind == "jpeg" else None
    if declared is not None:
        _check_pixels(*declared, label)
    elif kind in ("png", "jpeg"):  # never decode what has not said how large it is
        raise ImageError(
            f"cannot read the image size from the {kind.upper()} header: the file is corrupt",
            label,
        )
    if kind == "jpeg" and not data.rstrip(b"\x00").endswith(JPEG_EOI):
        raise ImageError(
            "JPEG ends without its end-of-image marker (FFD9): the file is truncated", label
        )
    if kind == "tiff":
        return _decode_tiff(data, label)
    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageError(f"cannot decode the {kind.upper()} ({exc.err})", label) from exc
    if array is None:
        raise ImageError(
            f"cannot decode the {kind.upper()}: the file is truncated or corrupt", label
        )
    return array


def _to_gray(array: npt.NDArray, label: str) -> tuple[npt.NDArray[np.float32], int]:
    """Decoded samples -> float32 (H, W) in [0, 1] and the bit depth."""
    if array.dtype not in FULL_SCALE:
        raise ImageError(
            f"samples are {array.dtype}: only 8-bit and 16-bit unsigned images are supported",
            label,
        )
    scale = np.float32(1.0 / FULL_SCALE[array.dtype])
    bit_depth = array.dtype.itemsize * 8
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return array.astype(np.float32) * scale, bit_depth
    if array.ndim != 3 or array.shape[2] not in (2, 3, 4):
        raise ImageError(
            f"decoded shape {array.shape} is not (H, W), (H, W, 3) or (H, W, 4)", label
        )
    if array.shape[2] == 2:  # gray + alpha
        return array[:, :, 0].astype(np.float32) * scale, bit_depth
    bgr = array[:, :, :3].astype(np.float32)
    return (bgr @ BGR_LUMA) * scale, bit_depth


def read_image(source: Source, name: str | None = None) -> Image2D:
    """Read a PNG, JPEG or TIFF into display grayscale.

    Args:
        source: Path, bytes or binary file-like object; the extension is ignored.
        name: Display name for messages and ``Image2D.source``.

    Returns:
        The image; ``pixels`` float32 (H, W) in [0, 1], read-only.

    Raises:
        InputError: missing or empty file.
        LimitError: file over ``config.MAX_FILE_BYTES`` or more than
            ``config.MAX_PIXELS_PER_SLICE`` pixels (checked before decoding).
        ImageError: not a PNG/JPEG/TIFF, truncated or corrupt, a side under
            ``config.MIN_IMAGE_SIDE``, or samples that are not 8/16-bit unsigned.
    """
    label = source_name(source, name)
    data = read_bytes(source, label)
    kind = sniff_kind(data)
    if kind not in IMAGE_KINDS:
        found = f"a {kind.upper()} file" if kind else "not a PNG, JPEG or TIFF file"
        raise ImageError(
            f"is {found} (the kind is read from the bytes, not the extension)"
            if kind
            else f"{found} (the kind is read from the bytes, not the extension)",
            label,
        )
    array = _decode(data, kind, label)
    if array.ndim < 2 or array.size == 0:
        raise ImageError(f"decoded image has shape {array.shape}: no pixels", label)
    _check_min_side(array.shape[0], array.shape[1], label)
    pixels, bit_depth = _to_gray(array, label)
    pixels = np.clip(pixels, 0.0, 1.0, out=pixels)
    pixels.setflags(write=False)
    return Image2D(
        pixels=pixels,
        source=label,
        kind=kind,
        original_shape=tuple(int(s) for s in array.shape),
        bit_depth=bit_depth,
    )
