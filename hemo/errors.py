"""The one error hierarchy of hemo.

Every failure a user can cause is a :class:`HemoError` subclass whose message names the file,
what is wrong (tag, value, rule) and, where possible, what to do. The CLI prints ``str(error)`` as
one line; pages show it with ``st.error``.
"""

from __future__ import annotations

from pathlib import Path


class HemoError(Exception):
    """Base class of every error hemo raises on purpose.

    Args:
        message: What is wrong and, where possible, what to do about it.
        source: The file (path or upload name) the error is about, if any. It is prefixed to the
            message so that one line says which input failed.
    """

    def __init__(self, message: str, source: str | Path | None = None) -> None:
        self.source = None if source is None else str(source)
        self.reason = message
        super().__init__(f"{self.source}: {message}" if self.source else message)


class InputError(HemoError):
    """An input file cannot be read at all (empty, unknown kind, too large, truncated)."""


class DicomError(InputError):
    """A DICOM file is malformed or breaks a rule hemo relies on (tag, value, rule named)."""


class NoImageDicomError(DicomError):
    """A file recognised as DICOM (without a preamble, so not by its marker) that holds no
    image: a structure set, a plan, a report. Said as such, not as an unknown file."""


class ImageError(InputError):
    """A PNG/JPEG/TIFF image cannot be decoded or has an unsupported layout."""


class LimitError(InputError):
    """An input exceeds a configured limit (bytes, pixels, slices, archive members)."""


class SeriesError(InputError):
    """Slices cannot be assembled into a series (mixed series, duplicate positions, bad zip)."""


class DatasetError(HemoError):
    """A dataset folder, index or manifest cannot be understood."""


class ModelError(HemoError):
    """A model file is missing, unsafe, or does not match its card or its input."""


class ConfigError(HemoError):
    """A configuration file or option has an invalid value."""


class KaggleError(HemoError):
    """A Kaggle download failed (credentials, network, competition rules)."""


class TrainingError(HemoError):
    """A training run cannot start or continue."""
