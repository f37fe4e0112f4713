"""Explanations: the Grad-CAM family, overlays and localisation/faithfulness scores.

``overlay`` and ``metrics`` are numpy/OpenCV only. The methods need TensorFlow, which is imported
on first use of :func:`explain`, :data:`METHODS` or a method class (PEP 562 ``__getattr__``), so
pages that only draw overlays stay light.

Example:
    >>> from hemo.cam import explain, overlay
    >>> result = explain(model, x, method="gradcam", label="any")   # x: (H, W, C) float32
    >>> picture = overlay(x[..., 0], result.heatmap, alpha=0.4)      # uint8 (H, W, 3)
"""

from __future__ import annotations

from typing import Any

from hemo.cam.overlay import COLORMAPS, overlay

__all__ = [
    "COLORMAPS",
    "METHODS",
    "BaseCAM",
    "CamResult",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "explain",
    "overlay",
]

_LAZY = {
    "METHODS": "hemo.cam.registry",
    "explain": "hemo.cam.registry",
    "get_method": "hemo.cam.registry",
    "BaseCAM": "hemo.cam.base",
    "CamResult": "hemo.cam.base",
    "GradCAM": "hemo.cam.gradcam",
    "GradCAMPlusPlus": "hemo.cam.gradcampp",
    "HiResCAM": "hemo.cam.hirescam",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hemo.cam' has no attribute {name!r}")
