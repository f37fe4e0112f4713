"""Tests of hemo.cam.overlay: shapes, dtypes, purity, colormaps, contour and box."""

from __future__ import annotations

import numpy as np
import pytest

from hemo.cam.overlay import BOX_RGB, COLORMAPS, CONTOUR_RGB, colorize, overlay, region_box


@pytest.fixture
def gray() -> np.ndarray:
    return np.linspace(0.0, 1.0, 48 * 64, dtype=np.float32).reshape(48, 64)


@pytest.fixture
def heat() -> np.ndarray:
    heatmap = np.zeros((48, 64), np.float32)
    heatmap[10:20, 30:50] = 1.0
    return heatmap


@pytest.mark.parametrize("kind", ["float_gray", "uint8_gray", "float_rgb", "uint8_rgb", "gray_1ch"])
def test_overlay_shape_and_dtype(kind: str, gray: np.ndarray, heat: np.ndarray) -> None:
    """Every accepted image layout gives uint8 (H, W, 3)."""
    images = {
        "float_gray": gray,
        "uint8_gray": (gray * 255).astype(np.uint8),
        "float_rgb": np.stack([gray] * 3, axis=-1),
        "uint8_rgb": np.stack([(gray * 255).astype(np.uint8)] * 3, axis=-1),
        "gray_1ch": gray[..., None],
    }
    out = overlay(images[kind], heat)
    assert out.shape == (48, 64, 3)
    assert out.dtype == np.uint8


def test_overlay_is_pure(gray: np.ndarray, heat: np.ndarray) -> None:
    """Inputs are unchanged and the output is a new array."""
    gray_before, heat_before = gray.copy(), heat.copy()
    out = overlay(gray, heat, contour_level=0.5, box=True)
    np.testing.assert_array_equal(gray, gray_before)
    np.testing.assert_array_equal(heat, heat_before)
    assert not np.shares_memory(out, gray)


def test_alpha_zero_is_the_image(gray: np.ndarray, heat: np.ndarray) -> None:
    """With alpha 0 the result is the gray image as RGB."""
    out = overlay(gray, heat, alpha=0.0)
    expected = np.rint(gray * 255).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], expected)


def test_alpha_one_is_the_colormap(gray: np.ndarray, heat: np.ndarray) -> None:
    """With alpha 1 the result is the colorized heatmap."""
    np.testing.assert_array_equal(overlay(gray, heat, alpha=1.0), colorize(heat, "jet"))


def test_jet_hot_region_is_red(heat: np.ndarray) -> None:
    """jet maps 1.0 to dark red and 0.0 to dark blue (RGB order)."""
    colors = colorize(heat, "jet")
    np.testing.assert_array_equal(colors[15, 40], (128, 0, 0))
    np.testing.assert_array_equal(colors[0, 0], (0, 0, 128))


def test_heatmap_resized_to_image(gray: np.ndarray) -> None:
    """A heatmap of another size is drawn over the whole image."""
    small = np.zeros((12, 16), np.float32)
    small[:, 8:] = 1.0
    out = overlay(gray, small, alpha=1.0)
    assert out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out[24, 60], (128, 0, 0))  # right half red
    np.testing.assert_array_equal(out[24, 2], (0, 0, 128))  # left half blue


@pytest.mark.parametrize("name", sorted(COLORMAPS))
def test_every_colormap(name: str, gray: np.ndarray, heat: np.ndarray) -> None:
    """Each named colormap renders and changes the hot region."""
    out = overlay(gray, heat, alpha=1.0, colormap=name)
    assert not np.array_equal(out[15, 40], out[0, 0])


def test_contour_drawn_at_region_edge(gray: np.ndarray, heat: np.ndarray) -> None:
    """The contour is drawn on the region's border, not inside it."""
    out = overlay(np.zeros_like(gray), heat, alpha=0.0, contour_level=0.5)
    np.testing.assert_array_equal(out[10, 35], CONTOUR_RGB)
    np.testing.assert_array_equal(out[15, 40], (0, 0, 0))


def test_box_around_region(gray: np.ndarray) -> None:
    """The box encloses the region above the level."""
    blob = np.zeros((48, 64), np.float32)
    blob[12, 20] = blob[30, 40] = 0.9
    out = overlay(np.zeros_like(gray), blob, alpha=0.0, box=True)
    assert region_box(blob, 0.5) == (12, 31, 20, 41)
    np.testing.assert_array_equal(out[12, 30], BOX_RGB)
    np.testing.assert_array_equal(out[20, 40], BOX_RGB)
    np.testing.assert_array_equal(out[20, 30], (0, 0, 0))


def test_box_on_flat_map_draws_nothing(gray: np.ndarray) -> None:
    """A flat (all-zero) map gives no box and no contour."""
    zeros = np.zeros_like(gray)
    out = overlay(zeros, zeros, alpha=0.0, contour_level=0.5, box=True)
    assert region_box(zeros, 0.5) is None
    assert not out.any()


def test_unknown_colormap(gray: np.ndarray, heat: np.ndarray) -> None:
    """An unknown colormap name is refused with the known names."""
    with pytest.raises(ValueError, match=r"unknown colormap 'rainbowish'; choose one of \["):
        overlay(gray, heat, colormap="rainbowish")


def test_bad_alpha(gray: np.ndarray, heat: np.ndarray) -> None:
    """Alpha outside [0, 1] is refused."""
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]; got 1.5"):
        overlay(gray, heat, alpha=1.5)


def test_bad_image_shape(heat: np.ndarray) -> None:
    """A 4-channel image is refused."""
    with pytest.raises(ValueError, match=r"image must be \(H, W\), \(H, W, 1\) or \(H, W, 3\)"):
        overlay(np.zeros((48, 64, 4), np.float32), heat)
