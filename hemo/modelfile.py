"""Model files: what hemo will load, checked from the bytes without importing Keras.

:func:`check_model_file` refuses pickles (by suffix or by their first bytes), folders, missing
files and anything that is not a Keras v3 zip or an HDF5 file, so a command names a wrong
``--model`` at once, before TensorFlow starts (seconds, and its start-up lines on stderr).
:mod:`hemo.model` re-exports it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from hemo.errors import ModelError

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pck", ".sav")
MODEL_SUFFIXES = (".keras", ".h5")
#: ``weights`` values meaning random initial weights, and the Keras ImageNet download.
WEIGHTS_NONE = ("none", "")
WEIGHTS_IMAGENET = "imagenet"
#: First bytes of a pickle (protocol 2+), a zip (``.keras``) and an HDF5 file (``.h5``).
PICKLE_MAGIC = 0x80
PICKLE_MAX_PROTOCOL = 5
ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def check_model_file(path: str | os.PathLike) -> Path:
    """Refuse anything but a real ``.keras`` zip or ``.h5`` HDF5 file (pickles above all).

    Raises:
        ModelError: Missing file, a folder, pickle (by suffix or by bytes), or wrong format.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(
            "refusing to load a pickle (arbitrary code execution); models are .keras files",
            source=path,
        )
    if path.is_dir():
        raise ModelError(
            "is a folder, not a model; give the NAME.keras file (its card NAME.json beside it)",
            source=path,
        )
    if not path.is_file() and not path.suffix and path.with_suffix(".keras").is_file():
        path = path.with_suffix(".keras")  # models/NAME, as save_model and --export take it
    if not path.is_file():
        raise ModelError("model file not found", source=path)
    with path.open("rb") as fh:
        head = fh.read(len(HDF5_MAGIC))
    if len(head) >= 2 and head[0] == PICKLE_MAGIC and 2 <= head[1] <= PICKLE_MAX_PROTOCOL:
        raise ModelError(
            "refusing to load a pickle (its bytes are a pickle stream); models are .keras files",
            source=path,
        )
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ModelError(f"not a model file: expected one of {MODEL_SUFFIXES}", source=path)
    if suffix == ".keras" and not head.startswith(ZIP_MAGIC):
        raise ModelError("not a Keras v3 file: a .keras model is a zip archive", source=path)
    if suffix == ".keras" and not zipfile.is_zipfile(path):  # no central directory at its end
        raise ModelError(
            "the .keras archive is incomplete (cut short while copying or saving?): save or "
            "copy the model again",
            source=path,
        )
    if suffix == ".h5" and not head.startswith(HDF5_MAGIC):
        raise ModelError("not an HDF5 file (bad signature)", source=path)
    return path


def model_paths(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(NAME.keras, NAME.json, NAME.h5) for a model path given with or without a suffix."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower() in (*MODEL_SUFFIXES, ".json") else path
    return stem.with_suffix(".keras"), stem.with_suffix(".json"), stem.with_suffix(".h5")


def require_card(path: str | os.PathLike) -> Path:
    """The card ``NAME.json`` beside a model file.

    Raises:
        ModelError: There is none.
    """
    card = model_paths(path)[1]
    if not card.is_file():
        raise ModelError(
            f"no model card {card.name} beside the model; cards are written by save_model",
            source=path,
        )
    return card


def weights_option(weights: str | os.PathLike | None) -> tuple[str | None, Path | None]:
    """Classify a ``weights`` option as (None | "imagenet" | "model" | "backbone", path).

    Raises:
        ModelError: A pickle, a missing file, or a file that is not ``.weights.h5``/``.h5``.
    """
    if weights is None or str(weights).strip().lower() in WEIGHTS_NONE:
        return None, None
    if str(weights).strip().lower() == WEIGHTS_IMAGENET:
        return WEIGHTS_IMAGENET, None
    path = Path(weights)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError("refusing to load a pickle as weights; give a .weights.h5 file", path)
    if not path.is_file():
        raise ModelError(
            "weights file not found; use --weights none|imagenet|FILE.weights.h5 "
            "or --init models/X.keras",
            source=path,
        )
    if path.name.endswith(".weights.h5"):
        return "model", path
    if path.suffix.lower() in (".h5", ".hdf5"):
        return "backbone", path
    raise ModelError("weights must be a .weights.h5 (or legacy backbone .h5) file", path)
