"""Every dashboard page through Streamlit's AppTest: numbers, charts, uploads, errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dashboard_fixtures import (
    DISPLAY_MODEL,
    HU_MODEL,
    PHANTOM_SLICES,
    PNG_PER_CLASS,
    make_crossval,
    make_finished_run,
    make_kaggle_pngs,
    make_models,
    make_phantoms,
    zip_bytes,
)
from streamlit.testing.v1 import AppTest

from hemo import dashboard, runs, ui
from hemo.config import PROJECT_DIR, RSNA_LABELS
from hemo.datasets import load_index
from hemo.train import DEFAULTS

APP = str(PROJECT_DIR / "streamlit_app.py")
#: First runs import TensorFlow and trace the model: give them time on 2 busy cores.
TIMEOUT_S = 240
pytestmark = pytest.mark.slow
#: Real CQ500 slices uploaded from the skull base and from the middle of the series, each.
REAL_SERIES_EACH = 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Point the app at a tiny phantom dataset, tiny models and an empty runs folder."""
    root = tmp_path_factory.mktemp("app")
    paths = {
        "data": make_phantoms(root / "demo"),
        "models": make_models(root / "models"),
        "runs": root / "runs",
        "kaggle": make_kaggle_pngs(root / "kaggle"),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(dashboard.ENV_DATASET, str(paths["data"]))
        mp.setenv(dashboard.ENV_MODELS_DIR, str(paths["models"]))
        mp.setenv(dashboard.ENV_DEFAULT_MODEL, HU_MODEL)
        mp.setenv("HEMO_RUNS_DIR", str(paths["runs"]))
        yield paths


def _open(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    at.switch_page(page).run()
    return at


def _with_dataset(path: Path, page: str) -> AppTest:
    """The app on ``page`` with a dataset path typed in the sidebar (through its widget keys)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.session_state[ui.DATASET_CHOICE_KEY] = ui.OTHER_DATASET
    at.session_state[ui.DATASET_TEXT_KEY] = str(path)
    at.run()
    at.switch_page(page).run()
    return at


def _upload(at: AppTest, path: Path, key: str = "predict_upload") -> None:
    """Drop one file into an uploader of the page and rerun it."""
    at.file_uploader(key=key).set_value(
        (path.name, path.read_bytes(), "application/octet-stream")
    ).run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _display_card(env) -> dict:
    """The tiny display model's card as JSON, to edit."""
    return json.loads((env["models"] / f"{DISPLAY_MODEL}.json").read_text())


def _models_with_display_card(env, tmp_path: Path, card: dict) -> Path:
    """A models folder holding the tiny display model with ``card`` as its card."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(env["models"] / f"{DISPLAY_MODEL}.keras", models)
    (models / f"{DISPLAY_MODEL}.json").write_text(json.dumps(card))
    return models


def _dicoms(env) -> list[Path]:
    index = load_index(env["data"] / "index.parquet")
    first = index[index["study_uid"] == index["study_uid"].iloc[0]]
    return [Path(p) for p in first["path"]]


def test_entrypoint_navigation_sidebar_and_notice(env):
    """Sidebar offers the dataset and models; the notice is shown; Home is the default page."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
    _ok(at)
    assert at.sidebar.selectbox(key="hemo_model_choice").options == [HU_MODEL, DISPLAY_MODEL]
    # In the page body, not only the sidebar (closed on a phone): on every page
    assert "Research tool, not a medical device" in at.main.caption[0].value
    assert not any("Research tool" in i.value for i in at.sidebar.info)
    assert at.title[0].value.startswith("hemo")
    at.switch_page("app_pages/predict.py").run()
    at.run()  # a rerun on another page still runs the entrypoint (no v1 pages/ mode)
    assert at.sidebar.selectbox(key="hemo_model_choice").value == HU_MODEL
    assert at.title[0].value == "Predict"
    assert "Research tool, not a medical device" in at.main.caption[0].value


def test_home_shows_model_and_dataset_numbers(env):
    """Home shows the card's metrics, the dataset counts and links to the four pages."""
    at = _open("app_pages/home.py")
    _ok(at)
    metrics = _metrics(at)
    index = load_index(env["data"] / "index.parquet")
    assert metrics["Images"] == str(len(index))
    assert metrics["Hemorrhage"] == str(int(index["label_any"].sum()))
    assert metrics["threshold"] == "0.500" and metrics["ROC AUC"] == "0.750"
    assert len(at.get("page_link")) == 4


def test_eda_draws_every_chart_on_phantoms(env):
    """EDA on phantoms: counts, eight plotly charts, sample grid and the quality tables."""
    at = _open("app_pages/eda.py")
    _ok(at)
    assert _metrics(at)["Studies"] == "4"
    assert len(at.get("plotly_chart")) == 9
    assert len(at.image) >= 4
    assert len(at.dataframe) >= 1
    assert not at.error


def test_eda_second_visit_reuses_the_cached_sample(env):
    """A second session on EDA (a reload, another user) gets the cached sample and draws every
    chart: nothing of the first session's progress bar is replayed."""
    first = _open("app_pages/eda.py")
    _ok(first)
    again = _open("app_pages/eda.py")
    _ok(again)
    assert len(again.get("plotly_chart")) == len(first.get("plotly_chart")) == 9
    assert len(again.dataframe) == len(first.dataframe)


def test_progress_memo_bounds_expires_and_reports_only_on_a_miss(monkeypatch):
    """The EDA sample cache: a hit computes nothing (so draws no progress), the least recently
    used entry goes first, and an entry older than the time to live is computed again."""
    clock = [0.0]
    monkeypatch.setattr(ui.time, "monotonic", lambda: clock[0])
    memo = ui.ProgressMemo(max_entries=2, ttl_s=10.0)
    calls: list[str] = []

    def compute(key: str):
        return lambda: calls.append(key) or key.upper()

    assert memo.get("a", compute("a")) == "A" and memo.get("a", compute("a")) == "A"
    memo.get("b", compute("b"))
    memo.get("a", compute("a"))  # a is now the most recently used
    memo.get("c", compute("c"))  # evicts b
    memo.get("a", compute("a"))
    memo.get("b", compute("b"))
    assert calls == ["a", "b", "c", "b"]
    clock[0] = 11.0
    memo.get("b", compute("b"))
    assert calls[-1] == "b" and len(calls) == 5


def test_series_results_are_cached_per_model_file_and_draw_progress_only_when_predicted(
    monkeypatch, tmp_path
):
    """The Predict page's series cache: the first call predicts and draws a bar (then removes
    it); the same model, upload and series again reuses the result and draws nothing; another
    series, or the model file rewritten (a run exported over it), predicts again; each caller
    gets its own study dict."""
    from hemo.dashboard import SeriesResult

    predicted: list[object] = []
    bars: list[list[str]] = []

    class Bar:
        def __init__(self) -> None:
            self.texts: list[str] = []
            bars.append(self.texts)

        def progress(self, fraction: float, text: str) -> None:
            self.texts.append(text)

        def empty(self) -> None:
            self.texts.append("emptied")

    def fake_predict(predictor, series, on_progress=None):
        on_progress(0.5, "slice 2 of 3")
        on_progress(1.0, "slice 3 of 3")
        predicted.append((predictor, series))
        study = {"source": series, "outside_range_slices": [1]}
        return SeriesResult(series, (), np.zeros(3), study, 0)

    model = tmp_path / "m.keras"
    model.write_bytes(b"v1")
    monkeypatch.setattr(ui, "_series_results", ui.ProgressMemo(max_entries=4, ttl_s=60.0))
    monkeypatch.setattr(ui, "predictor", lambda path: f"predictor {Path(path).name}")
    monkeypatch.setattr(ui.dashboard, "predict_series", fake_predict)
    monkeypatch.setattr(ui.st, "progress", lambda fraction, text: Bar())
    first = ui.predict_series(str(model), "k", "r0", "s0", "Predicting 3 slices…")
    assert bars == [["Predicting slice 2 of 3", "Predicting slice 3 of 3", "emptied"]]
    first.study["outside_range_slices"].append(99)  # the caller's own copy
    again = ui.predict_series(str(model), "k", "r0", "s0", "Predicting 3 slices…")
    assert len(bars) == 1 and again.study["outside_range_slices"] == [1]
    ui.predict_series(str(model), "k", "r1", "s1", "Predicting 3 slices…")
    os.utime(model, ns=(1, 1))  # rewritten: another modification time
    ui.predict_series(str(model), "k", "r0", "s0", "Predicting 3 slices…")
    assert [series for _, series in predicted] == ["s0", "s1", "s0"]


def test_a_click_during_a_series_prediction_reruns_only_once_it_is_cached(monkeypatch, tmp_path):
    """Streamlit raises its rerun from a drawing call when the user clicks meanwhile: the
    prediction still finishes and is cached, then the rerun goes on, and the rerun finds the
    result instead of predicting every slice again."""
    from streamlit.runtime.scriptrunner_utils.exceptions import RerunException

    from hemo.dashboard import SeriesResult

    predicted: list[str] = []
    reached: list[str] = []

    class Bar:
        def progress(self, fraction: float, text: str) -> None:
            raise RerunException(None)

        def empty(self) -> None:
            raise AssertionError("no drawing once a rerun is pending")

    def fake_predict(predictor, series, on_progress=None):
        on_progress(0.5, "slice 2 of 3")
        reached.append("the last batch")  # not cut short by the rerun
        on_progress(1.0, "slice 3 of 3")
        predicted.append(series)
        return SeriesResult(series, (), np.zeros(3), {"source": series}, 0)

    model = tmp_path / "m.keras"
    model.write_bytes(b"v1")
    monkeypatch.setattr(ui, "_series_results", ui.ProgressMemo(max_entries=4, ttl_s=60.0))
    monkeypatch.setattr(ui, "predictor", lambda path: "predictor")
    monkeypatch.setattr(ui.dashboard, "predict_series", fake_predict)
    monkeypatch.setattr(ui.st, "progress", lambda fraction, text: Bar())
    with pytest.raises(RerunException):
        ui.predict_series(str(model), "k", "r0", "s0", "Predicting 3 slices…")
    assert reached == ["the last batch"] and predicted == ["s0"]
    assert ui.predict_series(str(model), "k", "r0", "s0", "Predicting 3 slices…").name == "s0"
    assert predicted == ["s0"]


def test_eda_on_a_kaggle_png_layout(env):
    """EDA on a Kaggle head-CT layout draws intensity histograms and no subtype charts."""
    at = _with_dataset(env["kaggle"], "app_pages/eda.py")
    _ok(at)
    assert _metrics(at)["Images"] == "12"
    assert _metrics(at)["Patients"] == "n/a"  # no patient ids, not "0 patients"
    # no study ids either: not "12 studies" with a chart of 12 studies of one image each
    assert _metrics(at)["Studies"] == "n/a"
    assert any("subtype labels" in c.value for c in at.caption)
    # PNGs hold no HU: no window selector that would change nothing
    assert "eda_window" not in [s.key for s in at.selectbox]
    assert any("hold no Hounsfield units to window" in c.value for c in at.caption)
    charts = [c.key for c in at.get("plotly_chart")]
    assert charts == ["class_balance", "split_sizes", "histograms", "sizes", "backgrounds"]
    # The quality table says what it checked: every label, the pixels of the sample only
    assert any(
        c.value == "Labels, duplicates and look-alikes are checked on all 12 images, and every "
                   "one was decoded in the pixel sample above."
        for c in at.caption
    )  # fmt: skip
    # Its synthetic discs all look alike: one pair of one group, side by side, and counted
    assert any("Look-alike images" in m.value for m in at.markdown)
    assert any(c.value.endswith("The most alike pair of each of its 1 group.") for c in at.caption)
    captions = [c for i in at.image for c in i.captions if "correlation" in c]
    assert len(captions) == 1
    counts = at.dataframe[0].value.set_index("kind")["files"]
    assert counts["lookalike"] == 11  # every image after the group's first


def test_eda_warns_of_gray_backgrounds_on_the_real_kaggle_set(env, head_ct_dir):
    """On the real Kaggle set the EDA page plots each image's background level and warns that
    gray backgrounds sit mostly in one class, naming the fix."""
    at = _with_dataset(head_ct_dir, "app_pages/eda.py")
    _ok(at)
    at.slider(key="eda_per_class").set_value(16).run()
    _ok(at)
    assert "backgrounds" in [c.key for c in at.get("plotly_chart")]
    warnings = [w.value for w in at.warning if "Gray backgrounds" in w.value]
    assert len(warnings) == 1
    assert "hemorrhage 8 of 16, no hemorrhage 3 of 16" in warnings[0]
    assert "input.black_background = true" in warnings[0]


def test_eda_bad_dataset_path_shows_error(env, tmp_path):
    """A typed path that does not exist gives st.error naming it, and no exception."""
    at = _with_dataset(tmp_path / "nope", "app_pages/eda.py")
    _ok(at)
    assert "nope: no such file or folder" in at.error[0].value


def test_windowing_slider_preset_probe_and_metadata(env):
    """Moving the level changes the image; a preset sets the width; the probe reads the HU."""
    from hemo.io import read_scan

    at = _open("app_pages/windowing.py")
    _ok(at)
    before = at.image[0].value
    at.slider(key="win_center").set_value(300).run()
    assert at.image[0].value != before
    at.button(key="preset_bone").click().run()
    assert at.slider(key="win_width").value == 2800
    study = dashboard.dataset_studies(load_index(env["data"] / "index.parquet"))[0]
    scan = read_scan(study.paths[0])
    at.number_input(key="probe_row").set_value(60).run()
    at.number_input(key="probe_col").set_value(70).run()
    assert _metrics(at)["HU at pixel"] == f"{scan.hu[60, 70]:.0f}"
    assert len(at.get("plotly_chart")) == 1
    assert "Modality" in at.dataframe[0].value["field"].tolist()
    assert at.slider(key="win_slice").max == PHANTOM_SLICES


def test_windowing_keeps_the_chosen_window_across_sources(env):
    """A preset chosen on a dataset scan stays chosen through an upload with no file yet (whose
    run draws no slider) and on the uploaded scan; sliders and caption agree."""
    at = _open("app_pages/windowing.py")
    at.button(key="preset_bone").click().run()
    at.radio(key="win_source").set_value("Upload DICOM").run()
    path = _dicoms(env)[0]
    _upload(at, path, key="win_upload")
    _ok(at)
    center, width = at.slider(key="win_center"), at.slider(key="win_width")
    assert (center.value, width.value) == (600, 2800)

    def shown(slider) -> list[float]:  # what the browser draws: the value sent, else the default
        return list(slider.proto.value) if slider.proto.set_value else list(slider.proto.default)

    assert (shown(center), shown(width)) == ([600.0], [2800.0])
    assert at.image[0].captions[0] == "Chosen window 600/2800 HU"
    at.radio(key="win_source").set_value("From the dataset").run()
    assert (at.slider(key="win_center").value, at.slider(key="win_width").value) == (600, 2800)


def test_windowing_opens_on_the_first_scan_it_can_window(env, head_ct_dir):
    """A PNG dropped before a DICOM: the page opens on the DICOM (the PNG, listed after it,
    carries no HU); uploads keep their order otherwise."""
    at = _open("app_pages/windowing.py")
    at.radio(key="win_source").set_value("Upload DICOM").run()
    png, dicom = head_ct_dir / "head_ct" / "120.png", _dicoms(env)[0]
    at.file_uploader(key="win_upload").set_value(
        [(p.name, p.read_bytes(), "application/octet-stream") for p in (png, dicom)]
    ).run()
    _ok(at)
    assert at.selectbox(key="win_scan").options == [dicom.name, png.name]
    assert not at.warning and at.slider(key="win_center")


def test_windowing_upload_of_a_zipped_series(env):
    """An uploaded zip of a series gets a slice slider; a bad upload shows an error."""
    at = _open("app_pages/windowing.py")
    at.radio(key="win_source").set_value("Upload DICOM").run()
    at.file_uploader(key="win_upload").set_value(
        [
            ("series.zip", zip_bytes(_dicoms(env)), "application/zip"),
            ("junk.dcm", b"junk" * 50, "application/octet-stream"),
        ]
    ).run()
    _ok(at)
    assert at.slider(key="win_upload_slice").max == PHANTOM_SLICES
    assert "junk.dcm" in at.error[0].value
    assert len(at.image) >= 5


def _away_and_back(at: AppTest, page: str) -> None:
    """Visit Home, then ``page`` again (Streamlit forgets a widget's value by default)."""
    at.switch_page("app_pages/home.py").run()
    at.switch_page(page).run()
    _ok(at)


def test_page_choices_survive_a_visit_to_another_page(env):
    """A slice, a pixel probe, a heatmap method and opacity, a run, a sample size: each is still
    chosen after a visit to Home (they all fell back to their defaults); a persisted slice
    beyond a new series' last one starts again from the first instead of failing the page."""
    made = [make_finished_run(env["runs"], name) for name in ("keep_a", "keep_b")]
    try:
        _choices_survive(env)
    finally:
        for path in made:  # the module's other tests count the runs
            shutil.rmtree(path)


def _choices_survive(env) -> None:
    at = _open("app_pages/windowing.py")
    at.slider(key="win_slice").set_value(2).run()
    at.number_input(key="probe_row").set_value(60).run()
    _away_and_back(at, "app_pages/windowing.py")
    assert (at.slider(key="win_slice").value, at.number_input(key="probe_row").value) == (2, 60)
    at.radio(key="win_source").set_value("Upload DICOM").run()
    series = ("series.zip", zip_bytes(_dicoms(env)), "application/zip")
    at.file_uploader(key="win_upload").set_value([series]).run()
    at.slider(key="win_upload_slice").set_value(PHANTOM_SLICES).run()
    shorter = ("short.zip", zip_bytes(_dicoms(env)[:2], "short"), "application/zip")
    at.file_uploader(key="win_upload").set_value([shorter]).run()
    _ok(at)
    assert at.slider(key="win_upload_slice").value == 1  # slice 6 of 2: back to the first
    _away_and_back(at, "app_pages/windowing.py")
    assert at.radio(key="win_source").value == "Upload DICOM"

    at.switch_page("app_pages/predict.py").run()
    _upload(at, _dicoms(env)[1])
    at.selectbox(key="cam_method").set_value("gradcam++").run()
    at.slider(key="cam_alpha").set_value(0.7).run()
    _away_and_back(at, "app_pages/predict.py")
    assert (at.selectbox(key="cam_method").value, at.slider(key="cam_alpha").value) == (
        "gradcam++",
        0.7,
    )
    assert any("gradcam++" in c for image in at.image for c in image.captions)

    at.switch_page("app_pages/training.py").run()
    runs_box = at.selectbox(key="training_selected")
    other = next(name for name in runs_box.options if name != runs_box.value)
    runs_box.set_value(other).run()
    _away_and_back(at, "app_pages/training.py")
    assert at.selectbox(key="training_selected").value == other

    at.switch_page("app_pages/eda.py").run()
    at.slider(key="eda_per_class").set_value(5).run()
    _away_and_back(at, "app_pages/eda.py")
    assert at.slider(key="eda_per_class").value == 5


def test_predict_upload_gives_probability_overlay_and_reports(env):
    """An uploaded DICOM gives its probability as a percentage, a verdict and an overlay image."""
    from hemo.predict import Predictor

    path = _dicoms(env)[1]
    at = _open("app_pages/predict.py")
    _upload(at, path)
    _ok(at)
    with Predictor(env["models"] / f"{HU_MODEL}.keras") as predictor:
        expected = predictor.predict([(path.name, path.read_bytes())])[0].probability
    metrics = _metrics(at)
    assert metrics["Probability of hemorrhage"] == f"{expected * 100:.1f}%"
    assert metrics["Verdict"] in {"hemorrhage", "no hemorrhage"}
    assert [i.captions[0] for i in at.image] == ["slice", "gradcam · any"]
    subtypes = at.dataframe[0].value  # the only table: subtype probabilities
    assert subtypes["label"].tolist() == list(RSNA_LABELS[1:])
    labels = [d.label for d in at.get("download_button")]
    assert labels == ["Download overlay PNG", "Download CSV report", "Download JSON report"]


def test_predict_keeps_an_upload_through_a_visit_to_another_page(env):
    """Going to Home and back (Streamlit then forgets the uploader's files) shows the same
    upload's result again with a note and a "Forget it" button; forgetting empties the page,
    and emptying the uploader on the page drops the kept copy too."""
    path = _dicoms(env)[1]
    at = _open("app_pages/predict.py")
    _upload(at, path)
    _ok(at)
    shown = _metrics(at)["Probability of hemorrhage"]
    at.switch_page("app_pages/home.py").run()
    at.switch_page("app_pages/predict.py").run()
    _ok(at)
    assert _metrics(at)["Probability of hemorrhage"] == shown
    assert any("Your earlier upload is shown again (1 file(s)" in i.value for i in at.info)
    at.slider(key="cam_alpha").set_value(0.6).run()  # another widget: still shown
    assert _metrics(at)["Probability of hemorrhage"] == shown
    at.button(key="forget_upload").click().run()
    assert "Probability of hemorrhage" not in _metrics(at)
    assert any("Drop scans above" in i.value for i in at.info)
    # An upload emptied on the page is not brought back
    _upload(at, path)
    at.file_uploader(key="predict_upload").set_value([]).run()
    assert "Probability of hemorrhage" not in _metrics(at)


def test_predict_bad_upload_errors_and_others_still_processed(env):
    """A bad file shows st.error naming it; the good file beside it still gets a probability."""
    path = _dicoms(env)[0]
    at = _open("app_pages/predict.py")
    at.file_uploader(key="predict_upload").set_value(
        [
            ("empty.dcm", b"", "application/octet-stream"),
            (path.stem, path.read_bytes(), "application/octet-stream"),  # no extension
        ]
    ).run()
    _ok(at)
    assert len(at.error) == 1 and "empty.dcm" in at.error[0].value
    assert _metrics(at)["Probability of hemorrhage"].endswith("%")


def test_predict_same_slice_twice_is_a_warning_and_both_are_predicted(env):
    """The same slice uploaded twice (two copies under two names): a warning naming both, no
    error, and each copy still gets its probability."""
    path = _dicoms(env)[0]
    at = _open("app_pages/predict.py")
    at.file_uploader(key="predict_upload").set_value(
        [
            ("a.dcm", path.read_bytes(), "application/octet-stream"),
            ("copy.dcm", path.read_bytes(), "application/octet-stream"),
        ]
    ).run()
    _ok(at)
    assert len(at.error) == 0
    (warning,) = [w.value for w in at.warning if "uploaded twice" in w.value]
    assert warning.startswith("a.dcm and copy.dcm lie at the same place")
    probabilities = [m.value for m in at.metric if m.label == "Probability of hemorrhage"]
    assert len(probabilities) == 2 and probabilities[0] == probabilities[1]


def test_predict_says_when_a_series_looks_incomplete(env, tmp_path):
    """A zipped series with two middle slices left out gets its verdict and a warning that the
    verdict covers only the slices given."""
    from hemo.phantom import write_demo_dataset

    write_demo_dataset(tmp_path, n_studies=1, seed=5, slices_per_study=8, size=64)
    slices = sorted((tmp_path / "stage_2_train").glob("*.dcm"), key=lambda p: _z_mm(p))
    part = [p for k, p in enumerate(slices) if k not in (3, 4)]
    at = _open("app_pages/predict.py")
    at.file_uploader(key="predict_upload").set_value(
        ("part.zip", zip_bytes(part, "part"), "application/zip")
    ).run()
    _ok(at)
    assert _metrics(at)["Study verdict"] in {"hemorrhage", "no hemorrhage"}
    (warning,) = [w.value for w in at.warning if "looks incomplete" in w.value]
    assert warning.startswith("The series looks incomplete: 1 gap(s)")
    assert warning.endswith("The verdict covers only the slices given.")


def _z_mm(path: Path) -> float:
    from hemo.dicom import read_dicom_header

    return read_dicom_header(path).slice_z_mm


def test_predict_series_zip_gives_study_verdict_and_strip(env):
    """A zipped series gives a study verdict, a strip chart and a jump to the top slice."""
    at = _open("app_pages/predict.py")
    at.file_uploader(key="predict_upload").set_value(
        ("study.zip", zip_bytes(_dicoms(env), "study"), "application/zip")
    ).run()
    _ok(at)
    metrics = _metrics(at)
    assert metrics["Study verdict"] in {"hemorrhage", "no hemorrhage"}
    assert len(at.get("plotly_chart")) == 1  # the per-slice strip
    jump = at.button(key="jump_0")
    top = int(jump.label.rsplit("(", 1)[1].rstrip(")"))
    at.slider(key="series_slice_0").set_value(1 if top != 1 else 2).run()
    at.button(key="jump_0").click().run()
    assert at.slider(key="series_slice_0").value == top
    # The slice shown is named under it: its place in the series, its file and position
    captions = [c for image in at.image for c in image.captions]
    assert any(re.match(rf"slice {top} · \S+\.dcm · z -?\d+\.\d mm$", c) for c in captions)
    # Another series in the same place opens at its own most suspicious slice, not the old one
    at.slider(key="series_slice_0").set_value(1 if top != 1 else 2).run()
    shorter = _dicoms(env)[:-1]
    at.file_uploader(key="predict_upload").set_value(
        ("shorter.zip", zip_bytes(shorter, "shorter"), "application/zip")
    ).run()
    _ok(at)
    label = at.button(key="jump_0").label
    assert at.slider(key="series_slice_0").value == int(label.rsplit("(", 1)[1].rstrip(")"))
    assert at.slider(key="series_slice_0").max == len(shorter)
    # The slice chosen is kept through a visit to another page (Streamlit forgot the slider's
    # value, and the page showed slice 1), and the strip marks it
    chosen = 2 if at.slider(key="series_slice_0").value != 2 else 3
    at.slider(key="series_slice_0").set_value(chosen).run()
    at.switch_page("app_pages/home.py").run()
    at.switch_page("app_pages/predict.py").run()
    _ok(at)
    assert at.slider(key="series_slice_0").value == chosen
    (strip,) = at.get("plotly_chart")
    shapes = json.loads(strip.proto.spec)["layout"]["shapes"]
    assert [s["x0"] for s in shapes if s["x0"] == s["x1"]] == [chosen]  # the one vertical line


def test_real_series_slices_outside_the_range_are_named_and_left_out(env, cq500_dir, monkeypatch):
    """With the shipped real-scan model, skull-base slices of the real CQ500 series are grey in
    the strip, counted out of the verdict in a caption, and named in a warning when shown."""
    import pydicom

    from hemo.config import MODELS_DIR

    def z_of(path: Path) -> float:
        return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])

    files = sorted(cq500_dir.glob("*.dcm"), key=z_of)
    middle = len(files) // 2
    chosen = files[:REAL_SERIES_EACH] + files[middle : middle + REAL_SERIES_EACH]
    monkeypatch.setenv(dashboard.ENV_MODELS_DIR, str(MODELS_DIR))
    monkeypatch.setenv(dashboard.ENV_DEFAULT_MODEL, "headct_real")
    at = _open("app_pages/predict.py")
    at.file_uploader(key="predict_upload").set_value(
        ("cq500.zip", zip_bytes(chosen, "cq500"), "application/zip")
    ).run()
    _ok(at)
    n = 2 * REAL_SERIES_EACH
    caption = f"{REAL_SERIES_EACH} of {n} slices lie outside the slices the model was trained on"
    assert any(caption in c.value for c in at.caption), [c.value for c in at.caption]
    assert {"Highest slice probability in range", "Slices over threshold in range"} <= set(
        _metrics(at)
    )
    at.slider(key="series_slice_0").set_value(1).run()
    assert any("Outside the model's range: soft tissue is" in w.value for w in at.warning)
    # An out-of-range slice gets no call: its verdict says so, and no referral advice
    assert _metrics(at)["Verdict"] == "none"
    assert not any("Uncertain call" in w.value and "this image" in w.value for w in at.warning)
    at.slider(key="series_slice_0").set_value(n).run()
    assert not any("Outside the model's range" in w.value for w in at.warning)
    assert _metrics(at)["Verdict"] in ("hemorrhage", "no hemorrhage")
    # headct_real was trained on real scans: no synthetic-training warning
    assert not any("synthetic phantoms only" in w.value for w in at.warning)
    # The skull-base slices alone: no slice in range, so no study verdict (as for one such
    # slice shown alone) and no referral advice for it; the caption says so
    at.file_uploader(key="predict_upload").set_value(
        ("base.zip", zip_bytes(files[:REAL_SERIES_EACH], "base"), "application/zip")
    ).run()
    _ok(at)
    assert _metrics(at)["Study verdict"] == "none"
    assert any("so it gets no verdict" in c.value for c in at.caption)
    assert not any("this series" in w.value and "Uncertain call" in w.value for w in at.warning)


