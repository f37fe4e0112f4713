"""One entry point for every input: a DICOM or image file, a folder, a zip, or an upload.

:func:`read_scan` reads one file, choosing the reader from the bytes (never the name).
:func:`iter_scans` walks a batch and yields one :class:`ScanResult` per scan, with an error in
place of the scan when that input is bad; one bad file never stops the batch.

Batch rules (documented so results are predictable):

* Folders are walked recursively in sorted order; hidden files and folders (a name starting with
  ``.``), ``__MACOSX`` and ``DICOMDIR`` are skipped.
* In folders and zips, a file whose bytes are not DICOM/PNG/JPEG/TIFF is read anyway (and its
  error reported) only when its suffix is a scan suffix or it has none (DICOM files often have no
  extension) and its first bytes are not plain text; other files (``.csv``, ``.txt``, ``.json``,
  a ``notes`` or ``README`` without extension ...) are skipped quietly.
* A multi-frame DICOM gives one result per frame, each named by the file (the scan's ``frame``
  tells them apart); a frame that cannot be decoded is that frame's error, the rest are read.
  A NIfTI volume (``.nii``, ``.nii.gz``; :mod:`hemo.nifti`) gives one result per axial slice the
  same way. In folders and zips a gzip file is read only when named ``*.nii.gz``.
* Zip members are named ``zipname/member``; a member with an absolute path or a ``..`` part is
  refused (SeriesError) and the other members are still read. An archive with more than
  ``config.MAX_ZIP_MEMBERS`` members, more than ``config.MAX_ZIP_UNCOMPRESSED_BYTES`` declared
  in total, or an overall compression ratio over ``config.MAX_ZIP_RATIO`` is refused whole
  (LimitError); a member over the ratio or ``config.MAX_FILE_BYTES`` is refused alone. Nested
  zips are not expanded (reported as an error). Bytes are never written to disk.
"""

from __future__ import annotations

import logging
import lzma
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hemo import config
from hemo.dicom import CTSlice, read_dicom, read_dicom_frames
from hemo.errors import (
    DicomError,
    HemoError,
    InputError,
    LimitError,
    NoImageDicomError,
    SeriesError,
)
from hemo.images import IMAGE_KINDS, SNIFF_BYTES, Image2D, read_image, sniff_kind
from hemo.nifti import read_nifti
from hemo.sources import Source, as_stream, is_path, read_bytes, read_head, source_name

log = logging.getLogger(__name__)

#: What a damaged zip raises while its members are read: a bad header or CRC (``BadZipFile``),
#: a corrupt deflate stream (``zlib.error``), a truncated one (``EOFError``), bad LZMA data.
DAMAGED_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, lzma.LZMAError)
#: ... and besides, reading one from bytes: a compression method zipfile cannot read
#: (``NotImplementedError``: Deflate64, say), bzip2 data errors (``OSError``), encrypted members
#: (``RuntimeError``), ZIP64 fields out of range (``LargeZipFile``, ``ValueError``).
ZIP_READ_ERRORS = (
    *DAMAGED_ZIP_ERRORS,
    NotImplementedError,
    zipfile.LargeZipFile,
    OSError,
    ValueError,
    RuntimeError,
)

Scan = CTSlice | Image2D

