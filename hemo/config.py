"""Paths, presets, limits and names shared by every hemo module.

Paths come from the package location (``Path(__file__)``), never from the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

# Paths ------------------------------------------------------------------------------------------
PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
DATA_DIR = PROJECT_DIR / "data"
RAW_DIR = DATA_DIR / "raw"
DEMO_DIR = DATA_DIR / "demo"
PROCESSED_DIR = DATA_DIR / "processed"
MODELS_DIR = PROJECT_DIR / "models"
RUNS_DIR = Path(os.environ.get("HEMO_RUNS_DIR", PROJECT_DIR / "runs"))
#: Real sample scans laid beside the project (see ../shared/data/README.md); absent in a user's clone.
SHARED_DATA_DIR = Path(os.environ.get("HEMO_SHARED_DATA", PROJECT_DIR.parent / "shared" / "data"))


def portable_path(path: str | os.PathLike, given: str | None = None) -> str:
    """How a path is written into a model card or report: relative to the project where it
    can be, so that a card holds no more of this machine's folders than it must and still
    finds its data where readers look (the current folder, then the project).

    Args:
        path: The resolved path.
        given: The user's own spelling of it (e.g. ``"../shared/data/head_ct"`` from a config).

    Returns:
        The path relative to the project when it lies inside it (``"data/processed/x"``,
        ``"runs/name/..."``); else ``given`` when it names the same folder from the project (or
        is absolute); else, beside the project (under its parent folder), the path relative to
        the project (``"../shared/data/head_ct"``); else the resolved path. A spelling relative
        to the folder a command ran in (``--data kbad`` in ``/tmp``) is never kept: it would be
        lost from anywhere else.
    """
    resolved = Path(path).resolve()
    if resolved.is_relative_to(PROJECT_DIR):
        return resolved.relative_to(PROJECT_DIR).as_posix()
    if given:
        spelled = Path(given).expanduser()
        if spelled.is_absolute() or (PROJECT_DIR / spelled).resolve() == resolved:
            return str(given)
    if resolved.is_relative_to(PROJECT_DIR.parent):
        return Path(os.path.relpath(resolved, PROJECT_DIR)).as_posix()
    return str(resolved)


# Labels -----------------------------------------------------------------------------------------
#: RSNA-2019 subtypes, in the order of the RSNA label columns.
SUBTYPES: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
#: The six RSNA outputs: ``any`` first, then the subtypes.
RSNA_LABELS: tuple[str, ...] = ("any", *SUBTYPES)
#: Weights of the RSNA-2019 metric (``any`` counts twice).
RSNA_LABEL_WEIGHTS: dict[str, float] = {"any": 2.0, **{s: 1.0 for s in SUBTYPES}}

# Hounsfield units -------------------------------------------------------------------------------
HU_AIR = -1000.0
#: Values below this are outside the scanned field (padding, e.g. -2000 stored -> -3024 HU).
HU_FLOOR = -1024.0
HU_CEIL = 3071.0

# Limits (enforced by the readers; raise LimitError) --------------------------------------------
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_PIXELS_PER_SLICE = 4096 * 4096
MAX_SLICES_PER_SERIES = 2000
#: Most pixels one file (a multi-frame DICOM, a NIfTI volume) may hold over all its slices,
#: checked from its header before decoding: 2000 slices of 512 x 512 (2 GiB as float32 HU),
#: so 40 frames of 4096 x 4096 in 40 KB of JPEG 2000 are refused, not decoded to 2.7 GB.
MAX_PIXELS_PER_FILE = MAX_SLICES_PER_SERIES * 512 * 512
#: Largest NIfTI volume read, decompressed (bytes): 512 x 512 x 1000 slices of float32.
MAX_VOLUME_BYTES = 1024 * 1024 * 1024
MAX_ZIP_MEMBERS = 5000
MAX_ZIP_UNCOMPRESSED_BYTES = 2 * 1024 * 1024 * 1024
MAX_ZIP_RATIO = 200.0
#: Smallest side (pixels) of a PNG/JPEG/TIFF worth reading; a 1x1 or 8x8 image holds no head CT.
MIN_IMAGE_SIDE = 16

#: Said on every page, in every command's --help that gives verdicts, and in every JSON that
#: carries them (``notice``): the verdicts leave the tool.
NOTICE = "Research tool, not a medical device: never use it to diagnose or treat a patient."

# Pseudonyms -------------------------------------------------------------------------------------
#: Secret of the patient pseudonym (HMAC-SHA256 key, see ``hemo.dicom.pseudonymize``): this
#: environment variable when set (give every machine that builds a shared index the same value),
#: else the file below, created once per installation with 32 random bytes (mode 0600).
PATIENT_KEY_SECRET_ENV = "HEMO_PATIENT_KEY_SECRET"
PATIENT_KEY_SECRET_FILE = Path(
    os.environ.get(
        "HEMO_PATIENT_KEY_SECRET_FILE",
        Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        / "hemo"
        / "patient_key.secret",
    )
)

# Randomness -------------------------------------------------------------------------------------
DEFAULT_SEED = 0

#: How an operating threshold is chosen on validation data (``hemo.evaluate.select_threshold``).
THRESHOLD_METHODS: tuple[str, ...] = ("youden", "sensitivity")
