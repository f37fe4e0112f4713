"""Inputs as the readers accept them: a path, raw bytes, or a file-like upload.

Every reader (:mod:`hemo.dicom`, :mod:`hemo.images`, :mod:`hemo.io`) takes a :data:`Source` and
an optional display ``name``. Bytes are held in memory and never written to disk; sizes are checked
against ``config.MAX_FILE_BYTES`` before a file is read whole.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from hemo import config
from hemo.errors import InputError, LimitError

#: A path, raw bytes, or a binary file-like object (e.g. a Streamlit ``UploadedFile``).
Source = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

#: Name shown for inputs that carry none (raw bytes, anonymous streams).
ANONYMOUS_BYTES = "<bytes>"
ANONYMOUS_UPLOAD = "<upload>"


def is_path(source: Source) -> bool:
    """True when ``source`` names a file on disk (``str`` or ``os.PathLike``)."""
    return isinstance(source, str | os.PathLike)


def source_name(source: Source, name: str | None = None) -> str:
    """The name used in results and error messages: ``name``, else the path or upload name."""
    if name is not None:
        return str(name)
    if is_path(source):
        return os.fspath(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return ANONYMOUS_BYTES
    upload_name = getattr(source, "name", None)
    return str(upload_name) if isinstance(upload_name, str | os.PathLike) else ANONYMOUS_UPLOAD


def _check_size(size: int, name: str) -> None:
    if size > config.MAX_FILE_BYTES:
        raise LimitError(
            f"file is {size} bytes, more than the limit of {config.MAX_FILE_BYTES} bytes "
            "(config.MAX_FILE_BYTES)",
            name,
        )
    if size == 0:
        raise InputError("file is empty (0 bytes)", name)


def path_size(path: str | os.PathLike, name: str | None = None) -> int:
    """Size of a file on disk in bytes, refusing missing files, folders and files over the limit.

    Raises:
        InputError: no such file, a folder, or an empty file.
        LimitError: larger than ``config.MAX_FILE_BYTES``.
    """
    label = source_name(path, name)
    p = Path(path)
    try:
        stat = p.stat()
    except FileNotFoundError as exc:
        raise InputError("no such file", label) from exc
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror or exc}", label) from exc
    if p.is_dir():
        raise InputError(
            "is a folder, not a file (give one of its files; hemo predict and hemo index take "
            "folders)",
            label,
        )
    _check_size(stat.st_size, label)
    return stat.st_size


def read_bytes(source: Source, name: str | None = None) -> bytes:
    """Read a whole source into memory, checking ``config.MAX_FILE_BYTES`` first.

    A file-like object is read from its start and its position is restored afterwards, so the
    caller's object is left as it was.

    Args:
        source: Path, bytes or binary file-like object.
        name: Display name for messages; defaults to :func:`source_name`.

    Returns:
        The bytes of the source.

    Raises:
        InputError: missing, unreadable or empty.
        LimitError: larger than ``config.MAX_FILE_BYTES``.
    """
    label = source_name(source, name)
    if isinstance(source, bytes):
        _check_size(len(source), label)
        return source
    if isinstance(source, bytearray | memoryview):
        _check_size(len(source), label)
        return bytes(source)
    if is_path(source):
        path_size(source, label)
        try:
            return Path(source).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read the file: {exc.strerror or exc}", label) from exc
    if not hasattr(source, "read"):
        raise InputError(
            f"cannot read a {type(source).__name__}: give a path, bytes or a binary file object",
            label,
        )
    try:
        position = source.tell() if source.seekable() else None
        if position is not None:
            source.seek(0)
        data = source.read(config.MAX_FILE_BYTES + 1)
        if position is not None:
            source.seek(position)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the upload: {exc}", label) from exc
    if isinstance(data, str):
        raise InputError("upload is a text stream; open it in binary mode ('rb')", label)
    _check_size(len(data), label)
    return bytes(data)


def read_head(source: Source, n_bytes: int, name: str | None = None) -> bytes:
    """The first ``n_bytes`` of a source (for sniffing its kind), without reading it whole."""
    if is_path(source):
        path_size(source, name)
        try:
            with open(source, "rb") as fh:
                return fh.read(n_bytes)
        except OSError as exc:
            raise InputError(
                f"cannot read the file: {exc.strerror or exc}", source_name(source, name)
            ) from exc
    return read_bytes(source, name)[:n_bytes]


def as_stream(data: bytes) -> io.BytesIO:
    """A fresh in-memory stream over ``data`` (nothing touches the disk)."""
    return io.BytesIO(data)