def test_predict_upload_of_a_multiframe_file_is_a_series(env, cq500_dir, monkeypatch):
    """One Enhanced CT file of real CQ500 slices: a series with a study verdict and a slider
    over its frames, each of which can be shown."""
    from dicom_factory import enhanced_ct, to_bytes

    from hemo.config import MODELS_DIR

    files = sorted(cq500_dir.glob("*.dcm"))[100 : 100 + REAL_SERIES_EACH]
    monkeypatch.setenv(dashboard.ENV_MODELS_DIR, str(MODELS_DIR))
    monkeypatch.setenv(dashboard.ENV_DEFAULT_MODEL, "headct_real")
    at = _open("app_pages/predict.py")
    at.file_uploader(key="predict_upload").set_value(
        ("enhanced.dcm", to_bytes(enhanced_ct(files)), "application/dicom")
    ).run()
    _ok(at)
    assert _metrics(at)["Study verdict"] in {"hemorrhage", "no hemorrhage"}
    assert at.slider(key="series_slice_0").max == REAL_SERIES_EACH
    assert any(f"{REAL_SERIES_EACH} slices" in h.value for h in at.subheader)
    at.slider(key="series_slice_0").set_value(REAL_SERIES_EACH).run()
    _ok(at)


def test_predict_and_windowing_take_a_nifti_volume(env, cq500_dir, monkeypatch):
    """A .nii.gz of real CQ500 slices: a series on the Predict page, a slice slider on the
    windowing explorer."""
    import gzip

    import nibabel

    from hemo.config import MODELS_DIR
    from hemo.dicom import read_dicom

    slices = sorted(
        (read_dicom(p) for p in sorted(cq500_dir.glob("*.dcm"))[100 : 100 + REAL_SERIES_EACH]),
        key=lambda s: s.slice_z_mm,
    )
    data = np.stack([s.hu.T for s in slices], axis=-1).round().astype(np.int16)
    affine = np.diag([-0.5, -0.5, 0.625, 1.0])
    volume = gzip.compress(nibabel.Nifti1Image(data, affine).to_bytes())
    monkeypatch.setenv(dashboard.ENV_MODELS_DIR, str(MODELS_DIR))
    monkeypatch.setenv(dashboard.ENV_DEFAULT_MODEL, "headct_real")
    at = _open("app_pages/predict.py")
    at.file_uploader(key="predict_upload").set_value(
        ("head.nii.gz", volume, "application/gzip")
    ).run()
    _ok(at)
    assert _metrics(at)["Study verdict"] in {"hemorrhage", "no hemorrhage"}
    assert at.slider(key="series_slice_0").max == REAL_SERIES_EACH
    at = _open("app_pages/windowing.py")
    at.radio(key="win_source").set_value("Upload DICOM").run()
    at.file_uploader(key="win_upload").set_value(("head.nii.gz", volume, "application/gzip")).run()
    _ok(at)
    assert at.slider(key="win_upload_slice").max == REAL_SERIES_EACH


