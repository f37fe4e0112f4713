"""Heatmap over image: a pure function (inputs never modified), OpenCV colormaps.

Pixels are RGB throughout (OpenCV's colormaps come out BGR and are converted once).
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

#: Colormap name -> OpenCV constant (``cv2.applyColorMap``).
COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "cividis": cv2.COLORMAP_CIVIDIS,
    "hot": cv2.COLORMAP_HOT,
    "bone": cv2.COLORMAP_BONE,
    "rainbow": cv2.COLORMAP_RAINBOW,
}
DEFAULT_ALPHA = 0.4
DEFAULT_COLORMAP = "jet"
#: Level used for the bounding box when ``box=True`` and no contour level is given.
DEFAULT_BOX_LEVEL = 0.5
#: Contour and box colour (RGB) and line thickness in pixels.
CONTOUR_RGB = (255, 255, 255)
BOX_RGB = (0, 255, 0)
LINE_PX = 1
_UINT8_MAX = 255


def to_rgb_uint8(image: NDArray) -> NDArray[np.uint8]:
    """A new uint8 (H, W, 3) RGB copy of a gray or RGB image.

    Args:
        image: (H, W) or (H, W, 1|3) gray/RGB, either float in [0, 1] (clipped) or uint8.

    Returns:
        uint8 (H, W, 3).

    Raises:
        ValueError: On another shape.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3); got {array.shape}")
    if array.dtype != np.uint8:
        finite = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        array = np.rint(np.clip(finite, 0.0, 1.0) * _UINT8_MAX).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., np.newaxis], 3, axis=2)
    return np.array(array, dtype=np.uint8, copy=True)


def colorize(heatmap: NDArray, colormap: str = DEFAULT_COLORMAP) -> NDArray[np.uint8]:
    """uint8 (H, W, 3) RGB rendering of a heatmap (H, W) in [0, 1] with a named colormap.

    Raises:
        ValueError: On an unknown colormap name or a heatmap that is not 2-D.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {sorted(COLORMAPS)}")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (H, W); got {heat.shape}")
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    levels = np.rint(heat * _UINT8_MAX).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def region_box(heatmap: NDArray, level: float) -> tuple[int, int, int, int] | None:
    """Bounding box of the pixels with ``heatmap >= level``, or None when there are none.

    Returns:
        (row0, row1, col0, col1), half-open, in heatmap pixels.
    """
    rows, cols = np.nonzero(np.asarray(heatmap) >= level)
    if rows.size == 0:
        return None
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def overlay(
    image: NDArray,
    heatmap: NDArray,
    alpha: float = DEFAULT_ALPHA,
    colormap: str = DEFAULT_COLORMAP,
    contour_level: float | None = None,
    box: bool = False,
) -> NDArray[np.uint8]:
    """Blend a heatmap over an image; optionally outline a level and box the region above it.

    ``out = (1 - alpha) * image + alpha * colormap(heatmap)``, uniformly over the image (as
    pytorch-grad-cam's ``show_cam_on_image``). A heatmap of another size is resized to the image
    (``cv2.INTER_LINEAR``), so a map at model-input size can be drawn over the display image.

    Args:
        image: Gray (H, W) float in [0, 1] or uint8, or RGB (H, W, 3) float/uint8; not modified.
        heatmap: float (h, w) in [0, 1] (e.g. ``CamResult.heatmap``); not modified.
        alpha: Opacity of the heatmap, in [0, 1].
        colormap: A key of :data:`COLORMAPS`.
        contour_level: When given, draw the contour of ``heatmap >= level`` (``cv2.findContours``).
        box: Draw the bounding box of ``heatmap >= level`` (``contour_level`` or
            :data:`DEFAULT_BOX_LEVEL`); nothing is drawn when no pixel reaches the level.

    Returns:
        A new uint8 (H, W, 3) RGB image.

    Raises:
        ValueError: Alpha or level outside [0, 1], unknown colormap, or bad shapes.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    if contour_level is not None and not 0.0 <= contour_level <= 1.0:
        raise ValueError(f"contour_level must be in [0, 1]; got {contour_level}")
    base = to_rgb_uint8(image)
    height, width = base.shape[:2]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (H, W); got {heat.shape}")
    if heat.shape != (height, width):
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    colors = colorize(heat, colormap)
    out = cv2.addWeighted(base, 1.0 - alpha, colors, alpha, 0.0)
    if contour_level is not None:
        region = (heat >= contour_level).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, CONTOUR_RGB, LINE_PX)
    if box:
        level = DEFAULT_BOX_LEVEL if contour_level is None else contour_level
        found = region_box(heat, level)
        if found is not None:
            row0, row1, col0, col1 = found
            cv2.rectangle(out, (col0, row0), (col1 - 1, row1 - 1), BOX_RGB, LINE_PX)
    return out
