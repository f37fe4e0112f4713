"""The dashboard in a real Chromium (Playwright): every page, an upload, a slider, a training run.

Starts ``streamlit run`` on a free loopback port against a tiny phantom dataset and tiny models in
a temporary folder, waits for ``/_stcore/health``, and drives Debian's Chromium. Screenshots of
each page go to ``tests/artifacts/screenshots/`` (``HEMO_SCREENSHOTS_DIR=docs/img`` for the
README).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from dashboard_fixtures import HU_MODEL, make_finished_run, make_models, make_phantoms

from hemo import dashboard, reports, runs, ui
from hemo.config import MODELS_DIR, PROJECT_DIR
from hemo.datasets import load_index
from hemo.errors import HemoError
from hemo.serve import CHROMIUM, chromium_launch_options, free_port, streamlit_command, wait_healthy

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Screenshots land in the git-ignored tests/artifacts/; HEMO_SCREENSHOTS_DIR=docs/img refreshes
#: the README's pictures.
SHOTS_DIR = Path(
    os.environ.get("HEMO_SCREENSHOTS_DIR") or PROJECT_DIR / "tests" / "artifacts" / "screenshots"
)
VIEWPORT = {"width": 1400, "height": 1300}
#: Studies of the browser's phantom set: enough for train/val/test splits by patient.
BROWSER_STUDIES = 10
SERVER_START_S = 90
#: The first Predict run imports TensorFlow and traces the model.
PREDICT_S = 180
#: Launch, TensorFlow start-up and the first epoch of the tiny run.
FIRST_EPOCH_S = 300
RUN_NAME = "browser-run"
EXCEPTION = '[data-testid="stException"]'
IMAGE = '[data-testid="stImage"] img'
PLOT = '[data-testid="stPlotlyChart"]'


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    """Tiny phantoms (10 studies), tiny models and an empty runs folder."""
    root = tmp_path_factory.mktemp("browser")
    return {
        "data": make_phantoms(root / "demo", n_studies=BROWSER_STUDIES),
        "models": make_models(root / "models"),
        "runs": root / "runs",
    }


@contextlib.contextmanager
def _streamlit(env_overrides: dict[str, str], log_path: Path):
    """``streamlit run`` on a free loopback port with ``env_overrides``; yields its URL."""
    port = free_port()
    env = {**os.environ, **env_overrides}
    log = log_path.open("wb")
    process = subprocess.Popen(
        streamlit_command(port), env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, SERVER_START_S)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def server(material):
    """The app on the tiny phantoms and models; killed after the module."""
    env = {
        dashboard.ENV_DATASET: str(material["data"]),
        dashboard.ENV_MODELS_DIR: str(material["models"]),
        dashboard.ENV_DEFAULT_MODEL: HU_MODEL,
        "HEMO_RUNS_DIR": str(material["runs"]),
    }
    with _streamlit(env, material["runs"].parent / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright (Playwright's own build only when it is missing)."""
    try:
        from playwright import sync_api
    except ImportError as exc:  # requirements-dev.txt pins it: make test always has it
        message = f"playwright is not installed ({exc}): pip install -r requirements-dev.txt"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must have it")
        pytest.skip(message)
    with sync_api.sync_playwright() as playwright:
        if not CHROMIUM.exists() and shutil.which("chromium") is None and not os.environ.get("CI"):
            pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium)")
        chromium = playwright.chromium.launch(**chromium_launch_options())
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page (own session) at the test viewport."""
    context = browser.new_context(viewport=VIEWPORT)
    yield context.new_page()
    context.close()


def _visit(page, url: str, wait_text: str, timeout_s: float = 120) -> None:
    page.goto(url)
    page.get_by_text(wait_text).first.wait_for(timeout=timeout_s * 1000)
    _settle(page)


def _settle(page, timeout_s: float = 120) -> None:
    """Wait until Streamlit reports no script running."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=timeout_s * 1000,
    )
    page.wait_for_timeout(500)


