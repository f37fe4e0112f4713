"""The registry of CAM methods and :func:`explain`, the one call the rest of hemo uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hemo.cam.base import BaseCAM, CamResult
from hemo.cam.gradcam import GradCAM
from hemo.cam.gradcampp import GradCAMPlusPlus
from hemo.cam.hirescam import HiResCAM

#: Method name -> class. A new method is one file with a ``BaseCAM`` subclass and one entry here.
METHODS: dict[str, type[BaseCAM]] = {
    GradCAM.name: GradCAM,
    GradCAMPlusPlus.name: GradCAMPlusPlus,
    HiResCAM.name: HiResCAM,
}


def get_method(method: str) -> type[BaseCAM]:
    """The class registered as ``method``.

    Raises:
        ValueError: When ``method`` is not in :data:`METHODS`.
    """
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown CAM method {method!r}; choose one of {sorted(METHODS)}"
        ) from None


def explain(
    model: Any,
    x: NDArray,
    method: str = "gradcam",
    label: str | int = "any",
    layer: str | None = None,
    labels: Sequence[str] | None = None,
) -> CamResult | list[CamResult]:
    """Explain one output of ``model`` on the exact input it sees.

    Args:
        model: A built functional Keras model (e.g. from ``hemo.model.load_model``); never modified.
        x: float32 model input, one (H, W, C) or a batch (N, H, W, C), as produced by
            ``hemo.preprocess.to_model_input``; never modified.
        method: A key of :data:`METHODS`.
        label: Output to explain: ``"any"``, a subtype name, or an output index.
        layer: Target layer name (``ModelCard.cam_layer``); default: the last spatial layer.
        labels: Output names in logit order (``ModelCard.labels``); default: RSNA order.

    Returns:
        A :class:`CamResult` for one input; a list of them, in order, for a batch.

    Raises:
        ValueError: Unknown method, label or layer, or an input of the wrong shape.
    """
    explainer = get_method(method)(model, layer=layer, labels=labels)
    results = explainer(x, label=label)
    return results[0] if np.ndim(x) == len(explainer.input_shape) else results
