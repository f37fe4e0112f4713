"""hemo.preprocess: InputSpec validation, model input, display, crop to head, purity."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from dicom_factory import ct_bytes
from scipy.ndimage import binary_fill_holes

from hemo import config
from hemo.dicom import read_dicom
from hemo.errors import ConfigError, InputError
from hemo.images import Image2D
from hemo.preprocess import (
    HEAD_HU_THRESHOLD,
    SKULL_HU_THRESHOLD,
    InputSpec,
    blacken_background,
    head_bbox,
    head_only,
    hyperdensity_map,
    input_view,
    largest_component,
    mask_to_model_input,
    midline_transform,
    normalize_brain_level,
    skull_hull_mask,
    to_display,
    to_model_input,
    window_stack,
)
from hemo.windowing import PRESETS, multi_window


def _image(pixels: np.ndarray) -> Image2D:
    pixels = pixels.astype(np.float32)
    pixels.setflags(write=False)
    return Image2D(
        pixels=pixels, source="synthetic.png", kind="png", original_shape=pixels.shape, bit_depth=8
    )


def _disc(shape=(200, 300), center=(80, 200), radius=50, value=0.6) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.where((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2, value, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 4}, r"InputSpec.size is 4: must be in \[16, 2048\]"),
        ({"size": 2.5}, "InputSpec.size must be an integer"),
        ({"mode": "rgb"}, "InputSpec.mode is 'rgb': must be one of hu, display"),
        ({"windows": ()}, "InputSpec.windows is empty"),
        ({"windows": ("brain", "lung?")}, "unknown window 'lung\\?'"),
        ({"windows": ("brain",)}, "windows has 1 and channels is 3; set channels=1"),
        ({"mode": "display", "channels": 0}, r"InputSpec.channels is 0: must be in \[1, 4\]"),
        ({"crop_head": "yes"}, "InputSpec.crop_head must be true or false"),
        ({"mask_outside_head": 1}, "InputSpec.mask_outside_head must be true or false"),
        ({"mode": "display", "channels": 2, "asymmetry": 1}, "asymmetry must be true or false"),
        ({"asymmetry": True}, "needs mode 'display' and channels >= 2"),
        ({"mode": "display", "channels": 1, "asymmetry": True}, "got mode 'display', channels 1"),
        ({"mode": "display", "channels": 2, "hyperdensity": 1}, "hyperdensity must be true or"),
        (
            {"mode": "hu", "channels": 3, "windows": ("brain",) * 3, "hyperdensity": True},
            "needs mode 'display' and channels >= 2",
        ),  # fmt: skip
        (
            {"mode": "display", "channels": 1, "hyperdensity": True},
            "got mode 'display', channels 1",
        ),
        (
            {"mode": "display", "channels": 2, "asymmetry": True, "hyperdensity": True},
            r"channels >= 3 \(got mode 'display', channels 2, with asymmetry\)",
        ),  # fmt: skip
        ({"mode": "display", "brain_level": True}, "brain_level must be a number"),
        ({"mode": "display", "brain_level": 1.5}, r"a level in \(0, 1\), or 0 for off"),
        ({"brain_level": 0.45}, "brain_level scales display grayscale: it needs mode 'display'"),
        ({"mode": "display", "black_background": 1}, "black_background must be true or false"),
        ({"black_background": True}, "black_background blackens .* it needs mode 'display'"),
        ({"dicom_head_only": "true"}, "dicom_head_only must be true or false"),
    ],
)
def test_input_spec_validation(kwargs, message):
    """Each invalid field is refused with its own message."""
    with pytest.raises(ConfigError, match=message):
        InputSpec(**kwargs)


def test_input_spec_round_trip_and_composites():
    """to_dict/from_dict round-trips; a composite name expands; unknown keys are refused."""
    spec = InputSpec(size=128, windows="rsna3", crop_head=True)
    assert spec.windows == ("brain", "subdural", "soft_tissue")
    assert InputSpec.from_dict(spec.to_dict()) == spec and spec.input_shape == (128, 128, 3)
    with pytest.raises(ConfigError, match="InputSpec: unknown field\\(s\\) colour"):
        InputSpec.from_dict({**spec.to_dict(), "colour": 1})


def test_hu_model_input_matches_windowing_and_does_not_mutate():
    """HU mode equals resize-then-window with hemo.windowing maths; the slice is untouched."""
    s = read_dicom(
        ct_bytes(np.tile(np.linspace(-1100, 1500, 64, dtype=np.float32), (64, 1)).astype(np.int16))
    )
    before = s.hu.copy()
    x = to_model_input(s, InputSpec(size=64))
    assert x.shape == (64, 64, 3) and x.dtype == np.float32 and x.flags.writeable
    np.testing.assert_allclose(x, multi_window(s.hu, "rsna3"), atol=1e-6)
    np.testing.assert_array_equal(s.hu, before)


def test_image_refused_by_hu_model():
    """An image has no HU: a HU model refuses it with a clear message."""
    with pytest.raises(
        InputError, match=r"synthetic\.png: model expects HU windows .* give a DICOM"
    ):
        to_model_input(_image(_disc()), InputSpec())


def test_display_mode_repeats_gray_for_image_and_dicom():
    """Display mode repeats one gray plane; a DICOM goes through the display window."""
    spec = InputSpec(size=32, mode="display", channels=3)
    x = to_model_input(_image(_disc()), spec)
    assert x.shape == (32, 32, 3) and np.array_equal(x[..., 0], x[..., 2])
    s = read_dicom(ct_bytes())
    y = to_model_input(s, spec)
    assert y.max() == pytest.approx(0.5) and y.min() == 0.0  # 40 HU in the 40/80 brain window


def test_to_display():
    """to_display windows HU (brain by default) and returns image pixels as they are."""
    s = read_dicom(ct_bytes())
    gray = to_display(s)
    assert gray.dtype == np.float32 and float(gray.max()) == 0.5
    assert float(to_display(s, PRESETS["bone"]).max()) == pytest.approx((40 - (600 - 1400)) / 2800)
    img = _image(_disc())
    assert to_display(img) is img.pixels


def test_head_bbox_keeps_largest_component():
    """A burned-in letter and a thin border are dropped; the head box remains."""
    gray = _disc()
    gray[5:20, 5:12] = 1.0  # panel letter
    gray[-1, :] = 1.0  # border line
    assert head_bbox(gray) == (30, 131, 150, 251)
    assert head_bbox(np.zeros((10, 12))) == (0, 10, 0, 12)


def test_largest_component_is_the_region_and_its_box():
    """The largest 8-connected region comes back as a label image, its label and its box; a
    diagonal neighbour joins it (8-connectivity), a separate bigger blob wins, an empty mask is
    None."""
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:5, 2:5] = True
    mask[5, 5] = True  # touches (4, 4) only by a corner
    labels, label, box = largest_component(mask)
    assert box == (2, 6, 2, 6)
    assert int((labels == label).sum()) == 10
    mask[10:18, 10:25] = True
    labels, label, box = largest_component(mask)
    assert box == (10, 18, 10, 25) and int((labels == label).sum()) == 8 * 15
    assert largest_component(np.zeros((4, 4), dtype=bool)) is None


def test_crop_centres_the_head():
    """Crop to head gives a centred, square crop with margin (no stretching)."""
    x = to_model_input(
        _image(_disc()), InputSpec(size=64, mode="display", channels=1, crop_head=True)
    )
    ys, xs = np.nonzero(x[..., 0] > 0.3)
    assert abs(ys.mean() - 31.5) < 1.5 and abs(xs.mean() - 31.5) < 1.5
    assert 0.85 < (ys.max() - ys.min()) / 64 < 0.95


def test_hu_crop_uses_hu_threshold():
    """In HU mode the head mask comes from HU above HEAD_HU_THRESHOLD."""
    hu = np.full((64, 64), config.HU_AIR, dtype=np.int16)
    hu[10:30, 30:50] = 40
    s = read_dicom(ct_bytes(hu))
    assert head_bbox(s.hu, HEAD_HU_THRESHOLD) == (10, 30, 30, 50)
    x = to_model_input(s, InputSpec(size=32, crop_head=True))
    assert x[16, 16, 0] == pytest.approx(0.5) and x[0, 0, 0] == 0.0


def _ring_head(shape=(200, 300), center=(100, 150)) -> np.ndarray:
    """A grey brain inside a white ring skull, a grey figure background and a white letter."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r2 = (yy - center[0]) ** 2 + (xx - center[1]) ** 2
    gray = np.full(shape, 0.2)  # grey figure background: the crop keeps it
    gray[r2 <= 80**2] = 1.0  # skull
    gray[r2 <= 72**2] = 0.5  # brain
    gray[90:110, 140:160] = 0.7  # "bleed" inside
    gray[10:30, 10:22] = 1.0  # panel letter outside the skull, as white as bone
    return gray


