"""Tiny compact models saved with their cards, shared by the evaluation and prediction tests."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

TINY_SIZE = 32
DEFAULT_THRESHOLD = 0.5


@cache
def tiny_model_path(
    mode: str = "display", labels: Sequence[str] = ("any",), threshold: float = DEFAULT_THRESHOLD
) -> Path:
    """Build, save and return ``NAME.keras`` of a 32 px compact model (cached per process).

    Args:
        mode: ``"display"`` (1 channel grayscale) or ``"hu"`` (3 HU windows).
        labels: Output labels (a tuple, so the call can be cached).
        threshold: Operating threshold written in the card.
    """
    import keras

    from hemo.model import CAM_LAYERS, ModelCard, build_model, save_model
    from hemo.preprocess import InputSpec

    keras.utils.set_random_seed(0)
    if mode == "display":
        spec = InputSpec(size=TINY_SIZE, mode="display", channels=1)
    else:
        spec = InputSpec(size=TINY_SIZE, mode="hu")
    model = build_model("compact", spec, list(labels))
    name = f"tiny_{mode}_{len(labels)}"
    card = ModelCard(
        name=name,
        architecture="compact",
        input_spec=spec,
        labels=tuple(labels),
        threshold=threshold,
        cam_layer=CAM_LAYERS["compact"],
    )
    folder = Path(tempfile.mkdtemp(prefix="hemo-tiny-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the test process's own copy
    return save_model(model, folder / f"{name}.keras", card)
