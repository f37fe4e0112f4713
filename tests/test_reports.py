"""hemo.reports: CSV/JSON reports and PNG bytes, free of patient data."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hemo import reports
from hemo.config import NOTICE
from hemo.predict import Prediction


def _prediction(p: float = 0.8) -> Prediction:
    return Prediction(
        source="upload.zip/CT001.dcm",
        probability=p,
        probabilities={"any": p, "subdural": 0.3},
        positive=p >= 0.5,
        threshold=0.5,
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        slice_z_mm=12.5,
    )


def test_prediction_row_has_numbers_and_no_uids():
    """A row carries source, probability, verdict, per-label columns and no DICOM UIDs."""
    row = reports.prediction_row(_prediction(), slice_number=3)
    assert row["probability"] == 0.8 and row["verdict"] == "hemorrhage"
    assert row["p_subdural"] == 0.3 and row["slice"] == 3
    assert "1.2.3" not in json.dumps(row)


def test_prediction_row_outside_the_range_is_no_call():
    """A slice outside the model's range: verdict none and not referred, probability kept."""
    outside = dataclasses.replace(_prediction(), outside_range="vertex", uncertain=True)
    row = reports.prediction_row(outside)
    assert row["verdict"] == reports.NO_VERDICT and row["uncertain"] is None
    assert row["probability"] == 0.8 and row["outside_range"] == "vertex"
    inside = reports.prediction_row(dataclasses.replace(_prediction(), uncertain=True))
    assert inside["verdict"] == "hemorrhage" and inside["uncertain"] is True


def test_csv_report_has_one_line_per_row_and_errors():
    """The CSV has a header, one line per prediction and one per failed input."""
    rows = [reports.prediction_row(_prediction()), reports.error_row("bad.dcm", "not DICOM")]
    text = reports.report_csv(rows).decode("utf-8").strip().splitlines()
    assert text[0].startswith("source,slice,slice_z_mm,probability,verdict")
    assert len(text) == 3 and "not DICOM" in text[2]


def test_json_report_round_trips():
    """The JSON report holds the model, studies and results."""
    rows = [reports.prediction_row(_prediction(0.2))]
    study = reports.study_summary("series", [0.1, 0.9, 0.4], threshold=0.5)
    data = json.loads(reports.report_json(rows, model={"name": "m"}, studies=[study]))
    assert data["model"] == {"name": "m"} and data["note"] is None
    assert data["notice"].startswith("Research tool, not a medical device")
    noted = json.loads(reports.report_json(rows, note="phantoms only: not findings"))
    assert noted["note"] == "phantoms only: not findings"
    assert data["results"][0]["verdict"] == "no hemorrhage"
    assert data["studies"][0]["most_suspicious_slice"] == 2


def test_study_summary_uses_the_highest_slice():
    """The study probability is the maximum; positive slices are counted at the threshold."""
    study = reports.study_summary("s", [0.1, 0.7, 0.6], threshold=0.65)
    assert study["probability"] == 0.7 and study["verdict"] == "hemorrhage"
    assert study["positive_slices"] == 1 and study["slices"] == 3


def test_study_summary_pools_only_slices_in_range():
    """Slices outside the model's range do not decide the verdict; all count when none is in."""
    reasons = ["vertex", None, None, "vertex"]
    study = reports.study_summary("s", [0.95, 0.2, 0.4, 0.99], 0.5, reasons)
    assert study["probability"] == 0.4 and study["verdict"] == "no hemorrhage"
    assert study["most_suspicious_slice"] == 3 and study["positive_slices"] == 0
    assert study["slices_in_range"] == 2 and study["outside_range_slices"] == [1, 4]
    assert study["probability_all_slices"] == 0.99
    none_in = reports.study_summary("s", [0.95, 0.2], 0.5, ["base", "base"])
    assert none_in["probability"] == 0.95 and none_in["slices_in_range"] == 0
    assert none_in["verdict"] == reports.NO_VERDICT  # as the page: no finding outside the range
    from hemo.referral import band_for_margin

    banded = reports.study_summary(
        "s", [0.55, 0.45], 0.5, ["base", "base"], band_for_margin(0.5, 1, 0.98)
    )
    assert banded["verdict"] == reports.NO_VERDICT and banded["uncertain"] is None
    with pytest.raises(ValueError, match="s: 1 range flags for 2 slice probabilities"):
        reports.study_summary("s", [0.1, 0.2], 0.5, [None])


def test_study_summary_refuses_an_empty_series():
    """An empty series is refused with a message naming it."""
    with pytest.raises(ValueError, match="s: a study needs at least one slice"):
        reports.study_summary("s", [], threshold=0.5)