#: Suffixes of files that are scans even when their bytes cannot be sniffed (lower case).
SCAN_SUFFIXES = frozenset(
    {".dcm", ".dicom", ".dic", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii"}
)
#: Kinds (:func:`hemo.images.sniff_kind`) read as a NIfTI volume; a gzip stream must hold one.
VOLUME_KINDS = ("nifti", "gzip")
#: A gzip file in a folder or zip is read only under this suffix (others, e.g. ``x.csv.gz``,
#: are skipped quietly).
NIFTI_GZ_SUFFIX = ".nii.gz"
#: File and folder names skipped in folders and zips.
SKIPPED_NAMES = frozenset({"DICOMDIR", "__MACOSX", "Thumbs.db"})


@dataclass(frozen=True, eq=False)
class ScanResult:
    """One input of a batch: a scan, or the error that input gave.

    Attributes:
        name: Path, upload name, or ``archive.zip/member`` for a zip member.
        scan: The scan, or ``None`` when reading failed.
        error: The error, or ``None`` on success.
    """

    name: str
    scan: Scan | None
    error: HemoError | None

    @property
    def ok(self) -> bool:
        """True when the scan was read."""
        return self.error is None


def read_scan(source: Source, name: str | None = None) -> Scan:
    """Read one DICOM, PNG, JPEG or TIFF, choosing the reader from the bytes.

    A file without a known signature is tried as a DICOM without preamble (forced read,
    accepted only when it holds image data).

    Args:
        source: Path, bytes or binary file-like object.
        name: Display name for messages and the result's ``source``.

    Returns:
        A :class:`~hemo.dicom.CTSlice` or an :class:`~hemo.images.Image2D`.

    Raises:
        InputError: unknown kind, a zip (use :func:`iter_scans`), missing or empty file.
        DicomError, ImageError, LimitError: from the readers; a multi-frame DICOM is several
            scans (DicomError; use :func:`iter_scans`).
    """
    label = source_name(source, name)
    data = read_bytes(source, label)
    kind = sniff_kind(data[:SNIFF_BYTES])
    if kind == "dicom":
        return read_dicom(data, label)
    if kind in IMAGE_KINDS:
        return read_image(data, label)
    if kind == "zip":
        raise InputError("is a zip archive, not one scan: read it with iter_scans", label)
    if kind in VOLUME_KINDS:
        slices = read_nifti(data, label)
        first = next(slices, None)
        if first is None or first.frame is not None:
            count = 0 if first is None else first.metadata["NumberOfFrames"]
            raise InputError(
                f"is a NIfTI volume of {count} slices, not one scan: read it with iter_scans "
                "(hemo predict, hemo explain and the app read every slice)",
                label,
            )
        return first
    try:
        return read_dicom(data, label)
    except DicomError as exc:
        raise _not_a_scan(label, exc) from exc


def _skipped(parts: Iterable[str]) -> bool:
    return any(part.startswith(".") or part in SKIPPED_NAMES for part in parts)


def _worth_reading(name: str, head: bytes) -> bool:
    """Whether a folder/zip member is read (see the module docstring)."""
    kind = sniff_kind(head)
    if kind == "gzip":
        return name.lower().endswith(NIFTI_GZ_SUFFIX)
    if kind is not None:
        return True
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == "":
        # DICOM often has no extension (and sometimes no preamble): read it, unless it is text
        return not _is_text(head)
    return suffix in SCAN_SUFFIXES


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes are plain text (a note, a README without extension).

    Binary formats, DICOM without a preamble included (it starts with a little-endian tag,
    ``08 00 ...``), hold NUL or other control bytes within their first bytes.
    """
    if not head or b"\0" in head:
        return False
    text = head.decode("utf-8", errors="ignore")  # a character cut at the end is dropped
    return all(c.isprintable() or c in "\t\n\r\f" for c in text)


def _results(name: str, data: bytes) -> Iterator[ScanResult]:
    """One result per scan of one file: every frame of a DICOM, every slice of a NIfTI volume,
    else the one image."""
    kind = sniff_kind(data[:SNIFF_BYTES])
    if kind in VOLUME_KINDS:
        try:
            slices = read_nifti(data, name)
            for scan in slices:
                yield ScanResult(name, scan, None)
        except HemoError as exc:
            yield ScanResult(name, None, exc)
        return
    if kind is not None and kind != "dicom":
        try:
            yield ScanResult(name, read_scan(data, name), None)
        except HemoError as exc:
            yield ScanResult(name, None, exc)
        return
    try:
        frames = read_dicom_frames(data, name)
    except DicomError as exc:
        error: HemoError = exc if kind == "dicom" else _not_a_scan(name, exc)
        yield ScanResult(name, None, error)
        return
    except HemoError as exc:
        yield ScanResult(name, None, exc)
        return
    for frame in frames:
        if isinstance(frame, CTSlice):
            yield ScanResult(name, frame, None)
        else:
            yield ScanResult(name, None, frame)


def _not_a_scan(label: str, cause: DicomError) -> InputError:
    if isinstance(cause, NoImageDicomError):
        return cause  # DICOM after all, read without its marker: say what it holds
    error = InputError(
        "not a DICOM, PNG, JPEG, TIFF or NIfTI file (the kind is read from the bytes, not the "
        "extension)",
        label,
    )
    error.__cause__ = cause
    return error


def _unsafe_member(member: str) -> bool:
    normalised = member.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        return True
    return ".." in normalised.split("/")


def _zip_limits(infos: list[zipfile.ZipInfo], archive_bytes: int, label: str) -> None:
    if len(infos) > config.MAX_ZIP_MEMBERS:
        raise LimitError(
            f"zip has {len(infos)} members, more than the limit of {config.MAX_ZIP_MEMBERS} "
            "(config.MAX_ZIP_MEMBERS)",
            label,
        )
    total = sum(info.file_size for info in infos)
    if total > config.MAX_ZIP_UNCOMPRESSED_BYTES:
        raise LimitError(
            f"zip declares {total} bytes uncompressed, more than the limit of "
            f"{config.MAX_ZIP_UNCOMPRESSED_BYTES} (config.MAX_ZIP_UNCOMPRESSED_BYTES)",
            label,
        )
    if archive_bytes and total / archive_bytes > config.MAX_ZIP_RATIO:
        raise LimitError(
            f"zip expands {total / archive_bytes:.0f}-fold ({archive_bytes} -> {total} bytes), "
            f"more than the limit of {config.MAX_ZIP_RATIO:g} (config.MAX_ZIP_RATIO): "
            "refused as a possible zip bomb",
            label,
        )


def _member_error(info: zipfile.ZipInfo, name: str) -> HemoError | None:
    if _unsafe_member(info.filename):
        return SeriesError(
            f"zip member path {info.filename!r} leaves the archive (absolute or '..'): refused",
            name,
        )
    if info.flag_bits & 0x1:
        return InputError("zip member is encrypted: cannot be read", name)
    if info.file_size > config.MAX_FILE_BYTES:
        return LimitError(
            f"zip member is {info.file_size} bytes, more than the limit of "
            f"{config.MAX_FILE_BYTES} (config.MAX_FILE_BYTES)",
            name,
        )
    if info.compress_size and info.file_size / info.compress_size > config.MAX_ZIP_RATIO:
        return LimitError(
            f"zip member expands {info.file_size / info.compress_size:.0f}-fold, more than the "
            f"limit of {config.MAX_ZIP_RATIO:g} (config.MAX_ZIP_RATIO): refused as a possible "
            "zip bomb",
            name,
        )
    return None


def _iter_zip(data: bytes, label: str) -> Iterator[ScanResult]:
    try:
        archive = zipfile.ZipFile(as_stream(data))
        infos = archive.infolist()
    except ZIP_READ_ERRORS as exc:
        yield ScanResult(label, None, SeriesError(f"not a readable zip archive ({exc})", label))
        return
    try:
        _zip_limits(infos, len(data), label)
    except LimitError as exc:
        yield ScanResult(label, None, exc)
        return
    with archive:
        for info in sorted(infos, key=lambda i: i.filename):
            if info.is_dir():
                continue
            member = info.filename.replace("\\", "/")
            name = f"{label}/{member}"
            error = _member_error(info, name)
            if error is not None:
                yield ScanResult(name, None, error)
                continue
            if _skipped(PurePosixPath(member).parts):
                continue
            try:
                with archive.open(info) as fh:
                    content = fh.read(config.MAX_FILE_BYTES + 1)
            except ZIP_READ_ERRORS as exc:
                yield ScanResult(name, None, SeriesError(f"cannot extract ({exc})", name))
                continue
            if sniff_kind(content[:SNIFF_BYTES]) == "zip":
                yield ScanResult(
                    name, None, InputError("nested zip archive: not expanded; unzip it first", name)
                )
                continue
            if not _worth_reading(member, content[:SNIFF_BYTES]):
                log.debug("skipped non-scan zip member %s", name)
                continue
            yield from _results(name, content)


def _iter_folder(root: Path) -> Iterator[ScanResult]:
    found = skipped = 0
    for dirpath, dirnames, filenames in os.walk(root):
        kept = sorted(d for d in dirnames if not _skipped([d]))
        skipped += len(dirnames) - len(kept)  # hidden folders count as skipped entries
        dirnames[:] = kept
        for filename in sorted(filenames):
            if _skipped([filename]):
                skipped += 1
                continue
            path = Path(dirpath) / filename
            found += 1
            try:
                head = read_head(path, SNIFF_BYTES)
            except HemoError as exc:
                yield ScanResult(str(path), None, exc)
                continue
            if not _worth_reading(filename, head):
                log.debug("skipped non-scan file %s", path)
                found -= 1
                skipped += 1
                continue
            yield from _iter_file(path, str(path))
    if not found:
        # Every input gets a result: a folder without a scan is named, not passed over
        entries = "entry" if skipped == 1 else "entries"
        why = f"{skipped} {entries} in it, none a scan" if skipped else "it is empty"
        yield ScanResult(
            str(root),
            None,
            InputError(
                f"no scan in this folder ({why}): hemo reads DICOM, PNG/JPEG/TIFF, zips and NIfTI",
                str(root),
            ),
        )


def _iter_file(source: Source, label: str) -> Iterator[ScanResult]:
    try:
        data = read_bytes(source, label)
    except HemoError as exc:
        yield ScanResult(label, None, exc)
        return
    if sniff_kind(data[:SNIFF_BYTES]) == "zip":
        yield from _iter_zip(data, label)
    else:
        yield from _results(label, data)


def folder_upload(files: Iterable[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], int]:
    """The files of an uploaded folder that a folder walk would read, and how many it skips.

    A browser's folder upload (an exported study, say) arrives as ``(name, bytes)`` pairs; the
    folder rules of the module docstring then apply to each as if walked from disk: hidden
    files, ``DICOMDIR``, ``__MACOSX`` and files that are neither scans by their bytes nor named
    like one are left out, so they do not show up as errors.

    Args:
        files: ``(name, bytes)`` per uploaded file (the name may hold its relative path).

    Returns:
        (the files to read, in the order given; the number skipped).
    """
    kept, skipped = [], 0
    for name, data in files:
        path = PurePosixPath(name.replace("\\", "/"))
        if _skipped(path.parts) or not _worth_reading(path.name, data[:SNIFF_BYTES]):
            skipped += 1
            continue
        kept.append((name, data))
    return kept, skipped


def iter_scans(inputs: Iterable[Source | tuple[str, bytes]]) -> Iterator[ScanResult]:
    """Read a batch of inputs, one :class:`ScanResult` per scan, never raising for a bad one.

    Args:
        inputs: Paths to files or folders, bytes, file-like uploads, or ``(name, bytes)`` pairs.
            Zips (by their bytes) are expanded safely; folders are walked recursively in sorted
            order (see the module docstring for what is skipped).

    Yields:
        One result per scan, in input order (members and folder files sorted by name).
    """
    if isinstance(inputs, str | bytes | os.PathLike) or hasattr(inputs, "read"):
        inputs = [inputs]  # type: ignore[list-item]
    for item in inputs:
        if isinstance(item, tuple):
            label, payload = str(item[0]), item[1]
            yield from _iter_file(payload, label)
            continue
        label = source_name(item)
        if is_path(item) and Path(item).is_dir():
            yield from _iter_folder(Path(item))
            continue
        yield from _iter_file(item, label)