def test_predict_takes_an_exported_study_folder(env, cq500_dir, monkeypatch):
    """A folder upload with real slices (no extension), a scout, DICOMDIR and a note: the two
    non-scans are skipped and counted, the scout is named and left out of the verdict."""
    import pydicom
    from dicom_factory import to_bytes

    from hemo.config import MODELS_DIR

    names = sorted(p.name for p in cq500_dir.glob("*.dcm"))[100:103]
    files = [(f"study/IMAGES/IM{k:04d}", (cq500_dir / n).read_bytes()) for k, n in enumerate(names)]
    scout = pydicom.dcmread(cq500_dir / names[0])
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImagePositionPatient = [0.0, 0.0, 999.0]
    files.append(("study/IMAGES/IM0099", to_bytes(scout)))
    files += [("study/DICOMDIR", b"\x00" * 300), ("study/notes.txt", b"exported from PACS")]
    monkeypatch.setenv(dashboard.ENV_MODELS_DIR, str(MODELS_DIR))
    monkeypatch.setenv(dashboard.ENV_DEFAULT_MODEL, "headct_real")
    at = _open("app_pages/predict.py")
    at.file_uploader(key="predict_folder").set_value(
        [(name, data, "application/octet-stream") for name, data in files]
    ).run()
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    captions = [c.value for c in at.caption]
    assert any("2 file(s) of the folder skipped" in c for c in captions), captions
    assert any("of 4 slices lie outside" in c and "localizers" in c for c in captions), captions
    assert at.slider(key="series_slice_0").max == 4
    at.slider(key="series_slice_0").set_value(4).run()  # the scout sits highest (z 999)
    assert any("localizer (scout)" in w.value for w in at.warning)