def test_png_bytes_decode_back():
    """PNG bytes of an RGB uint8 and a float gray image decode to the same pixels/shape."""
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[1, 2] = (255, 0, 0)
    back = np.asarray(Image.open(io.BytesIO(reports.png_bytes(rgb))))
    np.testing.assert_array_equal(back, rgb)
    gray = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    assert np.asarray(Image.open(io.BytesIO(reports.png_bytes(gray)))).shape == (4, 5)


def test_png_bytes_carry_the_notice():
    """An overlay PNG passed on alone still says it is not a medical device's finding."""
    picture = Image.open(io.BytesIO(reports.png_bytes(np.zeros((3, 3, 3), dtype=np.uint8))))
    assert picture.text == {"Disclaimer": NOTICE}


def test_png_bytes_refuses_bad_shapes():
    """A 4-channel array is refused with its shape."""
    with pytest.raises(ValueError, match=r"\(2, 2, 4\)"):
        reports.png_bytes(np.zeros((2, 2, 4), dtype=np.uint8))


def test_report_json_writes_nan_as_null_and_the_study_flag_follows_the_deciding_slice():
    """A NaN in a row is ``null`` (strict JSON parses it); a series' ``uncertain`` is its
    deciding in-range slice's, not that of a higher slice outside the range."""
    from hemo.referral import band_for_margin

    strict = json.loads(
        reports.report_json([{"probability": float("nan")}]),
        parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"),
    )
    assert strict["results"][0]["probability"] is None
    band = band_for_margin(0.5, 0.4, 0.98)  # P 0.40-0.60 referred
    study = reports.study_summary("s", [0.55, 0.2, 0.3], 0.5, ["vertex", None, None], band)
    assert study["probability"] == 0.3 and study["uncertain"] is False
    at_threshold = reports.study_summary("s", [0.5], 0.5)
    assert at_threshold["verdict"] == "hemorrhage" and at_threshold["positive_slices"] == 1


def test_csv_report_opens_with_each_series_verdict_and_joins_slices_to_it():
    """The CSV holds one row per series (its verdict, deciding slice, referral) before the
    rows, every slice row names its series, and ``level`` tells the kinds of row apart."""
    from hemo.referral import band_for_margin

    band = band_for_margin(0.5, 0.4, 0.98)  # P 0.40-0.60 referred
    study = reports.study_summary("upload.zip", [0.2, 0.55, 0.3], 0.5, None, band)
    slices = [
        reports.prediction_row(_prediction(p), slice_number=n, series="upload.zip")
        for n, p in enumerate([0.2, 0.55, 0.3], start=1)
    ]
    lone = reports.prediction_row(_prediction(0.1))
    failed = reports.error_row("bad.dcm", "not DICOM")
    frame = pd.read_csv(io.BytesIO(reports.report_csv([lone, *slices, failed], [study])))
    assert list(frame.columns[-5:]) == ["series", "level", "model", "note", "notice"]
    assert (frame["notice"] == NOTICE).all()  # every row, also the failed input's
    assert list(frame["level"]) == ["study", "file", "slice", "slice", "slice", "file"]
    top = frame.iloc[0]
    assert top["source"] == "upload.zip" and top["verdict"] == "hemorrhage"
    assert top["probability"] == 0.55 and top["slice"] == 2 and bool(top["uncertain"])
    assert (frame.loc[frame["level"] == "slice", "series"] == "upload.zip").all()
    assert frame["series"].isna().tolist() == [False, True, False, False, False, True]
    nothing_in_range = reports.study_summary("s", [0.9], 0.5, ["vertex"])
    row = reports.study_row(nothing_in_range)
    assert row["verdict"] == reports.NO_VERDICT and row["outside_range"]


def test_csv_rows_each_carry_the_model_and_what_holds_for_the_call():
    """Every CSV row names the model and carries the report-wide note joined with its own (a
    training-image look-alike); positions are rounded to a micrometre."""
    from hemo.dashboard import training_match_note

    seen = training_match_note(("/data/Doe_John/010.png", 0.99812))
    assert seen == (
        "looks like one of the model's training images (correlation 0.998): not a test of the model"
    )  # unnamed: a training set's file names may name its patients
    assert training_match_note(None) is None
    odd = dataclasses.replace(_prediction(), slice_z_mm=-28.433892162414168)
    rows = [reports.prediction_row(odd, note=seen), reports.prediction_row(_prediction(0.1))]
    frame = pd.read_csv(
        io.BytesIO(reports.report_csv(rows, model="headct_real", note="phantoms only"))
    )
    assert frame["model"].tolist() == ["headct_real", "headct_real"]
    assert frame["note"].tolist() == [f"phantoms only; {seen}", "phantoms only"]
    assert frame["slice_z_mm"].iloc[0] == -28.434
    plain = pd.read_csv(io.BytesIO(reports.report_csv(rows[1:])))
    assert plain["note"].isna().all() and plain["model"].isna().all()
    data = json.loads(reports.report_json(rows))
    assert data["results"][0]["note"] == seen and data["results"][1]["note"] is None
