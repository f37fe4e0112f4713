"""Tests of hemo.density: the measured signs of blood, and the regression over them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hemo.density import FEATURE_NAMES, DensityModel, features, many_features, masks
from hemo.errors import ConfigError

SIDE = 96


def head_slice(bleed: float = 0.0, skull_closed: bool = True) -> np.ndarray:
    """A drawn axial slice: a bone ring around brain at 0.45 with a little noise, and optionally
    a bright round bleed of that display level on the right side."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    r = np.hypot(yy - SIDE / 2, xx - SIDE / 2)
    gray = np.zeros((SIDE, SIDE), np.float32)
    gray[r < 44] = 1.0
    gray[r < 40] = 0.45
    gray += (rng.normal(0, 0.02, gray.shape) * (r < 40)).astype(np.float32)
    if not skull_closed:  # a wide gap in the ring, as at the skull base or in a tight crop
        gray[(r >= 40) & (r < 44) & (np.abs(xx - SIDE / 2) < 20) & (yy < SIDE / 2)] = 0.45
    if bleed:
        gray[np.hypot(yy - 48, xx - 66) < 6] = bleed
    return np.clip(gray, 0, 1)


def test_masks_find_the_inside_of_a_closed_skull() -> None:
    """The inside is the brain within the ring, away from the bone; the skull is the ring."""
    head, skull, inside = masks(head_slice())
    yy, xx = np.mgrid[:SIDE, :SIDE]
    r = np.hypot(yy - SIDE / 2, xx - SIDE / 2)
    assert skull[r < 39].sum() == 0 and skull[(r > 40.5) & (r < 43.5)].all()
    assert inside[r < 30].all() and not inside[r > 39].any()
    assert head[r < 43].all() and not head[r > 45].any()


def test_an_open_skull_falls_back_to_the_eroded_head() -> None:
    """A ring with a gap encloses nothing; the head's outline, eroded, is measured instead."""
    _, _, inside = masks(head_slice(skull_closed=False))
    yy, xx = np.mgrid[:SIDE, :SIDE]
    r = np.hypot(yy - SIDE / 2, xx - SIDE / 2)
    assert inside[r < 30].mean() > 0.95 and not inside[r > 38].any()


def test_a_bright_one_sided_region_raises_the_bright_and_asymmetry_features() -> None:
    """A bleed-like region makes the bright shares, the largest region and the asymmetry grow;
    the brain level stays where the brain is."""
    plain = dict(zip(FEATURE_NAMES, features(head_slice()), strict=True))
    bled = dict(zip(FEATURE_NAMES, features(head_slice(bleed=0.8)), strict=True))
    assert abs(plain["brain_level"] - 0.45) < 0.01 and abs(bled["brain_level"] - 0.45) < 0.01
    for step in ("0.1", "0.16", "0.25"):
        assert plain[f"bright_share_{step}"] == 0.0
        assert bled[f"bright_share_{step}"] > 3.0 and bled[f"largest_bright_region_{step}"] > 3.0
    assert bled["bright_share_0.4"] == 0.0  # 0.8 is 0.35 above the brain
    assert bled["asymmetric_share_0.2"] > 3.0 and plain["asymmetric_share_0.2"] == 0.0
    assert bled["asymmetry_p99"] > plain["asymmetry_p99"] + 0.2


def test_a_bleed_as_bright_as_bone_inside_the_skull_is_measured_not_taken_for_bone() -> None:
    """A region at bone level that the skull's ring encloses counts as bright inside, as a
    slightly darker one does (it was taken for skull and vanished from every feature)."""
    _, skull, inside = masks(head_slice(bleed=0.97))
    assert not skull[48, 66] and inside[48, 66]
    for bleed in (0.9, 0.97, 1.0):
        values = dict(zip(FEATURE_NAMES, features(head_slice(bleed=bleed)), strict=True))
        assert values["bright_share_0.25"] > 3.0 and values["asymmetric_share_0.2"] > 3.0, bleed


def test_blank_and_odd_slices_give_finite_features_or_a_clear_error() -> None:
    """A black slice and a flat gray one measure finite numbers; a 3-D array is refused."""
    for gray in (np.zeros((SIDE, SIDE)), np.full((SIDE, SIDE), 0.5), np.ones((8, 8))):
        values = features(gray)
        assert values.shape == (len(FEATURE_NAMES),) and np.isfinite(values).all()
    with pytest.raises(ValueError, match=r"2-D slice, got shape \(4, 4, 2\)"):
        features(np.zeros((4, 4, 2)))
    assert many_features([]).shape == (0, len(FEATURE_NAMES))