def test_predict_samples_and_png_on_display_model(env):
    """The three sample buttons predict; a PNG with the HU model errors, with the display model works."""
    at = _open("app_pages/predict.py")
    for key in dashboard.SAMPLES:
        at.button(key=f"sample_{key}").click().run()
    _ok(at)
    assert len([m for m in at.metric if m.label == "Probability of hemorrhage"]) == 3
    png = (env["kaggle"] / "head_ct" / "000.png").read_bytes()
    at.file_uploader(key="predict_upload").set_value(("head.png", png, "image/png")).run()
    assert "head.png: model expects HU windows" in at.error[0].value
    at.session_state[ui.MODEL_CHOICE_KEY] = DISPLAY_MODEL
    at.run()
    _ok(at)
    assert not at.error
    assert len([m for m in at.metric if m.label == "Probability of hemorrhage"]) == 4


def test_predict_on_a_model_that_blends_density_features(env, tmp_path, monkeypatch):
    """A card with a density blend: the page shows the blend (the Predictor's probability, not
    the network's) and says under the map that the map is not all the evidence."""
    import dataclasses

    from hemo.density import DensityBlend, DensityModel, many_features
    from hemo.io import read_scan
    from hemo.model import load_model, save_model
    from hemo.predict import Predictor

    plain_path = env["models"] / f"{DISPLAY_MODEL}.keras"
    pngs = sorted((env["kaggle"] / "head_ct").glob("*.png"))
    with Predictor(plain_path) as plain:
        x = np.stack([plain.prepare(read_scan(p)) for p in pngs])
        network = plain.predict([(pngs[0].name, pngs[0].read_bytes())])[0].probability
    labels = [int(int(p.stem) < PNG_PER_CLASS) for p in pngs]
    regression = DensityModel.fit(many_features(x[..., 0]), labels)
    model, card = load_model(plain_path)
    card = dataclasses.replace(card, density=DensityBlend(regression).to_dict())
    path = save_model(model, tmp_path / "models" / DISPLAY_MODEL, card)
    monkeypatch.setenv(dashboard.ENV_MODELS_DIR, str(path.parent))
    monkeypatch.setenv(dashboard.ENV_DEFAULT_MODEL, DISPLAY_MODEL)
    at = _open("app_pages/predict.py")
    _upload(at, pngs[0])
    _ok(at)
    with Predictor(path) as predictor:
        blended = predictor.predict([(pngs[0].name, pngs[0].read_bytes())])[0].probability
    assert abs(blended - network) > 0.01  # the bright square moved it
    assert _metrics(at)["Probability of hemorrhage"] == f"{blended * 100:.1f}%"
    assert dashboard.DENSITY_CAPTION in [c.value for c in at.caption]


