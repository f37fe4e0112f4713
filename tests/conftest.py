"""Shared fixtures: real sample data locations and skip rules.

Tests that need ``../shared/data`` skip with a clear reason in a user's fresh clone, but fail in CI
(``CI=true``), where a skipped real-data test would hide a defect.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# The pseudonym secret of the tests (and of the hemo processes they start) lives under the temp
# folder, never in the user's ~/.config/hemo: set before hemo.config reads it at import.
os.environ.setdefault(
    "HEMO_PATIENT_KEY_SECRET_FILE",
    str(Path(tempfile.gettempdir()) / f"hemo-tests-{os.getuid()}" / "patient_key.secret"),
)

from hemo.config import SHARED_DATA_DIR

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path} (real sample data lives in ../shared/data)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must have it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real sample data (``../shared/data``)."""
    return _need(SHARED_DATA_DIR, "shared sample data")


@pytest.fixture(scope="session")
def cq500_dir(shared_data: Path) -> Path:
    """The real CQ500-CT-0 series: 238 JPEG-lossless slices."""
    return _need(shared_data / "cq500" / "CQ500-CT-0", "CQ500 series")


@pytest.fixture(scope="session")
def head_ct_dir(shared_data: Path) -> Path:
    """The real Kaggle head-CT sample (140 PNGs and labels.csv)."""
    return _need(shared_data / "head_ct", "Kaggle head-CT sample")


@pytest.fixture(scope="session")
def ct_small() -> Path:
    """pydicom's bundled real CT slice (uncompressed, 128x128)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm", download=False))


@pytest.fixture(scope="session")
def cq500_uncompressed() -> Path:
    """pydicom-data's real CQ500-CT-310 slice (hemorrhage-positive for all three readers)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("693_UNCR.dcm", download=False)
    if path is None:
        pytest.fail("pydicom-data is not installed: 693_UNCR.dcm missing")
    return Path(path)


#: Small phantom dataset of the ``phantom_dir`` fixture: studies, slices per study, side, seed.
PHANTOM_FIXTURE = {"n_studies": 6, "slices_per_study": 4, "size": 128, "seed": 123}


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic phantom dataset (RSNA layout, masks, index.parquet); read-only by convention."""
    from hemo.phantom import write_demo_dataset

    out = tmp_path_factory.mktemp("phantom")
    write_demo_dataset(out, **PHANTOM_FIXTURE)
    return out
