"""Memory of the app while it holds uploaded whole series, against the bytes of their HU.

The Predict page keeps every decoded upload set in a resource cache (``hemo.ui.decode``: at
most ``ui.MAX_UPLOAD_SETS`` sets, for ``ui.CACHE_TTL_S``), so that a slider move or another
page's visit does not decode the series again. This bench runs the whole app (entrypoint and
Predict page, Streamlit's AppTest, in this process) on the shipped real-scan model, drops
``--sets`` distinct copies of one series (the real 238-slice CQ500-CT-0 series from
``../shared/data`` when present, else a 512-px phantom study written here) one after the other,
and reads the process's resident memory after each.

Figures (one run, this machine):

* ``rss_app_mb``: the app on the Predict page, no model loaded yet;
* ``first_set_mb``: growth for the first set (TensorFlow, the model and its traced forward
  pass included);
* ``per_set_mb``: mean growth for each further set (what one more cached series costs);
* ``hu_mb``: the float32 HU of one set (``CTSlice.hu``), the least a decoded set can hold;
* ``per_set_to_hu_ratio``: ``per_set_mb / hu_mb`` (about 1: the app holds a series about once).

Usage: ``python bench/app_memory.py [--sets N]``; the table goes to stderr, one JSON line to
stdout.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import sys
import tempfile
import zipfile
from pathlib import Path

from hemo import config, dashboard, ui

SERIES_DIR = config.SHARED_DATA_DIR / "cq500" / "CQ500-CT-0"
PREFERRED_MODEL = "headct_real"
DEFAULT_SETS = 4
APP_TIMEOUT_S = 900
MB = 2**20
#: Phantom fallback: studies of the demo writer at the size of a real CT slice.
FALLBACK_STUDIES = 4
FALLBACK_SIZE = 512


def rss_mb() -> float:
    """This process's resident memory in MB (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def series_files(scratch: Path) -> tuple[list[Path], str]:
    """The DICOM files of one series and what they are."""
    if SERIES_DIR.is_dir():
        return sorted(SERIES_DIR.glob("*.dcm")), "real CQ500-CT-0 series"
    from hemo.phantom import write_demo_dataset

    write_demo_dataset(scratch, n_studies=FALLBACK_STUDIES, seed=0, size=FALLBACK_SIZE)
    return sorted(scratch.rglob("*.dcm")), f"{FALLBACK_STUDIES} phantom studies (no ../shared)"


def zipped(files: list[Path], folder: str) -> bytes:
    """The files in one zip under ``folder/`` (each set gets other names: another cache key)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in files:
            archive.writestr(f"{folder}/{path.name}", path.read_bytes())
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", type=int, default=DEFAULT_SETS, help="upload sets dropped")
    args = parser.parse_args()
    if args.sets < 2:
        parser.error("--sets must be at least 2 (the first set also loads the model)")
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as scratch:
        files, what = series_files(Path(scratch))
        models = {m.path.stem for m in dashboard.list_models()}
        model = PREFERRED_MODEL if PREFERRED_MODEL in models else sorted(models)[0]
        at = AppTest.from_file(str(config.PROJECT_DIR / "streamlit_app.py"))
        at.default_timeout = APP_TIMEOUT_S
        at.run()
        at.session_state[ui.MODEL_CHOICE_KEY] = model
        at.switch_page("app_pages/predict.py").run()
        readings = [rss_mb()]
        for k in range(args.sets):
            upload = (f"set{k}.zip", zipped(files, f"set{k}"), "application/zip")
            at.file_uploader(key="predict_upload").set_value(upload).run()
            if at.exception or at.error:
                raise SystemExit(f"set {k}: {[e.value for e in [*at.exception, *at.error]]}")
            del upload
            gc.collect()
            readings.append(rss_mb())
        # read last, so that its arrays freed cannot be reused by the sets measured
        decoded = dashboard.decode([("probe.zip", zipped(files, "probe"))])
        scans = [*decoded.singles, *(s for series in decoded.series for s in series.slices)]
        hu_mb = sum(scan.hu.nbytes for scan in scans) / MB
    growth = [b - a for a, b in zip(readings, readings[1:], strict=False)]
    per_set = sum(growth[1:]) / len(growth[1:])
    figures = {
        "series": what,
        "slices": len(files),
        "model": model,
        "sets": args.sets,
        "rss_app_mb": round(readings[0]),
        "first_set_mb": round(growth[0]),
        "per_set_mb": round(per_set),
        "rss_end_mb": round(readings[-1]),
        "hu_mb": round(hu_mb),
        "per_set_to_hu_ratio": round(per_set / hu_mb, 2),
    }
    for key, value in figures.items():
        print(f"{key:>22}: {value}", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