def test_input_spec_mask_outside_head_default_and_old_cards():
    """Off by default; a card written before the option (no key) loads with it off."""
    spec = InputSpec(size=96, mode="display", channels=1, crop_head=True)
    assert spec.mask_outside_head is False
    old_card = spec.to_dict()
    del old_card["mask_outside_head"]
    assert InputSpec.from_dict(old_card) == spec
    masked = InputSpec(size=96, mode="display", channels=1, mask_outside_head=True)
    assert InputSpec.from_dict(masked.to_dict()) == masked


def test_asymmetry_channel_shows_what_is_brighter_than_its_mirror():
    """With asymmetry the last channel is max(0, x - mirror(x)) of the grayscale channel(s): 0
    for a head symmetric about the midline, and a one-sided blob shows on its side only; the
    option is off by default and in cards written before it."""
    head = _disc((120, 120), (60, 60), 50, 0.5)
    spec = InputSpec(size=64, mode="display", channels=2, crop_head=True, asymmetry=True)
    plain = to_model_input(_image(head), InputSpec(size=64, mode="display", channels=1))
    x = to_model_input(_image(head), spec)
    assert x.shape == (64, 64, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], to_model_input(_image(head), dataclasses.replace(
        spec, channels=1, asymmetry=False))[..., 0])  # fmt: skip
    assert x[..., 1].max() < 0.02 and plain.shape == (64, 64, 1)
    bleed = head.copy()
    bleed[40:50, 25:35] = 0.9  # one side of the head only
    y = to_model_input(_image(bleed), spec)
    gray, asym = y[..., 0], y[..., 1]
    np.testing.assert_allclose(asym, np.clip(gray - gray[:, ::-1], 0, 1), atol=1e-6)
    left, right = asym[:, :32], asym[:, 32:]
    assert left.max() > 0.3 and right.max() < 0.02
    three = dataclasses.replace(spec, channels=3)
    z = to_model_input(_image(bleed), three)
    np.testing.assert_array_equal(z[..., 0], z[..., 1])
    np.testing.assert_array_equal(z[..., 2], asym)
    old_card = InputSpec(size=64, mode="display", channels=1).to_dict()
    del old_card["asymmetry"]
    assert InputSpec.from_dict(old_card).asymmetry is False
    assert InputSpec.from_dict(spec.to_dict()) == spec


def _skull_ring_head(brain: float = 0.45) -> np.ndarray:
    """A head: a white skull ring around brain at ``brain``, scalp-gray outside the ring."""
    head = _disc((160, 160), (80, 80), 70, 0.3)
    head = np.where(_disc((160, 160), (80, 80), 64, 1.0) > 0, 1.0, head)
    return np.where(_disc((160, 160), (80, 80), 58, 1.0) > 0, brain, head).astype(np.float32)