def _images_loaded(page, timeout_s: float = 30) -> None:
    """Wait until every image of the page has loaded (a rerun replaces them)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
        ".every((img) => img.complete && img.naturalWidth > 0)",
        timeout=timeout_s * 1000,
    )


def _shot(page, name: str, height: int | None = None) -> None:
    """A screenshot; ``height``: of a viewport that tall (Streamlit scrolls inside the page, so
    ``full_page`` alone stops at the viewport), the test's viewport restored after it."""
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    if height is not None:
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        _settle(page)
        _images_loaded(page)
    page.screenshot(path=str(SHOTS_DIR / f"{name}.png"), full_page=True)
    if height is not None:
        page.set_viewport_size(VIEWPORT)


def test_every_page_renders_without_exception(server, page):
    """Home, EDA, Windowing, Training and Predict render with no exception shown, and the
    browser asks nothing of any host but the app's (the app works offline)."""
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda request: (
            None
            if request.url.startswith((server, "data:", "blob:"))
            else elsewhere.append(request.url)
        ),
    )
    _visit(page, server, "launch, watch, compare runs")
    nav = page.locator('[data-testid="stSidebarNav"]')
    for title in ("Home", "EDA", "Windowing", "Training", "Predict"):
        assert nav.get_by_text(title, exact=True).count() == 1
    assert page.get_by_text("Research tool, not a medical device").count() == 1
    assert page.locator(EXCEPTION).count() == 0
    _shot(page, "home")
    _visit(page, f"{server}/eda", "Data quality")
    page.locator(PLOT).nth(7).wait_for(timeout=120_000)
    page.get_by_text("Sample grid").scroll_into_view_if_needed()
    assert page.locator(EXCEPTION).count() == 0
    _shot(page, "eda")
    _visit(page, f"{server}/training", "Start a new run")
    assert page.locator(EXCEPTION).count() == 0
    assert elsewhere == []


def test_training_picks_up_a_run_started_elsewhere(server, page, material):
    """A run that appears on disk while the Training page is open (started from the CLI or
    another session) shows up on its own, also when the page opened with no run at all."""
    name = "outside-run"
    _visit(page, f"{server}/training", "Start a new run")
    already = runs.list_runs(material["runs"])
    try:
        make_finished_run(material["runs"], name)
        page.get_by_text(re.compile(rf"^{name}: finished")).wait_for(timeout=60_000)
        assert page.locator(EXCEPTION).count() == 0
    finally:
        shutil.rmtree(material["runs"] / name, ignore_errors=True)
    assert not [r for r in already if r.name == name]


def test_the_notice_stays_in_sight_on_a_phone(server, browser):
    """On a phone-sized window Streamlit closes the sidebar: the research-tool notice is in the
    page body, visible beside the verdicts."""
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        _visit(page, f"{server}/predict", "Try a sample")
        notice = page.get_by_text("Research tool, not a medical device")
        assert notice.count() == 1 and notice.is_visible()
        sidebar = page.locator('[data-testid="stSidebar"]').bounding_box()
        assert sidebar["x"] + sidebar["width"] <= 0, "the sidebar is closed on a phone"
        box = notice.bounding_box()
        assert 0 <= box["x"] and box["x"] + box["width"] <= 390 and box["y"] < 844
    finally:
        context.close()