def test_predict_says_what_a_phantom_sample_is_to_each_shipped_model(env, monkeypatch):
    """The real-scan model given a phantom sample says the call is no test of it (not the real
    CQ500 sample); the phantom-only model marks every call, a series' once, as no finding on
    a real scan."""
    from hemo.config import MODELS_DIR

    monkeypatch.setenv(dashboard.ENV_MODELS_DIR, str(MODELS_DIR))
    monkeypatch.setenv(dashboard.ENV_DEFAULT_MODEL, "headct_real")
    at = _open("app_pages/predict.py")
    for key in (dashboard.SAMPLE_BLEED, dashboard.SAMPLE_CQ500):
        at.button(key=f"sample_{key}").click().run()
    _ok(at)
    infos = [i.value for i in at.info if i.value.startswith("A synthetic phantom (a sample)")]
    assert len(infos) == 1 and "headct_real was trained on real scans" in infos[0]
    headers = [h.value for h in at.subheader]
    assert sum(h.startswith(dashboard.SAMPLE_PREFIX) for h in headers) == 2
    # A real upload named like the phantom sample's file is no sample
    name, data = dashboard.sample_input(dashboard.SAMPLE_BLEED)
    at.file_uploader(key="predict_upload").set_value((name, data, "application/dicom")).run()
    infos = [i.value for i in at.info if i.value.startswith("A synthetic phantom (a sample)")]
    assert len(infos) == 1  # still only the sample's
    assert dashboard.PHANTOM_ONLY_CAPTION not in [c.value for c in at.caption]
    at.session_state[ui.MODEL_CHOICE_KEY] = "phantom_rsna3"
    at.run()
    _ok(at)
    assert not [i for i in at.info if i.value.startswith("A synthetic phantom (a sample)")]
    captions = [c.value for c in at.caption]
    assert captions.count(dashboard.PHANTOM_ONLY_CAPTION) == 3  # one per call: 2 samples, 1 upload