def test_hyperdensity_map_lights_what_is_denser_than_brain_inside_the_skull():
    """hyperdensity_map: 0 on brain, bone, scalp and background, and (x - level - floor) / span
    on a region brighter than the brain's median inside the skull, on either side."""
    head = _skull_ring_head(0.45)
    head[70:86, 40:56] = 0.75  # a bleed 0.3 above brain
    head[74:82, 100:108] = 0.50  # within the floor: gray matter, not blood
    m = hyperdensity_map(head)
    assert m.dtype == np.float32 and m.shape == head.shape
    np.testing.assert_allclose(m[74:82, 44:52], (0.75 - 0.45 - 0.06) / 0.34, atol=1e-6)
    assert m[74:82, 100:108].max() == 0.0
    assert m[head == 1.0].max() == 0.0 and m[head == 0.3].max() == 0.0 and m[0, 0] == 0.0
    assert m[head == 0.45].max() == 0.0
    mirrored = hyperdensity_map(head[:, ::-1])
    np.testing.assert_allclose(mirrored[74:82, 108:116], m[74:82, 44:52])
    np.testing.assert_array_equal(hyperdensity_map(np.zeros((40, 40), np.float32)), 0.0)
    speck = head.copy()
    speck[80, 80] = np.nan  # one unknown pixel stays local: the level is still the brain's
    np.testing.assert_allclose(hyperdensity_map(speck)[74:82, 44:52], m[74:82, 44:52])
    # Too small to find the skull's inside: no bone or scalp lit up, nothing at all
    tiny = cv2.resize(head, (12, 12), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(hyperdensity_map(tiny), 0.0)
    from pydicom.data import get_testdata_file

    from hemo.io import read_scan

    ct = read_scan(get_testdata_file("CT_small.dcm"))  # a real CT slice, shrunk to 16 px
    small = InputSpec(size=16, mode="display", channels=2, crop_head=True, hyperdensity=True)
    x = to_model_input(ct, small)
    assert (x[..., 0] > 0.9).sum() > 10 and x[..., 1][x[..., 0] > 0.9].max() == 0.0  # no bone


def test_hyperdensity_channel_sits_before_the_asymmetry_map():
    """With hyperdensity the channels are the grayscale(s), the hyperdensity map, then the
    asymmetry map when on; each map is its function of the gray channel; off by default and in
    cards written before it."""
    head = _skull_ring_head(0.45)
    head[70:86, 40:56] = 0.75
    spec = InputSpec(
        size=64, mode="display", channels=3, crop_head=True, asymmetry=True, hyperdensity=True
    )
    x = to_model_input(_image(head), spec)
    gray = x[..., 0]
    assert x.shape == (64, 64, 3) and spec.map_channels == 2
    assert dataclasses.replace(spec, asymmetry=False).map_channels == 1
    np.testing.assert_array_equal(x[..., 1], hyperdensity_map(gray))
    np.testing.assert_allclose(x[..., 2], np.clip(gray - gray[:, ::-1], 0, 1), atol=1e-6)
    assert x[..., 1].max() > 0.5
    alone = to_model_input(_image(head), dataclasses.replace(spec, asymmetry=False))
    np.testing.assert_array_equal(alone[..., :2], np.stack([gray, gray], axis=2))
    np.testing.assert_array_equal(alone[..., 2], x[..., 1])
    old_card = spec.to_dict()
    del old_card["hyperdensity"]
    assert InputSpec.from_dict(old_card).hyperdensity is False
    assert InputSpec.from_dict(spec.to_dict()) == spec


def test_hyperdensity_map_separates_the_real_kaggle_images(head_ct_dir):
    """On the 140 real Kaggle head-CT images, the share of the hyperdensity channel above 0.5
    alone ranks the hemorrhage images above the others (ROC AUC about 0.9; the whole
    grayscale's mean does not)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from hemo.io import read_scan

    labels = pd.read_csv(head_ct_dir / "labels.csv", skipinitialspace=True)
    spec = InputSpec(size=96, mode="display", channels=2, crop_head=True, hyperdensity=True)
    shares, means = [], []
    for image_id in labels["id"]:
        x = to_model_input(read_scan(head_ct_dir / "head_ct" / f"{image_id:03d}.png"), spec)
        shares.append(float((x[..., 1] > 0.5).mean()))
        means.append(float(x[..., 0].mean()))
    y = labels["hemorrhage"].to_numpy()
    assert roc_auc_score(y, shares) > 0.85
    assert roc_auc_score(y, means) < 0.75


def _head_with_bleed(brain: float) -> np.ndarray:
    """A head (white skull, brain at ``brain``) with a one-sided blob 1.6x as bright as brain."""
    head = _disc((120, 120), (60, 60), 52, 1.0)
    head = np.where(_disc((120, 120), (60, 60), 46, 1.0) > 0, brain, head)
    head[40:50, 25:35] = 1.6 * brain
    return head


def test_brain_level_scales_tissue_to_the_level_and_keeps_black_and_bone():
    """normalize_brain_level: the soft tissue's median lands on the level, black stays black,
    bone stays white; the gain is clipped, and an image without tissue is left as is."""
    gray = _head_with_bleed(0.3)
    out = normalize_brain_level(gray, 0.45)
    brain = gray == 0.3
    np.testing.assert_allclose(out[brain], 0.45, atol=1e-6)
    assert out[gray == 0].max() == 0.0 and out[gray == 1.0].min() == 1.0
    np.testing.assert_allclose(out[40:50, 25:35], 0.72, atol=1e-6)  # the same gain, 1.5
    assert out.dtype == np.float32 and gray[brain][0] == 0.3  # input untouched
    np.testing.assert_allclose(normalize_brain_level(_head_with_bleed(0.12), 0.45)[brain], 0.24)
    blank = np.zeros((50, 50), np.float32)
    blank[:2] = 0.5  # under 5 % tissue
    np.testing.assert_array_equal(normalize_brain_level(blank, 0.45), blank)


def test_brain_level_makes_two_display_curves_of_one_head_agree():
    """The same head exported through two window widths (brain at 0.3 and at 0.55) gives
    the same brain, bleed and asymmetry map with brain_level, and clearly different ones
    without (the asymmetry map is computed from the scaled slice); off by default and in older cards."""
    spec = InputSpec(size=64, mode="display", channels=2, crop_head=True, asymmetry=True)
    level = dataclasses.replace(spec, brain_level=0.45)
    narrow, wide = _image(_head_with_bleed(0.55)), _image(_head_with_bleed(0.3))
    with_level = [to_model_input(s, level) for s in (narrow, wide)]
    without = [to_model_input(s, spec) for s in (narrow, wide)]
    gray = with_level[0][..., 0]
    tissue = (gray > 0.1) & (gray < 0.9)  # brain and bleed; the skull's rim is white in both
    assert tissue.mean() > 0.3
    assert np.median(np.abs(with_level[0] - with_level[1])[..., 0][tissue]) < 1e-3
    assert np.median(np.abs(without[0] - without[1])[..., 0][tissue]) > 0.1
    np.testing.assert_allclose(with_level[0][..., 1], with_level[1][..., 1], atol=1e-5)
    assert np.abs(without[0][..., 1] - without[1][..., 1]).max() > 0.1
    gray, asym = with_level[1][..., 0], with_level[1][..., 1]
    np.testing.assert_allclose(asym, np.clip(gray - gray[:, ::-1], 0, 1), atol=1e-6)
    assert spec.brain_level == 0.0
    old_card = spec.to_dict()
    del old_card["brain_level"]
    assert InputSpec.from_dict(old_card) == spec
    assert InputSpec.from_dict(level.to_dict()) == level


def test_brain_level_on_real_kaggle_images_narrows_the_spread_of_brain(head_ct_dir):
    """On twenty real Kaggle PNGs the soft tissue's median varies several-fold less after the
    scaling than before (the exports' display curves differ from image to image)."""
    from hemo.images import read_image

    plain = InputSpec(size=96, mode="display", channels=1, crop_head=True)
    level = dataclasses.replace(plain, brain_level=0.45)
    medians: dict[str, list[float]] = {"plain": [], "level": []}
    for path in sorted((head_ct_dir / "head_ct").glob("*.png"))[::7]:
        scan = read_image(path)
        for key, spec in (("plain", plain), ("level", level)):
            gray = to_model_input(scan, spec)[..., 0]
            medians[key].append(float(np.median(gray[(gray > 0.1) & (gray < 0.9)])))
    assert len(medians["plain"]) == 20
    assert np.std(medians["level"]) * 3 < np.std(medians["plain"])
    assert abs(np.median(medians["level"]) - 0.45) < 0.03


def _on_background(head: np.ndarray, level: float, margin: int = 40) -> np.ndarray:
    """``head`` (black around it) with ``margin`` more pixels on each side, its black
    background (the margin included) at ``level``."""
    big = np.pad(head, margin)
    outside = np.pad(head, margin, constant_values=-1.0) <= 0
    return np.where(outside, level, big).astype(np.float32)


def test_black_background_makes_a_gray_picture_the_black_one():
    """A head on a flat gray background (a photographed film), with black_background, gives the
    model the input of the same head on black, and the same overlay geometry; without it the
    crop takes the whole gray picture and the head comes out smaller."""
    head = _head_with_bleed(0.3)
    on_black, on_gray = _image(np.pad(head, 40)), _image(_on_background(head, 0.2))
    spec = InputSpec(size=64, mode="display", channels=2, crop_head=True, asymmetry=True)
    black = dataclasses.replace(spec, black_background=True)
    want = to_model_input(on_black, spec)
    np.testing.assert_allclose(to_model_input(on_gray, black), want, atol=1e-6)
    np.testing.assert_allclose(to_model_input(on_black, black), want, atol=1e-6)
    assert np.abs(to_model_input(on_gray, spec) - want).max() > 0.5
    np.testing.assert_allclose(input_view(on_gray, black), input_view(on_black, spec), atol=1e-6)
    assert spec.black_background is False
    old_card = spec.to_dict()
    del old_card["black_background"]
    assert InputSpec.from_dict(old_card) == spec
    assert InputSpec.from_dict(black.to_dict()) == black


def test_blacken_background_only_touches_a_flat_background_reached_from_the_edge():
    """A gray frame round a black background goes black; the brain, as dark as the background
    but inside the skull, stays; noise within the tolerance is background; a head cut by the
    image's edge, or an image already black, is returned as is; the input is not modified."""
    head = _head_with_bleed(0.2)
    framed = _on_background(np.pad(head, 20), 0.3)  # the frame, then black, then the head
    framed[:, :3] = 0.33  # a slightly uneven film edge
    out = blacken_background(framed)
    np.testing.assert_array_equal(out, np.pad(head, 60).astype(np.float32))
    assert framed[0, 0] == pytest.approx(0.33)
    noisy = _on_background(head, 0.2) + np.random.default_rng(0).uniform(-0.03, 0.03, (200, 200))
    noisy = np.clip(noisy, 0, 1).astype(np.float32)
    cleaned = blacken_background(noisy)
    assert cleaned[:40].max() == 0.0 and cleaned[:, -40:].max() == 0.0
    brain = np.pad(head == 0.2, 40)
    np.testing.assert_array_equal(cleaned[brain], noisy[brain])  # the brain is at 0.2 too
    cut = np.full((100, 100), 0.5, np.float32)  # a head filling the image: tissue at the edge
    cut[:, :20] = 0.2
    np.testing.assert_array_equal(blacken_background(cut), cut)
    black = np.pad(head, 10).astype(np.float32)
    assert blacken_background(black) is black
    with pytest.raises(InputError, match="non-empty"):
        blacken_background(np.zeros((0, 4)))


def test_black_background_on_real_kaggle_images_blackens_only_gray_pictures(head_ct_dir):
    """On the real Kaggle PNGs: pictures whose background is a flat gray (33 of the 70 positives,
    10 of the 70 negatives) come out with a black edge and a tenth or more of their pixels black, the
    head untouched; a picture whose background is black is returned as it was."""
    from hemo.images import read_image

    gray_backgrounds = ["009.png", "013.png", "035.png", "049.png", "114.png", "129.png"]
    black_backgrounds = ["029.png", "053.png", "106.png", "145.png"]
    for name in gray_backgrounds:
        gray = read_image(head_ct_dir / "head_ct" / name).pixels
        out = blacken_background(gray)
        edge = np.concatenate([out[:3].ravel(), out[-3:].ravel(), out[:, :3].ravel()])
        assert np.median(gray[:3]) > 0.05 and np.median(edge) == 0.0, name
        assert np.mean((out == 0) & (gray > 0.05)) > 0.1, name
        h, w = gray.shape
        centre = np.s_[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3]
        np.testing.assert_array_equal(out[centre], gray[centre], err_msg=name)
    for name in black_backgrounds:
        gray = read_image(head_ct_dir / "head_ct" / name).pixels
        np.testing.assert_array_equal(blacken_background(gray), gray, err_msg=name)


def _head_on_holder() -> np.ndarray:
    """A 128 x 128 HU slice: a round head (skin, a fat layer, the skull, brain, a dark ventricle
    inside) and, apart from it, a thin curved holder arc, as a scanner's head holder lies under
    the head."""
    hu = np.full((128, 128), config.HU_AIR, dtype=np.float32)
    cv2.circle(hu, (60, 56), 40, 40.0, -1)  # skin
    cv2.circle(hu, (60, 56), 38, -100.0, -1)  # subcutaneous fat: black in the brain window
    cv2.circle(hu, (60, 56), 36, 1000.0, -1)  # skull
    cv2.circle(hu, (60, 56), 32, 40.0, -1)  # brain
    cv2.circle(hu, (60, 56), 6, -20.0, -1)  # below the brain window's floor: dark inside the head
    cv2.ellipse(hu, (60, 56), (52, 52), 0, 30, 150, 300.0, 2)  # the holder's arc below the head
    return hu


def test_head_only_removes_what_lies_apart_from_the_head():
    """The holder's arc goes (to air), the head stays whole (the skin beyond the fat, the dark
    ventricle inside); a holder touching the head through a foam pad goes too, one touching it
    through something solid stays; NaN is background; an image with nothing above the threshold
    comes back unchanged; the input is not modified."""
    hu = _head_on_holder()
    hu.setflags(write=False)
    arc = hu == 300.0
    inside = np.hypot(*np.mgrid[:128, :128] - np.array([56, 60])[:, None, None]) <= 40
    out = head_only(hu)
    assert arc.sum() > 100 and np.all(out[arc] == config.HU_AIR)
    np.testing.assert_array_equal(out[inside], hu[inside])
    padded = hu.copy()
    padded[95:108, 56:64] = -600.0  # a foam pad between the head and the holder
    np.testing.assert_array_equal(head_only(padded)[arc], config.HU_AIR)
    touching = hu.copy()
    touching[94:109, 58:62] = 300.0  # a solid strut joining the arc to the head
    assert np.all(head_only(touching)[arc] == 300.0)
    gray = np.clip(hu / 80.0, 0, 1)  # other images: with their own threshold and fill
    assert np.all(head_only(gray, 0.05, 0.0)[arc] == 0.0)
    with_nan = hu.copy()
    with_nan[0, :] = np.nan
    assert np.all(head_only(with_nan)[0] == config.HU_AIR)
    air = np.full((8, 8), config.HU_AIR, dtype=np.float32)
    np.testing.assert_array_equal(head_only(air), air)
    with pytest.raises(InputError, match="non-empty"):
        head_only(np.zeros((3,)))


def test_dicom_head_only_feeds_a_dicom_without_its_holder_and_an_image_as_it_is():
    """With dicom_head_only, a DICOM of a head on a holder gives the model input, the overlay
    view and the lesion-mask geometry of the same head without the holder (display and HU
    modes); the same picture as a PNG is fed as it is; a card without the key loads with it
    off."""
    hu = _head_on_holder()
    bare = np.where(hu == 300.0, config.HU_AIR, hu).astype(np.int16)
    on_holder, alone = read_dicom(ct_bytes(hu.astype(np.int16))), read_dicom(ct_bytes(bare))
    display = InputSpec(size=64, mode="display", channels=2, crop_head=True, asymmetry=True)
    hu_spec = InputSpec(size=64, crop_head=True)
    hull = InputSpec(size=64, crop_head=True, mask_outside_head=True, align_midline=True)
    lesion = np.zeros(hu.shape, dtype=bool)
    lesion[40:50, 50:60] = True
    for spec in (display, hu_spec, hull):
        head_only_spec = dataclasses.replace(spec, dicom_head_only=True)
        want = to_model_input(alone, spec)
        np.testing.assert_allclose(to_model_input(on_holder, head_only_spec), want, atol=1e-6)
        if spec is not hull:  # the skull's hull drops the arc anyway
            assert np.abs(to_model_input(on_holder, spec) - want).max() > 0.2  # arc corners
        np.testing.assert_allclose(
            input_view(on_holder, head_only_spec), input_view(alone, spec), atol=1e-6
        )
        np.testing.assert_allclose(
            mask_to_model_input(lesion, on_holder, head_only_spec),
            mask_to_model_input(lesion, alone, spec),
            atol=1e-6,
        )
    picture = _image(to_display(on_holder))
    np.testing.assert_array_equal(
        to_model_input(picture, dataclasses.replace(display, dicom_head_only=True)),
        to_model_input(picture, display),
    )
    old_card = display.to_dict()
    del old_card["dicom_head_only"]
    assert InputSpec.from_dict(old_card) == display and display.dicom_head_only is False


def test_dicom_head_only_on_real_cq500_slices_removes_the_holder(cq500_dir, cq500_uncompressed):
    """On real DICOM (three CQ500-CT-0 slices, the top of the head, 693_UNCR.dcm): everything
    outside the head's outline (found independently: the largest region over -200 HU, holes
    filled) becomes air, the head's brain-window picture is untouched (the scalp too), and where
    the holder lay beside the head the model input changes."""
    from scipy.ndimage import label

    spec = InputSpec(size=96, mode="display", channels=1, crop_head=True)
    head_only_spec = dataclasses.replace(spec, dicom_head_only=True)
    paths = sorted(cq500_dir.glob("*.dcm"))
    for path in (paths[8], paths[60], paths[120], cq500_uncompressed):
        scan = read_dicom(path)
        regions, _ = label(scan.hu > -200, structure=np.ones((3, 3)))
        largest = np.argmax(np.bincount(regions.ravel())[1:]) + 1
        head = binary_fill_holes(regions == largest)
        cleaned = head_only(scan.hu)
        assert np.all(cleaned[~head] == config.HU_AIR), path.name
        np.testing.assert_array_equal(cleaned[head], scan.hu[head])
        gray = to_display(scan)
        labels, brain_label, _ = largest_component(gray > 0.05)
        assert np.all(head[binary_fill_holes(labels == brain_label)]), path.name
        if path != paths[8]:  # the top slice lies above the holder
            holder = ~head & (gray > 0.05)
            assert holder.sum() > 200, path.name  # bright and apart from the head
            before, after = to_model_input(scan, spec), to_model_input(scan, head_only_spec)
            assert np.abs(before - after).max() > 0.5, path.name


def _tilted_head(angle: float, shape=(220, 260), center=(118, 146)) -> np.ndarray:
    """An oval head off the image centre (white skull round grey brain, two dark ventricles either
    side of its long axis), its long axis turned ``angle`` degrees from vertical."""
    gray = np.zeros(shape, dtype=np.float32)
    cx, cy = float(center[1]), float(center[0])
    cv2.ellipse(gray, ((cx, cy), (150.0, 190.0), angle), 1.0, -1)  # skull
    cv2.ellipse(gray, ((cx, cy), (132.0, 172.0), angle), 0.5, -1)  # brain
    theta = np.deg2rad(angle)
    for side in (-1.0, 1.0):  # ventricles, mirror images across the long axis
        dx, dy = side * 24.0, -15.0
        vx = cx + dx * np.cos(theta) - dy * np.sin(theta)
        vy = cy + dx * np.sin(theta) + dy * np.cos(theta)
        cv2.ellipse(gray, ((float(vx), float(vy)), (14.0, 40.0), angle), 0.15, -1)
    return gray


@pytest.mark.parametrize("angle", [-14.0, 0.0, 9.0])
def test_midline_transform_turns_the_symmetry_axis_into_the_centre_column(angle):
    """A tilted, off-centre symmetric head comes out upright and mirrored onto itself across the
    canvas's centre column, whatever its tilt."""
    gray = _tilted_head(angle)
    matrix, side = midline_transform(gray)
    turned = cv2.warpAffine(gray, matrix, (side, side), flags=cv2.INTER_LINEAR)
    # getRotationMatrix2D(angle) is [[cos, sin], [-sin, cos]]: the recovered turn
    assert abs(np.degrees(np.arctan2(matrix[0, 1], matrix[0, 0])) - angle) <= 0.5
    assert abs(np.nonzero(turned > 0.05)[1].mean() - (side - 1) / 2) < 0.5
    assert float(np.abs(turned - turned[:, ::-1]).mean()) < 0.01
    rows = np.nonzero((turned > 0.05).any(axis=1))[0]
    cols = np.nonzero((turned > 0.05).any(axis=0))[0]
    assert np.ptp(rows) > np.ptp(cols) + 30  # long axis vertical


def test_midline_transform_of_a_head_that_fills_the_frame():
    """Many real figures are cut tight round the head (its box is the whole image): the axis is
    still found, off the image's centre column and tilted."""
    gray = _tilted_head(10.0)[40:200, 90:215]  # skull cut off on every side, axis off-centre
    assert head_bbox(gray) == (0, gray.shape[0], 0, gray.shape[1])
    matrix, side = midline_transform(gray)
    assert abs(np.degrees(np.arctan2(matrix[0, 1], matrix[0, 0])) - 10.0) <= 1.0
    # the head's centre, (146, 118) before the cut, lands on the canvas's centre column
    x = matrix @ np.array([146.0 - 90.0, 118.0 - 40.0, 1.0])
    assert abs(x[0] - (side - 1) / 2) < 1.5


def test_midline_transform_of_an_empty_image_only_centres_it():
    """No head: the matrix moves the image onto the middle of its canvas and turns nothing."""
    matrix, side = midline_transform(np.zeros((40, 30), dtype=np.float32))
    assert side == int(np.ceil(np.hypot(40, 30))) + 2
    np.testing.assert_allclose(matrix[:, :2], np.eye(2))
    np.testing.assert_allclose(matrix[:, 2], [(side - 30) / 2, (side - 40) / 2])
    with pytest.raises(InputError, match="non-empty"):
        midline_transform(np.zeros((3, 4, 5)))


def test_align_midline_makes_the_asymmetry_map_of_a_tilted_head_empty():
    """With align_midline a tilted symmetric head gives a near-empty asymmetry map (without it,
    the tilted skull's rim shows), the input is still cropped to the head, and a one-sided blob
    still shows on its side; the option needs the crop and is off in older cards."""
    spec = InputSpec(size=64, mode="display", channels=2, crop_head=True, asymmetry=True)
    aligned = dataclasses.replace(spec, align_midline=True)
    tilted = _image(_tilted_head(12.0))
    assert to_model_input(tilted, spec)[..., 1].mean() > 0.02
    x = to_model_input(tilted, aligned)
    assert x.shape == (64, 64, 2) and x[..., 1].mean() < 0.005
    head = np.nonzero(x[..., 0] > 0.05)
    assert head[0].min() <= 4 and head[0].max() >= 59  # the crop keeps the head filling the frame
    bleed = _tilted_head(12.0)
    bleed[150:160, 105:115] = 0.9  # left of the midline, in plain brain
    y = to_model_input(_image(bleed), aligned)[..., 1]
    assert (y[:, :32] > 0.3).sum() >= 4 and (y[:, 32:] > 0.3).sum() == 0
    with pytest.raises(ConfigError, match="align_midline needs crop_head"):
        InputSpec(size=64, mode="display", channels=1, align_midline=True)
    with pytest.raises(ConfigError, match="align_midline must be true or false"):
        InputSpec(size=64, mode="display", crop_head=True, channels=1, align_midline="yes")
    old_card = spec.to_dict()
    del old_card["align_midline"]
    assert InputSpec.from_dict(old_card) == spec
    assert InputSpec.from_dict(aligned.to_dict()) == aligned


def test_skull_hull_mask_drops_letter_and_background_keeps_inside():
    """Outside the ring skull's hull (letter, grey background) is zeroed; the inside is kept."""
    gray = _ring_head()
    mask = skull_hull_mask(gray)
    assert mask[100, 150] and mask[100, 71] and not mask[20, 15] and not mask[100, 60]
    assert not mask[5, 150] and not mask[195, 290]
    plain = InputSpec(size=100, mode="display", channels=1)
    x = to_model_input(_image(gray), plain)[..., 0]
    y = to_model_input(_image(gray), InputSpec(**{**plain.to_dict(), "mask_outside_head": True}))
    y = y[..., 0]
    # 300 wide -> 100 px: scale 1/3, the square canvas starts 50 source rows above the image
    letter = (slice(20, 26), slice(4, 7))
    assert x[letter].max() > 0.9 and y[letter].max() == 0.0
    assert x[25, 20] == pytest.approx(0.2) and y[25, 20] == 0.0  # grey background gone
    np.testing.assert_array_equal(y[40:60, 40:60], x[40:60, 40:60])  # inside untouched
    assert y[50, 50] == pytest.approx(0.7)
    assert gray[20, 15] == 1.0  # input not modified


def test_skull_hull_mask_without_skull_leaves_image():
    """No bone, or a hull too small to be a skull, means no mask (never blank out a head)."""
    assert skull_hull_mask(_disc(value=0.6)).all()
    tiny = np.zeros((100, 100))
    tiny[10:14, 10:14] = 1.0
    assert skull_hull_mask(tiny).all()
    assert skull_hull_mask(np.zeros((8, 8))).all()
    with pytest.raises(InputError, match="non-empty"):
        skull_hull_mask(np.zeros((3, 3, 3)))


def test_hu_mask_uses_bone_threshold():
    """In HU mode the skull is HU above SKULL_HU_THRESHOLD; outside becomes air."""
    hu = np.full((100, 100), 40, dtype=np.int16)  # soft tissue everywhere (like a scalp/pillow)
    yy, xx = np.mgrid[:100, :100]
    r2 = (yy - 50) ** 2 + (xx - 50) ** 2
    hu[(r2 <= 35**2) & (r2 > 30**2)] = 1000
    s = read_dicom(ct_bytes(hu))
    assert skull_hull_mask(s.hu, SKULL_HU_THRESHOLD)[50, 50]
    x = to_model_input(s, InputSpec(size=50, windows=("brain",), channels=1))
    y = to_model_input(
        s, InputSpec(size=50, windows=("brain",), channels=1, mask_outside_head=True)
    )
    assert x[2, 2, 0] == pytest.approx(0.5) and y[2, 2, 0] == 0.0
    assert y[25, 25, 0] == pytest.approx(0.5)


def test_mask_on_real_figure_removes_panel_letter(head_ct_dir):
    """Kaggle 114.png: a paper figure with a letter "A" on a grey panel; the mask removes both."""
    from hemo.io import read_scan

    scan = read_scan(head_ct_dir / "head_ct" / "114.png")
    plain = InputSpec(size=96, mode="display", channels=1, crop_head=True)
    x = to_model_input(scan, plain)[..., 0]
    y = to_model_input(scan, InputSpec(**{**plain.to_dict(), "mask_outside_head": True}))[..., 0]
    letter = (slice(8, 16), slice(16, 24))
    assert x[letter].max() > 0.5 and y[letter].max() == 0.0
    removed = (x > 0.05) & (y == 0.0)
    assert removed.mean() > 0.1  # the grey panel around the head
    np.testing.assert_array_equal(y[36:60, 36:60], x[36:60, 36:60])  # the brain is kept


def test_window_stack_nan_and_known_values():
    """window_stack maps known HU to known values and NaN to 0."""
    hu = np.array([[np.nan, 0.0, 40.0, 80.0]], dtype=np.float32)
    out = window_stack(hu, (PRESETS["brain"],))
    assert out[0, :, 0].tolist() == [0.0, 0.0, 0.5, 1.0]


def test_prepare_many_matches_to_model_input_and_reports_bad_files(tmp_path):
    """prepare_many (inline and pooled) equals to_model_input per file; a bad file is reported."""
    from hemo.preprocess import prepare_many

    spec = InputSpec(size=32)
    paths = []
    for i in range(5):
        path = tmp_path / f"s{i}.dcm"
        path.write_bytes(ct_bytes(np.full((40, 40), 10 * i, dtype=np.int16)))
        paths.append(str(path))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a scan at all")
    paths.insert(2, str(bad))
    expected = np.stack([to_model_input(read_dicom(p), spec) for p in paths if p != str(bad)])
    for workers in (1, 2):
        batch = prepare_many(paths, spec, workers=workers, chunk_files=2)
        np.testing.assert_array_equal(batch.inputs, expected)
        assert batch.sources == tuple(p for p in paths if p != str(bad))
        assert [name for name, _ in batch.failures] == [str(bad)]
    assert prepare_many([], spec).inputs.shape == (0, 32, 32, 3)


def test_prepare_many_refuses_bad_settings():
    """workers and chunk_files below 1 are refused with their value."""
    from hemo.preprocess import prepare_many

    with pytest.raises(ConfigError, match="prepare_many: workers is 0: must be at least 1"):
        prepare_many([], InputSpec(), workers=0)
    with pytest.raises(ConfigError, match="prepare_many: chunk_files is 0: must be at least 1"):
        prepare_many([], InputSpec(), chunk_files=0)


def test_input_view_lines_up_with_the_model_input_geometry(head_ct_dir) -> None:
    """input_view applies the model input's crop and padding, so a heatmap drawn on it lines up."""
    from hemo.images import read_image
    from hemo.preprocess import InputSpec, input_view, to_model_input

    scan = read_image(head_ct_dir / "head_ct" / "114.png")
    for spec in (
        InputSpec(size=64, mode="display", channels=1, crop_head=True),
        InputSpec(size=64, mode="display", channels=1, crop_head=True, mask_outside_head=True),
        InputSpec(size=64, mode="display", channels=1, crop_head=False),
        InputSpec(size=64, mode="display", channels=1, crop_head=True, align_midline=True),
    ):
        view = input_view(scan, spec)
        x = to_model_input(scan, spec)[:, :, 0]
        assert view.shape == (64, 64) and view.dtype == np.float32
        np.testing.assert_allclose(view, x, atol=1e-5)
        big = input_view(scan, spec, size=256)
        assert big.shape == (256, 256)
        assert abs(float(big.mean()) - float(view.mean())) < 0.02


def test_input_view_of_a_ct_slice_uses_the_hu_crop(ct_small) -> None:
    """For an HU model, the view crops where the HU input crops and shows the display window."""
    from hemo.dicom import read_dicom
    from hemo.preprocess import InputSpec, input_view, to_model_input

    scan = read_dicom(ct_small)
    spec = InputSpec(size=64, crop_head=True)
    view = input_view(scan, spec)
    brain = to_model_input(scan, InputSpec(size=64, crop_head=True, windows=("brain",), channels=1))
    # The model windows after resizing HU, the view before: equal up to resampling at the edges.
    assert float(np.abs(view - brain[:, :, 0]).mean()) < 0.04
    uncropped = input_view(scan, InputSpec(size=64, crop_head=False))
    assert float(np.abs(uncropped - brain[:, :, 0]).mean()) > 0.1
    aligned = InputSpec(size=64, crop_head=True, align_midline=True)
    brain_aligned = to_model_input(
        scan, dataclasses.replace(aligned, windows=("brain",), channels=1)
    )
    assert float(np.abs(input_view(scan, aligned) - brain_aligned[:, :, 0]).mean()) < 0.04


@pytest.mark.parametrize(
    "extra",
    [{}, {"align_midline": True}, {"mask_outside_head": True}, {"crop_head": False}],
    ids=["crop", "aligned", "skull-masked", "no-crop"],
)
def test_mask_to_model_input_lands_on_the_lesion_it_marks(extra) -> None:
    """A lesion mask drawn on a tilted, off-centre head is carried onto the input grid where
    to_model_input puts the lesion's pixels: the same place and the same area (the input
    differs from the lesion-free head by 0.4 per lesion pixel)."""
    spec = InputSpec(size=64, mode="display", channels=1, crop_head=True)
    spec = dataclasses.replace(spec, **extra)
    head = _tilted_head(12.0)
    lesion = np.zeros(head.shape, dtype=bool)
    lesion[150:162, 104:116] = True  # in plain brain (0.5), left of the midline
    marked = np.where(lesion, np.float32(0.9), head)
    scan = _image(marked)
    carried = mask_to_model_input(lesion, scan, spec)
    assert carried.shape == (64, 64) and carried.dtype == np.float32
    assert carried.min() >= 0.0 and carried.max() <= 1.0
    diff = to_model_input(scan, spec)[..., 0] - to_model_input(_image(head), spec)[..., 0]
    assert carried.sum() == pytest.approx(diff.sum() / 0.4, rel=0.1)
    rows, cols = np.mgrid[:64, :64]
    for grid in (rows, cols):
        where_mask = (grid * carried).sum() / carried.sum()
        where_lesion = (grid * diff).sum() / diff.sum()
        assert abs(where_mask - where_lesion) < 0.5
    assert mask_to_model_input(np.zeros(head.shape, bool), scan, spec).max() == 0.0
    with pytest.raises(InputError, match="synthetic.png: the lesion mask is"):
        mask_to_model_input(lesion[:100], scan, spec)


def test_head_only_counts_nan_as_background() -> None:
    """A large NaN area beside the head (outside the scanner's field) is background: the head
    stays, the NaN area becomes air (were NaN tissue, it would be 'the head' and the real one
    would be erased)."""
    from hemo.config import HU_AIR
    from hemo.preprocess import head_only

    yy, xx = np.mgrid[:64, :64]
    hu = np.where((yy - 20) ** 2 + (xx - 20) ** 2 < 12**2, 40.0, -1000.0).astype(np.float32)
    hu[:, 40:] = np.nan  # 24 x 64 = 1536 pixels, more than the disc's ~450
    out = head_only(hu)
    assert out[20, 20] == 40.0 and np.all(out[:, 40:] == HU_AIR)
