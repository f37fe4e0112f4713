"""The architecture registry as plain data (no Keras import).

What a page, a config check or a card check needs to know about an architecture (its name, its
Grad-CAM layer, the input range its backbone expects) lives here, so that the Training page, the
config validation of ``hemo train`` and ``hemo crossval`` start without TensorFlow (about 2.5 s
and 600 MB). :mod:`hemo.model` builds the networks from these entries and re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The compact CNN's last feature map (1/8 of the input size), its Grad-CAM target.
COMPACT_CAM_LAYER = "compact_features"
#: Global pooling of the head: the feature map's mean (the default) or its maximum (one strong
#: local response, e.g. a small bleed, decides). :data:`hemo.model.HEAD_POOLS` maps each to its
#: Keras layer.
HEAD_POOL_NAMES: tuple[str, ...] = ("average", "max")
#: The architecture a new run uses when none is named (fast on CPU).
DEFAULT_ARCHITECTURE = "compact"


@dataclass(frozen=True)
class Architecture:
    """One entry of the architecture registry.

    Attributes:
        name: Registry key.
        cam_layer: Name of the Grad-CAM target layer (last spatial feature map).
        preprocess: How [0, 1] inputs are mapped to what the backbone expects: ``"caffe"``,
            ``"torch"``, ``"efficientnet"`` ([0, 255]), ``"tf"`` ([-1, 1]) or ``"none"``.
        application: ``keras.applications`` constructor name, or ``None`` for our own CNN.
        min_size: Smallest input size in pixels the backbone accepts.
    """

    name: str
    cam_layer: str
    preprocess: str
    application: str | None
    min_size: int = 32


ARCHITECTURES: dict[str, Architecture] = {
    "resnet50": Architecture("resnet50", "conv5_block3_out", "caffe", "ResNet50"),
    "efficientnet_b0": Architecture(
        "efficientnet_b0", "top_activation", "efficientnet", "EfficientNetB0"
    ),
    "densenet121": Architecture("densenet121", "relu", "torch", "DenseNet121"),
    "mobilenet_v2": Architecture("mobilenet_v2", "out_relu", "tf", "MobileNetV2"),
    DEFAULT_ARCHITECTURE: Architecture(
        DEFAULT_ARCHITECTURE, COMPACT_CAM_LAYER, "none", None, min_size=16
    ),
}
CAM_LAYERS: dict[str, str] = {name: arch.cam_layer for name, arch in ARCHITECTURES.items()}


def architecture_names() -> list[str]:
    """Registry keys, the default (compact, fast on CPU) first, then in registry order."""
    return sorted(ARCHITECTURES, key=lambda name: name != DEFAULT_ARCHITECTURE)
