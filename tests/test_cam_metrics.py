"""Tests of hemo.cam.metrics on hand-made maps and masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from hemo.cam.metrics import (
    AIR_VALUE,
    deletion_score,
    dilate,
    energy_in_mask,
    iou_topk,
    pointing_game,
    pointing_tolerance_px,
    remove_region,
    topk_region,
)

SIZE = 20


@pytest.fixture
def mask() -> np.ndarray:
    region = np.zeros((SIZE, SIZE), bool)
    region[5:10, 5:10] = True  # 25 pixels
    return region


def test_pointing_hit_and_miss(mask: np.ndarray) -> None:
    """The maximum inside the mask is a hit, far outside a miss."""
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[7, 7] = 1.0
    assert pointing_game(heat, mask)
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[17, 17] = 1.0
    assert not pointing_game(heat, mask)


def test_pointing_tolerance(mask: np.ndarray) -> None:
    """A maximum 3 px from the mask hits with tolerance 3 and misses with 2."""
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[7, 12] = 1.0  # mask ends at col 9: distance 3
    assert pointing_game(heat, mask, tolerance_px=3)
    assert not pointing_game(heat, mask, tolerance_px=2)


def test_pointing_flat_map_misses(mask: np.ndarray) -> None:
    """An all-zero map points nowhere."""
    assert not pointing_game(np.zeros((SIZE, SIZE), np.float32), mask, tolerance_px=SIZE)


def test_pointing_tolerance_scales_from_224() -> None:
    """15 px at 224 px becomes 17 px at 256 and 34 px at 512."""
    assert pointing_tolerance_px(224) == 15
    assert pointing_tolerance_px(256) == 17
    assert pointing_tolerance_px(512) == 34


def test_energy_in_mask(mask: np.ndarray) -> None:
    """Mass split 3:1 between mask and outside gives 0.75."""
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[6, 6] = 0.6
    heat[8, 8] = 0.9
    heat[15, 15] = 0.5
    assert energy_in_mask(heat, mask) == pytest.approx(0.75)
    assert energy_in_mask(np.zeros_like(heat), mask) == 0.0
    assert energy_in_mask(mask.astype(np.float32), mask) == pytest.approx(1.0)


def test_topk_region_size_and_ties() -> None:
    """The top-k region has exactly round(k * H * W) pixels even on a plateau."""
    heat = np.ones((SIZE, SIZE), np.float32)
    assert np.count_nonzero(topk_region(heat, 0.1)) == 40
    assert not topk_region(np.zeros_like(heat), 0.1).any()


def test_iou_topk_known(mask: np.ndarray) -> None:
    """A map equal to the mask gives IoU 1 at k = mask share; a shifted one a known IoU."""
    heat = mask.astype(np.float32) + 0.01  # positive everywhere, mask highest
    assert iou_topk(heat, mask, topk=25 / SIZE**2) == pytest.approx(1.0)
    shifted = np.roll(mask, 2, axis=1).astype(np.float32)
    # 5x3 overlap = 15, union = 25 + 25 - 15 = 35
    assert iou_topk(shifted, mask, topk=25 / SIZE**2) == pytest.approx(15 / 35)


def test_metrics_do_not_mutate(mask: np.ndarray) -> None:
    """Heatmap and mask are unchanged by every metric."""
    heat = np.random.default_rng(0).random((SIZE, SIZE)).astype(np.float32)
    heat_before, mask_before = heat.copy(), mask.copy()
    pointing_game(heat, mask, 2)
    energy_in_mask(heat, mask)
    iou_topk(heat, mask)
    np.testing.assert_array_equal(heat, heat_before)
    np.testing.assert_array_equal(mask, mask_before)


def test_empty_mask_refused() -> None:
    """An empty mask cannot be scored."""
    with pytest.raises(ValueError, match="mask is empty: localisation needs at least one"):
        energy_in_mask(np.ones((4, 4)), np.zeros((4, 4)))


def test_shape_mismatch_refused(mask: np.ndarray) -> None:
    """Heatmap and mask must have one shape."""
    with pytest.raises(ValueError, match=r"heatmap \(4, 4\) and mask \(20, 20\) must be 2-D"):
        pointing_game(np.ones((4, 4)), mask)


def test_bad_topk_refused(mask: np.ndarray) -> None:
    """topk must be a share in (0, 1]."""
    with pytest.raises(ValueError, match=r"topk must be in \(0, 1\]; got 0"):
        iou_topk(np.ones((SIZE, SIZE)), mask, topk=0)


def test_dilate_radius() -> None:
    """Dilation by 1 px grows a point to a plus-shaped disc."""
    point = np.zeros((5, 5), bool)
    point[2, 2] = True
    grown = dilate(point, 1)
    assert grown[1, 2] and grown[2, 3] and not grown[0, 2]
    np.testing.assert_array_equal(dilate(point, 0), point)


def test_remove_region_air_and_blur() -> None:
    """Air sets the region to 0; blur changes only the region; the input is not modified."""
    x = np.random.default_rng(1).random((SIZE, SIZE, 3)).astype(np.float32)
    before = x.copy()
    region = np.zeros((SIZE, SIZE), bool)
    region[:4, :4] = True
    air = remove_region(x, region, "air")
    assert np.all(air[region] == AIR_VALUE)
    np.testing.assert_array_equal(air[~region], x[~region])
    blurred = remove_region(x, region, "blur")
    np.testing.assert_array_equal(blurred[~region], x[~region])
    assert not np.allclose(blurred[region], x[region])
    np.testing.assert_array_equal(x, before)
    with pytest.raises(ValueError, match=r"unknown removal mode 'noise'; choose one of"):
        remove_region(x, region, "noise")


def test_deletion_score_rewards_the_right_region() -> None:
    """A 'model' that sums a bright square drops more when the map covers the square."""
    x = np.zeros((SIZE, SIZE, 1), np.float32)
    x[2:6, 2:6] = 1.0

    def predict(batch: np.ndarray) -> np.ndarray:
        return batch[:, 2:6, 2:6, 0].mean(axis=(1, 2))

    good = np.zeros((SIZE, SIZE), np.float32)
    good[2:6, 2:6] = 1.0
    score = deletion_score(predict, x, good, topk=16 / SIZE**2, mode="air", draws=8, seed=3)
    assert score.probability == pytest.approx(1.0)
    assert score.drop_cam == pytest.approx(1.0)
    assert score.drop_random < score.drop_cam
    flat = deletion_score(predict, x, np.zeros((SIZE, SIZE)), topk=0.05)
    assert flat.drop_cam == 0.0 and flat.drop_random == 0.0


PHANTOM_SIZE = 64


@pytest.fixture(scope="module")
def phantom_index(tmp_path_factory: pytest.TempPathFactory):
    """A tiny phantom dataset (DICOM + masks) and its index with absolute paths."""
    from hemo.datasets import load_index
    from hemo.phantom import write_demo_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_demo_dataset(root, n_studies=4, seed=11, slices_per_study=3, size=PHANTOM_SIZE)
    return load_index(root / "index.parquet")


@pytest.mark.parametrize("crop_head", [False, True])
def test_mask_follows_model_input_geometry(phantom_index, crop_head: bool) -> None:
    """The resized mask lands where to_model_input puts the lesion's pixels."""
    import dataclasses

    from hemo.cam.metrics import mask_to_input, read_mask
    from hemo.io import read_scan
    from hemo.preprocess import InputSpec, to_model_input

    spec = InputSpec(size=48, windows=("bone",), channels=1, crop_head=crop_head)
    row = phantom_index[phantom_index["label_any"] == 1].iloc[0]
    scan = read_scan(row["path"])
    lesion = read_mask(row["mask_path"], "any")
    marked = dataclasses.replace(scan, hu=np.where(lesion, 2000.0, scan.hu).astype(np.float32))
    diff = to_model_input(marked, spec)[..., 0] - to_model_input(scan, spec)[..., 0]
    reference = diff >= 0.35  # half the ~0.7 step a full lesion pixel makes in the bone window
    mapped = mask_to_input(lesion, scan, spec)
    assert mapped.shape == (48, 48) and mapped.any()
    assert np.count_nonzero(mapped & reference) / np.count_nonzero(mapped | reference) >= 0.8