def test_predict_says_when_a_scan_looks_like_a_training_image(env, tmp_path, monkeypatch):
    """With a model whose card names its training folder, an upload of one of those images is
    flagged as seen in training, and an unseen real scan (the CQ500 sample) is not."""
    card = _display_card(env)
    card["training"] = {"data": str(env["kaggle"]), "images": {"train": 8}}
    models = _models_with_display_card(env, tmp_path, card)
    monkeypatch.setenv(dashboard.ENV_MODELS_DIR, str(models))
    at = _open("app_pages/predict.py")
    at.session_state[ui.MODEL_CHOICE_KEY] = DISPLAY_MODEL
    png = (env["kaggle"] / "head_ct" / "003.png").read_bytes()
    at.file_uploader(key="predict_upload").set_value(("upload.png", png, "image/png")).run()
    at.button(key=f"sample_{dashboard.SAMPLE_CQ500}").click().run()
    _ok(at)
    assert len([m for m in at.metric if m.label == "Probability of hemorrhage"]) == 2
    seen = [i.value for i in at.info if "trained on" in i.value]
    assert len(seen) == 1  # the upload, not the CQ500 slice
    assert "looks like an image the model was trained on (003.png, correlation 1.000" in seen[0]


def test_predict_flags_calls_in_the_referral_band(env, tmp_path, monkeypatch):
    """With a band in the card, an image and a series whose calls fall in it are marked
    uncertain, with the card's held-out figures, and the series' strip shades the band."""
    from hemo.referral import band_for_margin

    card = _display_card(env)
    # A band wide enough to hold every probability the untrained model can give
    card["referral"] = band_for_margin(card["threshold"], 40.0, 0.98, "test").to_dict()
    card["metrics"]["referral"] = {
        "nested": {"referred": 31, "n": 140, "errors_referred": 7, "errors": 10, "accuracy": 0.98}
    }
    models = _models_with_display_card(env, tmp_path, card)
    monkeypatch.setenv(dashboard.ENV_MODELS_DIR, str(models))
    at = _open("app_pages/predict.py")
    at.session_state[ui.MODEL_CHOICE_KEY] = DISPLAY_MODEL
    png = (env["kaggle"] / "head_ct" / "003.png").read_bytes()
    at.file_uploader(key="predict_upload").set_value(
        [
            ("upload.png", png, "image/png"),
            ("series.zip", zip_bytes(_dicoms(env)), "application/zip"),
        ]
    ).run()
    _ok(at)
    warned = [w.value for w in at.warning if w.value.startswith("Uncertain call")]
    # the image and the series; the series opens at its deciding slice, whose referral is the
    # series' own (two near-identical warnings before)
    assert len(warned) == 2, warned
    assert "Refer this image to a reader" in warned[0]
    assert "Refer this series to a reader" in warned[1]
    assert "took 31 of 140 images and 7 of its 10 errors" in warned[0]
    verdicts = [m for m in at.metric if m.label in ("Verdict", "Study verdict")]
    assert len(verdicts) == 3 and all(m.delta == "uncertain: refer to a reader" for m in verdicts)
    # another slice of the series: its own warning is back
    top = at.slider(key="series_slice_0").value
    at.slider(key="series_slice_0").set_value(1 if top != 1 else 2).run()
    warned = [w.value for w in at.warning if w.value.startswith("Uncertain call")]
    assert len(warned) == 3 and "Refer this image to a reader" in warned[2], warned
    assert {m.value for m in verdicts} <= {"hemorrhage", "no hemorrhage"}
    (strip,) = at.get("plotly_chart")  # the series' strip shades the band
    shapes = json.loads(strip.proto.spec)["layout"]["shapes"]
    band = card["referral"]
    assert any(
        s["type"] == "rect" and (s["y0"], s["y1"]) == (band["low"], band["high"]) for s in shapes
    ), shapes