def test_density_model_fits_predicts_and_round_trips_through_json() -> None:
    """The regression ranks bled slices above plain ones, and its JSON numbers give the same
    logits back; malformed numbers are refused by name."""
    slices = [head_slice(bleed=b) for b in (0.0, 0.0, 0.0, 0.75, 0.8, 0.9)]
    x = many_features(slices)
    y = np.array([0, 0, 0, 1, 1, 1])
    model = DensityModel.fit(x, y)
    logits = model.logit(x)
    assert logits[3:].min() > logits[:3].max()
    back = DensityModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(back.logit(x), logits)
    assert back.logit(x[0]).shape == ()
    from hemo.density import MAX_LOGIT

    odd = many_features([np.zeros((SIDE, SIDE)), np.ones((SIDE, SIDE)), head_slice(bleed=1.0)])
    far = model.logit(odd * 50.0)  # far outside anything it was fitted on: clipped, finite
    assert np.all(np.abs(far) <= MAX_LOGIT) and np.isfinite(far).all()
    with pytest.raises(ConfigError, match="takes 18 inputs, got shape"):
        model.logit(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="malformed density model"):
        DensityModel.from_dict({"names": ["a"]})
    with pytest.raises(ConfigError, match="finite, its scales positive"):
        DensityModel.from_dict(model.to_dict() | {"intercept": float("nan")})
    with pytest.raises(ConfigError, match="both classes"):
        DensityModel.fit(x[:3], y[:3])


def test_density_features_separate_the_real_kaggle_images(head_ct_dir: Path) -> None:
    """On the 140 real images the share of the inside brighter than the brain by 0.16 alone
    ranks most bleeds above most normal slices (ROC AUC about 0.89 measured)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from hemo.io import read_scan
    from hemo.preprocess import InputSpec, to_model_input

    labels = pd.read_csv(head_ct_dir / "labels.csv")
    labels.columns = [c.strip() for c in labels.columns]
    spec = InputSpec(size=SIDE, mode="display", crop_head=True, channels=1)
    grays = [
        to_model_input(read_scan(head_ct_dir / "head_ct" / f"{i:03d}.png"), spec)[..., 0]
        for i in labels["id"]
    ]
    x = many_features(grays)
    column = FEATURE_NAMES.index("bright_share_0.16")
    assert roc_auc_score(labels["hemorrhage"], x[:, column]) > 0.8


def _blend_card_model(tmp_path: Path, weight: float = 0.5) -> tuple[Path, DensityModel]:
    """The tiny display model saved again with a density blend in its card (fitted on drawn
    slices: bright right-sided region = positive)."""
    import dataclasses

    from tiny_models import tiny_model_path

    from hemo.density import DensityBlend
    from hemo.model import load_model, save_model

    slices = [head_slice(bleed=b) for b in (0.0, 0.0, 0.0, 0.75, 0.8, 0.9)]
    regression = DensityModel.fit(many_features(slices), np.array([0, 0, 0, 1, 1, 1]))
    model, card = load_model(tiny_model_path("display", ("any",)))
    card = dataclasses.replace(card, density=DensityBlend(regression, weight).to_dict())
    return save_model(model, tmp_path / "blended.keras", card), regression


def _png(path: Path, gray: np.ndarray) -> Path:
    import cv2

    cv2.imwrite(str(path), np.rint(gray * 255).astype(np.uint8))
    return path


def test_a_card_with_a_density_blend_predicts_the_blend(tmp_path: Path) -> None:
    """hemo predict's probability is sigmoid(mean of the network's and the regression's
    log-odds) on the model input's gray channel; the network alone is what weight 0 gives."""
    from hemo.density import logit_of
    from hemo.io import read_scan
    from hemo.predict import Predictor

    path, regression = _blend_card_model(tmp_path)
    inputs = [_png(tmp_path / f"{b}.png", head_slice(bleed=b)) for b in (0.0, 0.85)]
    with Predictor(path) as predictor:
        x = np.stack([predictor.prepare(read_scan(p)) for p in inputs])
        network = np.asarray(predictor.model(x, training=False))[:, 0]
        got = [r.probability for r in predictor.predict([str(p) for p in inputs])]
        by_forward = predictor.forward(x)[:, 0]
        one_row = many_features(x[:1, ..., 0])  # features of another batch: refused, not broadcast
        with pytest.raises(ValueError, match=r"density features of shape \(1, 18\) for a batch"):
            predictor.forward(x, one_row)
    z = 0.5 * logit_of(network) + 0.5 * regression.logit(many_features(x[..., 0]))
    expected = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(by_forward, expected, rtol=1e-5)
    assert got[1] > got[0]  # the bright region counts
    plain_path, _ = _blend_card_model(tmp_path / "w0", weight=0.0)
    with Predictor(plain_path) as plain:
        np.testing.assert_allclose(plain.forward(x)[:, 0], network, rtol=1e-5)