def test_real_series_with_the_shipped_model_greys_the_ends(page, material, cq500_dir, tmp_path):
    """The real CQ500 series zipped and dropped on Predict with the shipped real-scan model: a
    study verdict flagged uncertain (in the referral band), the caption counting the slices
    outside the model's range, both legend entries of the strip."""
    archive = tmp_path / f"{cq500_dir.name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        for path in sorted(cq500_dir.glob("*.dcm")):
            out.write(path, f"{cq500_dir.name}/{path.name}")
    env = {
        dashboard.ENV_DATASET: str(material["data"]),
        dashboard.ENV_MODELS_DIR: str(MODELS_DIR),
        dashboard.ENV_DEFAULT_MODEL: "headct_real",
        "HEMO_RUNS_DIR": str(material["runs"]),
    }
    with _streamlit(env, tmp_path / "streamlit.log") as url:
        _visit(page, f"{url}/predict", "Try a sample")
        page.locator('.st-key-predict_upload input[type="file"]').set_input_files(str(archive))
        page.get_by_text("Study verdict").wait_for(timeout=PREDICT_S * 1000)
        _settle(page, PREDICT_S)
        page.locator(IMAGE).nth(1).wait_for(timeout=60_000)
        assert page.get_by_text(re.compile(r"\d+ of 238 slices lie outside")).count() == 1
        strip = page.locator(PLOT).first
        assert strip.get_by_text(dashboard.OUT_OF_RANGE_LABEL).count() >= 1
        assert strip.get_by_text(dashboard.IN_RANGE_LABEL).count() >= 1
        # The verdict (P 0.82) lies in the card's referral band: said, with the advice
        assert page.get_by_text("Refer this series to a reader").count() == 1
        assert page.get_by_text("uncertain: refer to a reader").count() >= 1
        assert page.locator(EXCEPTION).count() == 0
        _shot(page, "predict_series", height=2400)  # down to the slice and its Grad-CAM


def test_window_slider_changes_the_image(server, page):
    """Moving the level slider re-renders the windowed image."""
    _visit(page, f"{server}/windowing", "Pixel probe")
    before = page.locator(IMAGE).first.get_attribute("src")
    thumb = page.get_by_role("slider").nth(1)  # slice slider first, then level
    thumb.focus()
    for _ in range(10):
        thumb.press("ArrowRight")
    _settle(page)
    page.wait_for_function(
        "(old) => document.querySelector('[data-testid=\"stImage\"] img').src !== old",
        arg=before,
        timeout=30_000,
    )
    _settle(page)  # the key presses queue reruns: shoot the last one's image, loaded
    _images_loaded(page)
    assert page.locator(EXCEPTION).count() == 0
    _shot(page, "windowing")


def test_upload_shows_probability_and_heatmap(server, page, material):
    """A DICOM uploaded on Predict shows its probability and the Grad-CAM overlay."""
    index = load_index(material["data"] / "index.parquet")
    path = Path(index.loc[index["label_any"] == 1, "path"].iloc[0])
    _visit(page, f"{server}/predict", "Try a sample")
    page.locator('.st-key-predict_upload input[type="file"]').set_input_files(str(path))
    page.get_by_text("Probability of hemorrhage").wait_for(timeout=PREDICT_S * 1000)
    _settle(page, PREDICT_S)
    page.locator(IMAGE).nth(1).wait_for(timeout=30_000)
    _shot(page, "predict")
    value = page.locator('[data-testid="stMetricValue"]').first.inner_text()
    assert value.endswith("%") and 0.0 <= float(value.rstrip("%")) <= 100.0
    assert page.locator(IMAGE).count() >= 2  # the plain slice and the overlay
    assert page.get_by_text("gradcam · any").count() == 1
    assert page.locator(EXCEPTION).count() == 0


def test_report_download_lists_every_uploaded_file(server, page, material, tmp_path):
    """The CSV report downloaded after a mixed upload has one row per file: the slice with its
    probability, the unreadable file with its error; the uploader's chips hide the names."""
    import pandas as pd

    index = load_index(material["data"] / "index.parquet")
    good = Path(index["path"].iloc[0])
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    _visit(page, f"{server}/predict", "Try a sample")
    page.locator('.st-key-predict_upload input[type="file"]').set_input_files(
        [str(good), str(empty)]
    )
    page.get_by_text("Probability of hemorrhage").wait_for(timeout=PREDICT_S * 1000)
    _settle(page, PREDICT_S)
    # The uploader's chips show no file name (it may be the patient's): text, tooltip
    chip_names = page.locator('[data-testid="stFileChipName"]')
    assert chip_names.count() == 2
    drawn = chip_names.first.evaluate(
        "e => [getComputedStyle(e).fontSize, getComputedStyle(e, '::after').content,"
        " getComputedStyle(e).pointerEvents]"
    )
    assert drawn == ["0px", f'"{ui.HIDDEN_NAME}"', "none"]
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Download CSV report").click()
    report = pd.read_csv(download.value.path())
    assert sorted(report["source"]) == sorted([good.name, empty.name])
    failed = report.set_index("source").loc[empty.name]
    assert "empty" in str(failed["error"]).lower() and pd.isna(failed["probability"])
    assert 0.0 <= report.set_index("source").loc[good.name, "probability"] <= 1.0
    assert page.locator(EXCEPTION).count() == 0


