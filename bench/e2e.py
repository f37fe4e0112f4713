"""End-to-end timings of the dashboard in a real browser, against the bare Predictor in-process.

Measured in one run, on this machine:

* ``first_render_s``: ``streamlit run`` started -> Home fully drawn in Chromium;
* ``upload_to_heatmap_s``: a 512x512 DICOM (pydicom-data's real CQ500 slice ``693_UNCR.dcm``)
  dropped on Predict -> its Grad-CAM overlay image loaded (warm: model already loaded; each
  repeat uses a new upload name, so no cached result is reused); median of the repeats;
* ``series_to_verdict_s``: the 238-slice CQ500-CT-0 series zipped in memory, dropped on Predict
  -> study verdict shown (when ``../shared/data`` has it);
* ``bare_predict_s`` / ``bare_series_s``: the same inputs through ``hemo.predict.Predictor`` in
  this process (the floor the UI adds to); ``bare_predict_cam_s``: what the page computes per
  image, in-process (decode, predict, Grad-CAM, overlay), so the browser's share is visible.

The model is the shipped real-scan model (``models/headct_real.keras``) when present, else the
first shipped model, else an untrained compact model of the same input (said in the output).
Targets (issue 5): upload-to-heatmap <= 2 s, series <= 30 s on 2 CPU cores. The table goes to
stderr; stdout carries one JSON line (ratios under keys containing ``ratio``).

Usage: ``python bench/e2e.py [--repeats N] [--no-series]``
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from hemo import config, dashboard
from hemo.serve import chromium_launch_options, free_port, streamlit_command, wait_healthy

log = logging.getLogger("bench.e2e")

PREFERRED_MODEL = "headct_real"
VIEWPORT = {"width": 1400, "height": 1000}
SLICE_FILE = "693_UNCR.dcm"
SERIES_DIR = config.SHARED_DATA_DIR / "cq500" / "CQ500-CT-0"
TARGET_UPLOAD_S = 2.0
TARGET_SERIES_S = 30.0
DEFAULT_REPEATS = 5
SERVER_START_S = 120
PAGE_TIMEOUT_MS = 300_000
HOME_LAST_TEXT = "launch, watch, compare runs"
OVERLAY_CAPTION = "gradcam · any"
FALLBACK_SIZE = 256
OVERLAY_ALPHA = 0.4
OVERLAY_COLORMAP = "jet"
#: Two images (plain slice and overlay) fully loaded in the browser.
IMAGES_LOADED_JS = """(caption) => {
  const captions = [...document.querySelectorAll('[data-testid="stImageCaption"], figcaption')];
  if (!captions.some(c => c.textContent.includes(caption))) return false;
  const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
  return imgs.length >= 2 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


def pick_model(tmp: Path) -> tuple[Path, str]:
    """The model to time: shipped real-scan model, else a shipped one, else a fresh compact one."""
    shipped = sorted(config.MODELS_DIR.glob("*.keras"))
    for path in shipped:
        if path.stem == PREFERRED_MODEL and path.with_suffix(".json").is_file():
            return path, path.stem
    for path in shipped:
        if path.with_suffix(".json").is_file():
            return path, f"{path.stem} (no {PREFERRED_MODEL} shipped yet)"
    from hemo.model import CAM_LAYERS, ModelCard, build_model, save_model
    from hemo.preprocess import InputSpec

    spec = InputSpec(size=FALLBACK_SIZE, mode="display")
    card = ModelCard(
        name="compact_untrained",
        architecture="compact",
        input_spec=spec,
        labels=("any",),
        threshold=0.5,
        cam_layer=CAM_LAYERS["compact"],
    )
    path = save_model(build_model("compact", spec, ("any",)), tmp / "compact_untrained", card)
    return path, "compact_untrained (no shipped model yet; same input as the real-scan model)"


def series_zip() -> bytes | None:
    """CQ500-CT-0 zipped in memory (stored, as a browser upload would carry it), or None."""
    files = sorted(SERIES_DIR.glob("*.dcm")) if SERIES_DIR.is_dir() else []
    if not files:
        return None
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in files:
            archive.write(path, f"CQ500-CT-0/{path.name}")
    return buffer.getvalue()


def bare_timings(model: Path, slice_bytes: bytes, zipped: bytes | None, repeats: int) -> dict:
    """Predictor in-process: one slice (median of warm repeats) and the whole series."""
    from hemo.predict import Predictor

    out: dict[str, float | None] = {"bare_series_s": None}
    with Predictor(model) as predictor:
        predictor.predict([("warm.dcm", slice_bytes)])
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            predictor.predict([(f"bare{i}.dcm", slice_bytes)])
            times.append(time.perf_counter() - start)
        out["bare_predict_s"] = statistics.median(times)
        # What the page computes per image: decode, predict, Grad-CAM, overlay (warmed up once:
        # the Grad-CAM graph is traced on its first call)
        warm = dashboard.analyse(
            predictor, dashboard.decode([("warm.dcm", slice_bytes)]).singles[0]
        )
        dashboard.overlay_image(warm, OVERLAY_ALPHA, OVERLAY_COLORMAP)
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            scan = dashboard.decode([(f"cam{i}.dcm", slice_bytes)]).singles[0]
            result = dashboard.analyse(predictor, scan)
            dashboard.overlay_image(result, OVERLAY_ALPHA, OVERLAY_COLORMAP)
            times.append(time.perf_counter() - start)
        out["bare_predict_cam_s"] = statistics.median(times)
        if zipped is not None:
            start = time.perf_counter()
            batch = predictor.run([("CQ500-CT-0.zip", zipped)])
            out["bare_series_s"] = time.perf_counter() - start
            log.info("bare series %.2f s", out["bare_series_s"])
            log.info("bare series: %d slices, %d studies", len(batch.results), len(batch.studies))
    return out


def upload(page, name: str, data: bytes | Path) -> None:
    """Drop one file on the Predict page's uploader (bytes, or a file the browser reads)."""
    if isinstance(data, Path):
        page.locator('.st-key-predict_upload input[type="file"]').set_input_files(str(data))
        return
    payload = {"name": name, "mimeType": "application/octet-stream", "buffer": data}
    page.locator('.st-key-predict_upload input[type="file"]').set_input_files(payload)


def ui_timings(
    model: Path,
    dataset: Path,
    slice_bytes: bytes,
    zipped: bytes | None,
    repeats: int,
    scratch: Path,
) -> dict:
    """Start ``streamlit run``, drive Chromium, and time first render, upload, series."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        dashboard.ENV_DATASET: str(dataset),
        dashboard.ENV_MODELS_DIR: str(model.parent),
        dashboard.ENV_DEFAULT_MODEL: model.stem,
    }
    command = streamlit_command(port)
    out: dict[str, float | None] = {"series_to_verdict_s": None}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(url, process, SERVER_START_S)
        out["server_healthy_s"] = time.perf_counter() - started
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(**chromium_launch_options())
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(url)
            page.get_by_text(HOME_LAST_TEXT).wait_for()
            out["first_render_s"] = time.perf_counter() - started
            log.info("first render %.2f s", out["first_render_s"])
            # Warm: load the model and trace it once
            page.goto(f"{url}/predict")
            page.get_by_text("Try a sample", exact=True).wait_for()
            upload(page, "warmup.dcm", slice_bytes)
            page.wait_for_function(IMAGES_LOADED_JS, arg=OVERLAY_CAPTION)
            times = []
            for i in range(repeats):
                page.goto(f"{url}/predict")
                page.get_by_text("Try a sample", exact=True).wait_for()
                start = time.perf_counter()
                upload(page, f"slice{i}.dcm", slice_bytes)
                page.get_by_text(f"slice{i}.dcm").last.wait_for()
                page.wait_for_function(IMAGES_LOADED_JS, arg=OVERLAY_CAPTION)
                times.append(time.perf_counter() - start)
            log.info("upload to heatmap: %s s", ", ".join(f"{t:.2f}" for t in times))
            out["upload_to_heatmap_s"] = statistics.median(times)
            out["upload_to_heatmap_min_s"] = min(times)
            out["upload_to_heatmap_max_s"] = max(times)
            if zipped is not None:
                page.goto(f"{url}/predict")
                page.get_by_text("Try a sample", exact=True).wait_for()
                # The browser reads the zip from a file, as when a user drops it (Playwright
                # moves in-memory buffers over CDP as base64, which is not what is timed here)
                zip_path = scratch / "CQ500-CT-0.zip"
                zip_path.write_bytes(zipped)
                start = time.perf_counter()
                upload(page, zip_path.name, zip_path)
                page.get_by_text("Study verdict").wait_for()
                out["series_to_verdict_s"] = time.perf_counter() - start
                log.info("series to verdict %.2f s", out["series_to_verdict_s"])
            browser.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    return out


def main() -> int:
    """Run the benchmark; the table on stderr, one JSON line on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--no-series", action="store_true", help="skip the 238-slice series")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pydicom.data import get_testdata_file

    slice_path = get_testdata_file(SLICE_FILE, download=False)
    if slice_path is None:
        log.error("pydicom-data is not installed: %s missing", SLICE_FILE)
        return 1
    slice_bytes = Path(slice_path).read_bytes()
    zipped = None if args.no_series else series_zip()
    with tempfile.TemporaryDirectory(prefix="hemo-e2e-") as tmp:
        model, model_note = pick_model(Path(tmp))
        dataset = dashboard.default_dataset_path()
        if dataset.resolve() == config.DEMO_DIR.resolve():
            dashboard.ensure_demo_dataset(dataset)
        log.info("model %s; slice %s; series %s", model_note, SLICE_FILE, zipped is not None)
        bare = bare_timings(model, slice_bytes, zipped, args.repeats)
        ui = ui_timings(model, dataset, slice_bytes, zipped, args.repeats, Path(tmp))
    summary = {
        "bench": "e2e",
        "model": model_note,
        "cores": os.cpu_count(),
        "repeats": args.repeats,
        **{k: None if v is None else round(v, 3) for k, v in {**bare, **ui}.items()},
        "target_upload_to_heatmap_s": TARGET_UPLOAD_S,
        "target_series_s": TARGET_SERIES_S,
    }
    summary["ui_over_bare_ratio"] = round(ui["upload_to_heatmap_s"] / bare["bare_predict_s"], 2)
    summary["ui_over_bare_cam_ratio"] = round(
        ui["upload_to_heatmap_s"] / bare["bare_predict_cam_s"], 2
    )
    summary["upload_over_target_ratio"] = round(ui["upload_to_heatmap_s"] / TARGET_UPLOAD_S, 3)
    if ui["series_to_verdict_s"] is not None and bare["bare_series_s"]:
        summary["series_ui_over_bare_ratio"] = round(
            ui["series_to_verdict_s"] / bare["bare_series_s"], 2
        )
        summary["series_over_target_ratio"] = round(ui["series_to_verdict_s"] / TARGET_SERIES_S, 3)
    for key, value in summary.items():
        log.info("%-28s %s", key, value)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