def test_read_mask_bits(tmp_path) -> None:
    """Bit i of the PNG is SUBTYPES[i]; 'any' is the union."""
    import cv2

    from hemo.cam.metrics import read_mask

    bits = np.zeros((4, 4), np.uint8)
    bits[0, 0] = 0b00001  # epidural
    bits[1, 1] = 0b10000  # subdural
    bits[2, 2] = 0b10001
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), bits)
    assert np.argwhere(read_mask(path, "subdural")).tolist() == [[1, 1], [2, 2]]
    assert np.argwhere(read_mask(path, "epidural")).tolist() == [[0, 0], [2, 2]]
    assert np.count_nonzero(read_mask(path, "any")) == 3
    with pytest.raises(Exception, match=r"no mask bit for label 'bleed'"):
        read_mask(path, "bleed")


@pytest.fixture(scope="module")
def compact_model():
    """An untrained compact model at the phantom size and its card."""
    from hemo.config import RSNA_LABELS
    from hemo.model import CAM_LAYERS, ModelCard, build_model
    from hemo.preprocess import InputSpec

    spec = InputSpec(size=PHANTOM_SIZE)
    model = build_model("compact", spec, RSNA_LABELS, weights=None)
    card = ModelCard(
        name="tiny",
        architecture="compact",
        input_spec=spec,
        labels=RSNA_LABELS,
        cam_layer=CAM_LAYERS["compact"],
    )
    return model, card


def test_cam_quality_report(phantom_index, compact_model) -> None:
    """cam_quality scores every positive masked slice and returns JSON-ready numbers."""
    import json

    from hemo.cam.metrics import cam_quality
    from hemo.model import CAM_LAYERS

    model, card = compact_model
    report = cam_quality(model, card, phantom_index, method="gradcam", split=None, draws=2)
    positives = int((phantom_index["label_any"] == 1).sum())
    assert report["n_slices"] == positives > 0
    assert report["n_errors"] == 0
    assert report["layer"] == CAM_LAYERS["compact"]
    assert report["tolerance_px"] == 4
    for key in ("pointing_game", "energy_in_mask", "iou_topk", "flat_fraction"):
        assert 0.0 <= report[key] <= 1.0, key
    assert set(report["faithfulness"]) == {"air", "blur"}
    json.dumps(report, allow_nan=False)
    capped = cam_quality(
        model, card, phantom_index, "hirescam", split=None, max_slices=2, removal=()
    )
    assert capped["n_slices"] == 2 and capped["faithfulness"] == {}


def test_cam_quality_without_positives(phantom_index, compact_model) -> None:
    """No qualifying slice gives n_slices 0 and None means, not an error."""
    from hemo.cam.metrics import cam_quality

    model, card = compact_model
    report = cam_quality(model, card, phantom_index, split="nonexistent")
    assert report["n_slices"] == 0 and report["pointing_game"] is None


def test_cam_quality_unknown_label(phantom_index, compact_model) -> None:
    """A label the card does not list is refused."""
    from hemo.cam.metrics import cam_quality

    model, card = compact_model
    with pytest.raises(ValueError, match=r"label 'bleed' is not an output of this model"):
        cam_quality(model, card, phantom_index, label="bleed")