def test_explain_reports_the_blended_probability_as_predict_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hemo explain's probability and verdict are the card's blend (its logit the network's)."""
    from hemo.cli import main

    path, _ = _blend_card_model(tmp_path)
    png = _png(tmp_path / "bled.png", head_slice(bleed=0.85))
    assert main(["predict", "--model", str(path), str(png), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)["results"][0]["probability"]
    argv = ["explain", "--model", str(path), str(png), "--out", str(tmp_path / "o"), "--json"]
    assert main(argv) == 0
    explained = json.loads(capsys.readouterr().out)["results"][0]
    assert explained["probability"] == pytest.approx(predicted, rel=1e-5)
    network = 1 / (1 + np.exp(-explained["logit"]))
    assert abs(network - predicted) > 1e-3  # the blend moved it: not the network's alone


def test_a_malformed_density_entry_is_refused_at_load(tmp_path: Path) -> None:
    """A card whose density entry is broken, or fitted on other features, fails when loaded."""
    from hemo.errors import ModelError
    from hemo.model import ModelCard

    path, regression = _blend_card_model(tmp_path)
    card = json.loads(path.with_suffix(".json").read_text())
    for entry, message in (
        ({"weight": 0.5}, "malformed density entry"),
        ({"weight": 2, "model": regression.to_dict()}, r"weight must lie in \[0, 1\]"),
        (
            {"model": regression.to_dict() | {"names": ["x"] * len(FEATURE_NAMES)}},
            "fitted on other features",
        ),
    ):
        with pytest.raises(ModelError, match=message):
            ModelCard.from_dict(card | {"density": entry})


def test_hemo_train_refuses_density_which_crossval_fits() -> None:
    """density = true is a cross-validation's blend; a plain training says where it belongs."""
    from hemo.crossval import check_crossval_config
    from hemo.train import check_start, resolve_config

    config = resolve_config({"data": "x", "density": True})
    with pytest.raises(ConfigError, match="fitted out-of-fold by hemo crossval"):
        check_start(config)
    # crossval blends P(any) of display input only
    display = {"mode": "display", "channels": 1}
    for wrong in ({"labels": "rsna", "input": display}, {"labels": "any", "input": {"mode": "hu"}}):
        refused = resolve_config({"data": "x", "density": True, "lr_schedule": "cosine", **wrong})
        with pytest.raises(ConfigError, match="density blends the P\\(any\\) of a display"):
            check_crossval_config(refused)
    fine = {"labels": "any", "input": {"mode": "display", "channels": 1}, "lr_schedule": "cosine"}
    check_crossval_config(resolve_config({"data": "x", "density": True, **fine}))
    # labels = auto: refused where the data would give the model subtype outputs
    import pandas as pd

    from hemo.config import RSNA_LABELS
    from hemo.crossval import check_density_labels

    auto = resolve_config({"data": "x", "density": True, "labels": "auto"})
    binary = pd.DataFrame({"path": ["a"], "label_any": [1]})
    check_density_labels(auto, binary)
    subtypes = binary.assign(**{label: [0] for label in RSNA_LABELS if label != "any"})
    with pytest.raises(ConfigError, match="six RSNA outputs: set labels"):
        check_density_labels(auto, subtypes)
    check_density_labels({**auto, "density": False}, subtypes)
    with pytest.raises(ConfigError, match="density must be true or false"):
        resolve_config({"data": "x", "density": "yes"})


def test_the_opencv_morphology_is_scipys() -> None:
    """Erosion, dilation, opening, closing and hole filling give scipy.ndimage's binary_*
    results (4-connected cross, outside the slice background) on random masks."""
    from scipy import ndimage

    from hemo import density

    rng = np.random.default_rng(1)
    for density_of_ones in (0.3, 0.6, 0.85):
        mask = rng.random((40, 36)) < density_of_ones
        np.testing.assert_array_equal(
            density._erode(mask, 2), ndimage.binary_erosion(mask, iterations=2)
        )
        np.testing.assert_array_equal(
            density._dilate(mask, 3), ndimage.binary_dilation(mask, iterations=3)
        )
        np.testing.assert_array_equal(density._opening(mask), ndimage.binary_opening(mask))
        np.testing.assert_array_equal(
            density._closing(mask, 2), ndimage.binary_closing(mask, iterations=2)
        )
        np.testing.assert_array_equal(density._fill_holes(mask), ndimage.binary_fill_holes(mask))