def test_folder_upload_of_an_exported_study(server, page, cq500_dir, tmp_path):
    """A study folder (slices without extension, DICOMDIR, a note) chosen in the browser's
    folder picker: the non-scans are skipped and counted, the slices make one series, whose
    verdict opens the downloaded CSV report."""
    import pandas as pd

    study = tmp_path / "study"
    (study / "IMAGES").mkdir(parents=True)
    for k, path in enumerate(sorted(cq500_dir.glob("*.dcm"))[100:103]):
        (study / "IMAGES" / f"IM{k:04d}").write_bytes(path.read_bytes())
    (study / "DICOMDIR").write_bytes(b"\x00" * 300)
    (study / "notes.txt").write_text("exported from PACS")
    _visit(page, f"{server}/predict", "Try a sample")
    page.locator('.st-key-predict_folder input[type="file"]').set_input_files(str(study))
    page.get_by_text("Study verdict").wait_for(timeout=PREDICT_S * 1000)
    _settle(page, PREDICT_S)
    assert page.get_by_text("2 file(s) of the folder skipped").count() == 1
    assert page.get_by_text(re.compile(r"— 3 slices")).count() == 1
    with page.expect_download(timeout=60_000) as download:  # the series' verdict in the CSV
        page.get_by_role("button", name="Download CSV report").click()
    report = pd.read_csv(download.value.path())
    assert list(report["level"]) == ["study", "slice", "slice", "slice"]
    verdicts = {reports.POSITIVE, reports.NEGATIVE, reports.NO_VERDICT}
    assert report["series"].nunique() == 1 and report["verdict"].iloc[0] in verdicts
    assert page.locator(EXCEPTION).count() == 0


@pytest.fixture
def no_stray_run(material):
    """Stop the browser's training run after the test if it is still going (a failed test)."""
    yield
    try:
        runs.stop_run(RUN_NAME, material["runs"])
    except HemoError:
        pass  # not running: stopped by the test, finished, or never started


def test_training_run_curve_appears_then_stops(server, page, material, no_stray_run):
    """A tiny run started from the form shows its curve live, then the Stop button stops it."""
    _visit(page, f"{server}/training", "Start a new run")
    page.get_by_label("Epochs").fill("30")
    page.get_by_label("Run name").fill(RUN_NAME)
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Image size").click()
    # 256 px: slow enough that early stopping (patience 8, so 10 epochs at the least) cannot end
    # the run before Stop (at 128 px an idle machine once finished 10 epochs first)
    page.get_by_role("option", name="256", exact=True).click()
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(re.compile(rf"^{RUN_NAME}: running")).wait_for(timeout=60_000)
    page.locator(PLOT).first.wait_for(timeout=FIRST_EPOCH_S * 1000)
    assert page.locator(EXCEPTION).count() == 0
    _shot(page, "training")
    page.get_by_role("button", name="Stop this run").click()
    deadline = time.monotonic() + 120
    state = ""
    while time.monotonic() < deadline:
        status = material["runs"] / RUN_NAME / runs.STATUS_FILE
        state = status.read_text(encoding="utf-8") if status.exists() else ""
        if '"stopped"' in state or '"finished"' in state:
            break
        time.sleep(1)
    assert '"stopped"' in state, f"the run was not stopped: {state}"