def test_training_shows_runs_curves_report_and_comparison(env):
    """Finished runs: table, train/val curves, confusion/ROC/PR, threshold and comparison."""
    make_finished_run(env["runs"], "alpha")
    make_finished_run(env["runs"], "beta", auc_offset=0.05)
    at = _open("app_pages/training.py")
    _ok(at)
    assert set(at.dataframe[0].value["run"]) == {"alpha", "beta"}
    # loss/auc/accuracy curves, confusion/ROC/PR, the comparison
    assert len(at.get("plotly_chart")) == 3 + 3 + 1
    assert _metrics(at)["threshold"] == "0.420"
    assert _metrics(at)["roc_auc"] == "0.810"


def test_training_shows_a_crossval_and_its_folds_as_such(env):
    """A hemo crossval's report is its own section (pooled figures at its out-of-fold threshold,
    one row per fold); a fold run says which cross-validation it belongs to instead of an
    'Evaluation (test split)' that warns its index has no test rows."""
    import shutil

    work = make_crossval(env["runs"], "cvpage")
    folds = [env["runs"] / f"cvpage-cv{k}" for k in range(2)]
    report = json.loads((work / runs.CROSSVAL_REPORT_FILE).read_text())
    try:
        at = _open("app_pages/training.py")
        _ok(at)
        at.selectbox(key="training_selected").set_value("cvpage-cv1").run()
        _ok(at)
        assert not [h for h in at.subheader if h.value.startswith("Evaluation")]
        assert any(
            "cvpage-cv1 is fold 1 of the cross-validation 'cvpage'" in i.value for i in at.info
        )
        assert at.selectbox(key="training_crossval").value == "cvpage"
        metrics = _metrics(at)
        assert metrics["threshold"] == f"{report['threshold']:.3f}"
        assert metrics["roc_auc (pooled)"] == f"{report['pooled']['roc_auc']:.3f}"
        (table,) = [d.value for d in at.dataframe if "held out" in d.value.columns]
        assert list(table["run"])[:2] == ["cvpage-cv0", "cvpage-cv1"]
        assert any("chosen on the pooled out-of-fold predictions" in c.value for c in at.caption)
    finally:
        for path in (work, *folds):  # the module's other tests count the runs
            shutil.rmtree(path)


def test_training_and_home_survive_a_damaged_run(env):
    """A run whose status.json is not UTF-8 and one whose report.json is malformed: every page
    still draws (the sidebar lists runs on each), the damaged run is named in the table, the
    other runs stay listed."""
    import shutil

    made = [make_finished_run(env["runs"], "intact"), env["runs"] / "broken"]
    made[1].mkdir()
    (made[1] / runs.STATUS_FILE).write_bytes(b"\xff\xfe")
    made.append(make_finished_run(env["runs"], "oddreport"))
    (made[2] / runs.REPORT_FILE).write_text('{"threshold": "x", "confusion": "no"}')
    try:
        for page in ("app_pages/home.py", "app_pages/training.py"):
            at = _open(page)
            _ok(at)
        table = at.dataframe[0].value.set_index("run")
        assert {"intact", "broken", "oddreport"} <= set(table.index)
        assert table.loc["broken", "state"] == runs.UNREADABLE
        assert "status.json cannot be read" in table.loc["broken", "message"]
        at.selectbox(key="training_selected").set_value("oddreport").run()
        _ok(at)
        assert any("report.json is malformed" in w.value for w in at.warning)
    finally:
        for path in made:  # the module's other tests count the runs
            shutil.rmtree(path)


def test_training_form_launches_a_run(env, monkeypatch):
    """Submitting the form calls hemo.runs.launch_run with the form's configuration."""
    launched = {}

    def fake_launch(config, name, root=None):
        launched.update(config=config, name=name)
        return make_finished_run(Path(root), name) and runs.read_run(name, root)

    monkeypatch.setattr(runs, "launch_run", fake_launch)
    for name in ("before", "before2"):  # two runs or more: the comparison is shown
        if not (env["runs"] / name).exists():
            make_finished_run(env["runs"], name)
    at = _open("app_pages/training.py")
    assert "formrun" not in at.multiselect(key="compare_runs").options
    # The form starts from `hemo train`'s defaults (it started at 10 epochs against the CLI's 20)
    form = {n.label: n.value for n in at.number_input}
    assert form == {"Epochs": DEFAULTS["epochs"], "Learning rate": DEFAULTS["learning_rate"]}
    boxes = {b.label: b.value for b in at.selectbox}
    assert boxes["Image size (px)"] == DEFAULTS["image_size"]
    assert boxes["Architecture"] == DEFAULTS["architecture"]
    assert boxes["Initial weights"] == DEFAULTS["weights"]
    next(t for t in at.text_input if t.label == "Run name").set_value("formrun")
    next(n for n in at.number_input if n.label == "Epochs").set_value(2)
    at.form_submit_button[0].click().run()
    _ok(at)
    assert launched["name"] == "formrun"
    assert launched["config"]["epochs"] == 2
    assert launched["config"]["data"] == str(env["data"])
    assert at.selectbox(key="training_selected").value == "formrun"
    # The launched run joins the comparison (it kept the runs picked before the launch)
    assert "formrun" in at.multiselect(key="compare_runs").value


