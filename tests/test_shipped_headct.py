"""Tests for the shipped real-scan model models/headct_real.keras and its card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hemo.config import MODELS_DIR

MODEL_PATH = MODELS_DIR / "headct_real.keras"
CARD_PATH = MODELS_DIR / "headct_real.json"
MAX_MODEL_BYTES = 25 * 1024 * 1024
#: Shared Kaggle images without hemorrhage that every fold model called negative out-of-fold.
CLEAR_NEGATIVES = ("head_ct/144.png", "head_ct/123.png")


@pytest.fixture(scope="module")
def predictor():
    """The shipped model, loaded once through the prediction path."""
    from hemo.predict import Predictor

    with Predictor(MODEL_PATH) as p:
        yield p


def test_model_file_within_budget() -> None:
    """The shipped model exists and is at most 25 MB."""
    assert MODEL_PATH.is_file()
    assert MODEL_PATH.stat().st_size <= MAX_MODEL_BYTES


def test_card_matches_recipe() -> None:
    """The card records display input with head crop, one 'any' label and CV metrics."""
    card = json.loads(CARD_PATH.read_text())
    assert card["labels"] == ["any"]
    assert card["input_spec"]["mode"] == "display"
    assert card["input_spec"]["crop_head"] is True
    assert card["input_spec"]["dicom_head_only"] is True
    spec = {key: value for key, value in card["input_spec"].items() if key != "size"}
    assert card["training"]["config"]["input"] == spec  # the recipe's resolved [input]
    assert 0.0 < card["threshold"] < 1.0
    assert "out-of-fold" in card["metrics"]["measured_on"]
    assert card["metrics"]["folds"] == 5
    assert card["metrics"]["threshold"] == pytest.approx(card["threshold"])
    assert "hemo crossval" in card["training"]["command"]


def test_loads_and_matches_card() -> None:
    """load_model checks the card against the model; the CAM layer is in the graph."""
    from hemo.model import load_model

    model, card = load_model(MODEL_PATH)
    assert card.cam_layer in {layer.name for layer in model.layers}
    assert tuple(model.inputs[0].shape[1:]) == card.input_spec.input_shape


def test_real_cq500_hemorrhage_called_positive(predictor, cq500_uncompressed: Path) -> None:
    """pydicom-data's 693_UNCR.dcm (hemorrhage for all three CQ500 readers) is called positive."""
    (result,) = predictor.predict([cq500_uncompressed])
    assert result.error is None
    assert result.positive, f"P(any) = {result.probability:.3f} < {result.threshold:.3f}"


def test_card_referral_band_is_the_crossval_one() -> None:
    """The card's band was chosen on the pooled OOF predictions for accuracy 0.98, holds the
    threshold, and its held-out (nested) figures add up."""
    from hemo.model import ModelCard

    card = ModelCard.from_json(CARD_PATH.read_text())
    band = card.parse_referral()
    assert band is not None and band.low < card.threshold < band.high
    assert band.target_accuracy == 0.98
    assert "pooled out-of-fold predictions" in band.chosen_on
    section = card.metrics["referral"]
    assert section["band"] == card.referral
    for key in ("out_of_fold", "nested"):
        figures = section[key]
        assert figures["n"] == 140 and figures["referred"] + figures["decided"] == 140
        assert figures["errors_referred"] + figures["errors_decided"] == figures["errors"]
    assert section["out_of_fold"]["errors"] == 9  # the card's confusion: FP 3 + FN 6
    assert section["out_of_fold"]["accuracy"] >= 0.98
    assert len(section["nested"]["per_fold"]) == 5


def test_real_bleed_is_positive_but_in_the_band(predictor, cq500_uncompressed: Path) -> None:
    """693_UNCR.dcm (P about 0.85) is called positive and flagged uncertain: the band reaches
    up to 0.905, so the model's call on this real bleed goes to a reader."""
    (result,) = predictor.predict([cq500_uncompressed])
    assert result.positive and result.uncertain is True
    assert result.to_dict()["uncertain"] is True


def test_negative_real_series_has_no_decided_positive(predictor, cq500_dir: Path) -> None:
    """The whole real CQ500-CT-0 series (contrast-enhanced, negative by majority): every
    in-range slice the model calls positive lies in the referral band, so none is a decided
    positive, and the series' positive verdict is flagged uncertain."""
    batch = predictor.run(sorted(cq500_dir.glob("*.dcm")))
    assert batch.n_failed == 0
    in_range = [r for r in batch.results if r.outside_range is None]
    positives = [r for r in in_range if r.positive]
    assert positives, "the contrast-enhanced series still has slices over the threshold"
    assert all(r.uncertain for r in positives), [r.probability for r in positives]
    (study,) = batch.studies
    assert study.uncertain is True


def test_dicom_input_leaves_out_the_head_holder(predictor, cq500_dir: Path) -> None:
    """The card feeds DICOM without the scanner's head holder (dicom_head_only; the training
    PNGs show none): on the real negative CQ500-CT-0 series fewer in-range slices are called
    positive than when the holder's arcs stay in the crop (measured 11 against 20 of 138)."""
    import dataclasses

    from hemo.io import read_scan
    from hemo.preprocess import to_model_input

    spec = predictor.card.input_spec
    assert spec.dicom_head_only is True
    batch = predictor.run(sorted(cq500_dir.glob("*.dcm")))
    in_range = [r for r in batch.results if r.outside_range is None]
    with_holder = dataclasses.replace(spec, dicom_head_only=False)
    x = np.stack([to_model_input(read_scan(Path(r.source)), with_holder) for r in in_range])
    p_holder = np.asarray(predictor.model.predict(x, verbose=0))[:, 0]
    called = sum(r.positive for r in in_range)
    called_with_holder = int(np.sum(p_holder >= predictor.card.threshold))
    assert called < called_with_holder, (called, called_with_holder)


def test_clear_negatives_called_negative(predictor, head_ct_dir: Path) -> None:
    """Two shared images without hemorrhage are called negative."""
    results = predictor.predict([head_ct_dir / name for name in CLEAR_NEGATIVES])
    assert [r.error for r in results] == [None, None]
    assert not any(r.positive for r in results), [r.probability for r in results]


def test_gradcam_on_shipped_model(predictor, cq500_uncompressed: Path) -> None:
    """Grad-CAM gives a non-flat (H, W) heatmap in [0, 1] on the real positive slice."""
    from hemo.cam import explain
    from hemo.io import read_scan

    x = predictor.prepare(read_scan(cq500_uncompressed))
    cam = explain(predictor.model, x, method="gradcam")
    assert cam.heatmap.shape == x.shape[:2]
    assert np.nanmin(cam.heatmap) >= 0.0 and np.nanmax(cam.heatmap) <= 1.0
    assert not cam.flat


def test_shipped_ensemble_has_the_members_its_card_names() -> None:
    """The shipped model is the merged five-seed ensemble its card describes."""
    from hemo.model import ENSEMBLE_PREFIX, load_model

    model, card = load_model(MODEL_PATH)
    ensemble = card.training["ensemble"]
    assert ensemble["seeds"] == [0, 1, 2, 3, 4]
    names = {layer.name for layer in model.layers}
    tops = {f"{ENSEMBLE_PREFIX.format(member=i)}{card.cam_layer}" for i in range(6)}
    assert tops & names == {f"{ENSEMBLE_PREFIX.format(member=i)}{card.cam_layer}" for i in range(5)}
    assert "ensemble: mean logit of 5 models" in card.metrics["measured_on"]