def test_training_page_starts_without_tensorflow(env):
    """Home and Training (its form's architecture list, a run's config check) never import
    TensorFlow: the architecture registry is plain data (it cost ~2.5 s on the first visit)."""
    code = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({APP!r}, default_timeout={TIMEOUT_S})\n"
        "at.run()\n"
        "at.switch_page('app_pages/training.py').run()\n"
        "assert not at.exception, [e.value for e in at.exception]\n"
        "assert 'densenet121' in next(b for b in at.selectbox if b.label == 'Architecture').options\n"
        "from hemo.train import resolve_config\n"
        "resolve_config({'data': 'x', 'architecture': 'resnet50', 'head_pool': 'max'})\n"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_training_refuses_a_dataset_path_that_does_not_exist(env, tmp_path, monkeypatch):
    """A bad sidebar dataset is named at the top of Training (as on the other pages), and a
    form naming a missing dataset launches nothing."""
    launched = []
    monkeypatch.setattr(runs, "launch_run", lambda *args, **kwargs: launched.append(args))
    missing = tmp_path / "nowhere"
    at = _with_dataset(missing, "app_pages/training.py")
    _ok(at)
    assert any("nowhere: no such file or folder" in e.value for e in at.error)
    next(t for t in at.text_input if t.label == "Dataset (folder or index)").set_value(
        str(missing / "deeper")
    )
    at.form_submit_button[0].click().run()
    _ok(at)
    assert launched == []
    assert any("deeper: no such file or folder" in e.value for e in at.error)


def test_training_form_refuses_hu_input_for_a_folder_of_pngs(env, head_ct_dir, monkeypatch):
    """A Kaggle PNG folder typed into the form with the default HU input (the sidebar shows the
    DICOM demo) launches nothing and says to train on display grayscale (the run it started
    used to fail on its first batch with a 42-line TensorFlow traceback)."""
    launched = []
    monkeypatch.setattr(runs, "launch_run", lambda *args, **kwargs: launched.append(args))
    at = _open("app_pages/training.py")
    next(t for t in at.text_input if t.label == "Dataset (folder or index)").set_value(
        str(head_ct_dir)
    )
    assert at.selectbox[2].value == "HU windows (DICOM)"
    at.form_submit_button[0].click().run()
    _ok(at)
    assert launched == []
    (error,) = [e.value for e in at.error]
    assert "holds PNG images" in error and "display grayscale" in error


def test_training_form_refuses_imagenet_weights_for_the_compact_cnn(env):
    """The form offers every architecture and 'imagenet' side by side; the compact CNN with
    ImageNet weights is refused on the page, naming the choices, and no run folder is made (the
    launched process died before writing why, and the page said only that it died)."""
    before = {p.name for p in env["runs"].iterdir()} if env["runs"].exists() else set()
    at = _open("app_pages/training.py")
    assert next(b for b in at.selectbox if b.label == "Architecture").value == "compact"
    next(b for b in at.selectbox if b.label == "Initial weights").set_value("imagenet")
    next(t for t in at.text_input if t.label == "Run name").set_value("imagenet-compact")
    at.form_submit_button[0].click().run()
    _ok(at)
    (error,) = [e.value for e in at.error]
    assert error.startswith("no ImageNet weights for the 'compact' architecture; use --weights")
    after = {p.name for p in env["runs"].iterdir()} if env["runs"].exists() else set()
    assert after == before


def test_eda_counts_follow_an_edited_label_file(env, head_ct_dir, tmp_path):
    """A Kaggle folder (no index.parquet) whose labels.csv is edited in place shows the new
    counts on the next visit (the cache was keyed on the folder's own time, which an edit inside
    it does not change, and kept the old counts for an hour)."""
    import os

    import pandas as pd

    root = tmp_path / "kaggle"
    (root / "head_ct").mkdir(parents=True)
    labels = pd.read_csv(head_ct_dir / "labels.csv").head(20)  # ids 0-19: all hemorrhage
    for i in labels["id"]:
        shutil.copy(head_ct_dir / "head_ct" / f"{i:03d}.png", root / "head_ct")
    labels.to_csv(root / "labels.csv", index=False)
    folder_time = (root).stat().st_mtime
    at = _with_dataset(root, "app_pages/eda.py")
    _ok(at)
    assert _metrics(at)["Hemorrhage"] == "20"
    labels.iloc[:5, 1] = 0
    labels.to_csv(root / "labels.csv", index=False)
    later = folder_time + 10
    os.utime(root / "labels.csv", (later, later))
    os.utime(root, (folder_time, folder_time))  # the folder itself did not change
    at = _with_dataset(root, "app_pages/eda.py")
    _ok(at)
    assert _metrics(at)["Hemorrhage"] == "15"


def test_dataset_cache_key_sees_a_label_table_in_a_big_folder(tmp_path, monkeypatch):
    """The key changes when labels.csv is edited in a folder with more entries than are
    listed, and a dangling link ending in .csv does not stop the look."""
    import os

    root = tmp_path / "flat"
    root.mkdir()
    monkeypatch.setattr(ui, "MTIME_MAX_ENTRIES", 3)
    for i in range(10):
        (root / f"{i:03d}.dcm").write_bytes(b"x")
    (root / "labels.csv").write_text("id, hemorrhage\n")
    (root / "broken.csv").symlink_to(tmp_path / "gone.csv")
    base = (root / "labels.csv").stat().st_mtime - 100
    for path in (root, *root.iterdir()):
        if not path.is_symlink():
            os.utime(path, (base, base))
    before = ui.mtime_of(root)
    os.utime(root / "labels.csv", (base + 50, base + 50))
    os.utime(root, (base, base))
    assert ui.mtime_of(root) == before + 50


def test_eda_and_windowing_on_the_cq500_layout(env, shared_data):
    """The real CQ500 sample (238 slices, reads.csv) opens on EDA and Windowing with no error."""
    root = shared_data / "cq500"
    at = _with_dataset(root, "app_pages/eda.py")
    _ok(at)
    assert not at.error
    assert _metrics(at)["Images"] == "238" and _metrics(at)["Studies"] == "1"
    at.switch_page("app_pages/windowing.py").run()
    _ok(at)
    assert at.slider(key="win_slice").max == 238
    assert _metrics(at)["HU at pixel"].lstrip("-").isdigit()
