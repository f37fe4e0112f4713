"""One base class that owns the whole class-activation-map pipeline.

The structure follows pytorch-grad-cam (``base_cam.py``) and MONAI
(``monai/visualize/class_activation_maps.py``):

1. forward through a *gradient model* ``inputs -> (target layer activations, logits)`` that shares
   the layers of the caller's model (built once per (model, layer), cached weakly on the model,
   never mutating it: no ``activation = None`` on the shared object);
2. pick the logit of the requested output (``any`` or a subtype, by name or index);
3. ``tf.GradientTape`` gradients of that logit with respect to the activations;
4. weighting -- the one step each method overrides (:meth:`BaseCAM.weights`);
5. weighted sum over channels and ReLU -> the raw map at the layer's resolution;
6. separately, upsampling to the input size (``cv2.resize``, ``INTER_LINEAR``) and min-max
   normalisation to [0, 1].

Gradients are taken on the logit (pre-sigmoid), as in Selvaraju et al. 2017, because the sigmoid
saturates for confident predictions and would flatten the map.

Thread safety: building the gradient model and tracing its ``tf.function`` happen under one lock;
the traced concrete function is then called without a lock (TensorFlow graph functions are
reentrant), so several threads may explain with one cached model at once.
"""

from __future__ import annotations

import abc
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from hemo.config import RSNA_LABELS

#: A raw map whose maximum (or range) is at most this is treated as flat: no spatial information.
FLAT_EPS = 1e-8
#: Rank of a spatial feature map ``(N, h, w, C)``: what a CAM target layer must output.
FEATURE_MAP_RANK = 4
#: Activations of the pre-activation Dense we know how to undo without mutating the layer.
_INVERTIBLE_ACTIVATIONS = frozenset({"sigmoid", "softmax", "linear"})


@dataclass(frozen=True)
class CamResult:
    """One class activation map.

    Attributes:
        heatmap: float32 (H, W) in [0, 1] at the model-input size, read-only. All zeros when flat.
        flat: True when the map carries no spatial information (zero or constant gradients, or a
            non-positive weighted sum everywhere); the heatmap is then all zeros.
        method: Registry name of the method (``"gradcam"``, ``"gradcam++"``, ``"hirescam"``).
        label: Name of the explained output (``"any"`` or a subtype), or its index as text.
        layer: Name of the target layer.
        logit: The explained logit (pre-sigmoid score).
        probability: ``sigmoid(logit)``.
    """

    heatmap: NDArray[np.float32]
    flat: bool
    method: str
    label: str
    layer: str
    logit: float
    probability: float

    @property
    def peak(self) -> tuple[int, int]:
        """(row, col) of the heatmap's maximum in input-image pixels (first one on ties)."""
        row, col = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        return int(row), int(col)


def find_cam_layer(model: Any) -> str:
    """Name of the last layer of ``model`` whose output is a spatial map ``(N, h, w, C)``.

    Used when neither the caller nor the model card names the target layer (the usual choice of
    keras-io's Grad-CAM example: the last convolutional block).

    Args:
        model: A built functional Keras model.

    Returns:
        The layer name.

    Raises:
        ValueError: When no layer outputs a 4-D tensor.
    """
    for layer in reversed(model.layers):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == FEATURE_MAP_RANK and layer is not model.layers[0]:
            return layer.name
    raise ValueError(
        f"model {model.name!r} has no layer with a (N, h, w, C) output; pass layer= explicitly"
    )


def default_cam_layer(model: Any) -> str:
    """The registered Grad-CAM layer of a hemo model, else :func:`find_cam_layer`."""
    from hemo.errors import ModelError
    from hemo.model import cam_layer_of

    try:
        return cam_layer_of(model)
    except ModelError:
        return find_cam_layer(model)


class _GradientFunction:
    """``x, label index -> (activations, gradients, logits)`` as one traced graph function.

    Hemo models go through :func:`hemo.model.logits_model` (a new model sharing the layers, outputs
    (activations, logits)). A model without a :data:`~hemo.model.LOGITS_LAYER` layer must end in a
    Dense layer; its logits are recomputed from that layer's input with its kernel and bias (read,
    never changed). Either way the caller's model is not modified.
    """

    def __init__(self, model: Any, layer_name: str) -> None:
        import keras

        from hemo.model import LOGITS_LAYER, logits_model

        _get_layer(model, layer_name)  # a clear error for an unknown layer
        dense = None
        if LOGITS_LAYER in {layer.name for layer in model.layers}:
            graph = logits_model(model, layer_name)
        else:
            dense = _final_dense(model, LOGITS_LAYER)
            outputs = [model.get_layer(layer_name).output, dense.input]
            inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
            graph = keras.Model(inputs, outputs, name=f"{model.name}_cam_{layer_name}")
        shape = tuple(model.inputs[0].shape)
        spec = tf.TensorSpec(shape=(None, *shape[1:]), dtype=tf.float32)
        index_spec = tf.TensorSpec(shape=(), dtype=tf.int32)

        def step(x: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                activations, logits = graph(x, training=False)
                if dense is not None:
                    logits = tf.matmul(logits, dense.kernel) + dense.bias
                activations = tf.cast(activations, tf.float32)
                logits = tf.cast(logits, tf.float32)
                chosen = tf.gather(logits, index, axis=-1)
            gradients = tape.gradient(chosen, activations)
            if gradients is None:  # the logit does not depend on the layer at all
                gradients = tf.zeros_like(activations)
            return activations, gradients, logits

        self.n_outputs = int(graph.outputs[1].shape[-1]) if dense is None else int(dense.units)
        self.input_shape = shape[1:]
        # Traced once, here (no autograph: the step has no Python control flow on tensors)
        self._concrete = tf.function(
            step, input_signature=[spec, index_spec], autograph=False
        ).get_concrete_function()

    def __call__(
        self, x: NDArray[np.float32], index: int
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        activations, gradients, logits = self._concrete(
            tf.constant(x, tf.float32), tf.constant(index, tf.int32)
        )
        return activations.numpy(), gradients.numpy(), logits.numpy()


def _get_layer(model: Any, name: str) -> Any:
    try:
        return model.get_layer(name)
    except ValueError as exc:
        raise ValueError(
            f"layer {name!r} not found in model {model.name!r}; "
            f"pass one of its layer names (e.g. {find_cam_layer(model)!r})"
        ) from exc


def _final_dense(model: Any, logits_layer: str) -> Any:
    import keras

    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if not isinstance(last, keras.layers.Dense) or activation not in _INVERTIBLE_ACTIVATIONS:
        raise ValueError(
            f"model {model.name!r} has no {logits_layer!r} layer and does not end in a Dense layer "
            f"with one of the activations {sorted(_INVERTIBLE_ACTIVATIONS)}; cannot reach its logits"
        )
    return last


# Cache: model -> {layer name -> gradient function}; weak so a dropped model frees its graph.
_CACHE: weakref.WeakKeyDictionary[Any, dict[str, _GradientFunction]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def gradient_function(model: Any, layer_name: str) -> _GradientFunction:
    """The cached gradient function of ``(model, layer_name)``, built once under a lock."""
    cached = _CACHE.get(model, {}).get(layer_name)
    if cached is not None:  # fast path: no lock once built
        return cached
    with _CACHE_LOCK:
        per_model = _CACHE.setdefault(model, {})
        if layer_name not in per_model:
            per_model[layer_name] = _GradientFunction(model, layer_name)
        return per_model[layer_name]


def resolve_label(label: str | int, n_outputs: int, labels: Sequence[str] | None = None) -> int:
    """Index of the output ``label`` names.

    Args:
        label: A label name (``"any"``, ``"subdural"``, ...) or an output index.
        n_outputs: Width of the logits layer.
        labels: The model's output names (``ModelCard.labels``). When omitted, the RSNA order
            (``any`` first, then the five subtypes) is assumed; ``"any"`` is output 0.

    Returns:
        The index into the logits.

    Raises:
        ValueError: When the label is unknown or the index is out of range.
    """
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if not 0 <= int(label) < n_outputs:
            raise ValueError(f"label index {label} out of range: the model has {n_outputs} outputs")
        return int(label)
    names = tuple(labels) if labels is not None else RSNA_LABELS[:n_outputs]
    if label not in names:
        raise ValueError(f"label {label!r} is not an output of this model; outputs: {list(names)}")
    return names.index(label)


def upsample(raw: NDArray[np.float32], size_hw: tuple[int, int]) -> NDArray[np.float32]:
    """Bilinear upsampling of a raw map (h, w) to ``size_hw`` = (H, W) (``cv2.INTER_LINEAR``)."""
    height, width = size_hw
    return cv2.resize(raw.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def normalise(cam: NDArray[np.float32]) -> tuple[NDArray[np.float32], bool]:
    """Min-max scale a map to [0, 1]; a map without range gives zeros and ``flat=True``.

    Args:
        cam: float (H, W), non-negative (after ReLU).

    Returns:
        (float32 (H, W) in [0, 1], flat flag).
    """
    cam = np.nan_to_num(cam.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(cam.min()), float(cam.max())
    if high <= FLAT_EPS or high - low <= FLAT_EPS:
        return np.zeros_like(cam, dtype=np.float32), True
    scaled = (cam - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32), False


class BaseCAM(abc.ABC):
    """Gradient-weighted class activation maps: the pipeline every method shares.

    Subclasses override :meth:`weights` only.

    Args:
        model: A built functional Keras model (never modified).
        layer: Name of the target layer; default: the registered CAM layer of a hemo model, else
            the last layer with a spatial output.
        labels: Output names in logit order (``ModelCard.labels``); default the RSNA order.
    """

    #: Registry name of the method; set by each subclass.
    name: ClassVar[str] = "base"

    def __init__(self, model: Any, layer: str | None = None, labels: Sequence[str] | None = None):
        self.model = model
        self.layer = layer or default_cam_layer(model)
        self.labels = None if labels is None else tuple(labels)
        self._function = gradient_function(model, self.layer)

    @property
    def input_shape(self) -> tuple[Any, ...]:
        """Shape of one model input, (H, W, C) (``None`` where the model accepts any size)."""
        return self._function.input_shape

    @abc.abstractmethod
    def weights(
        self, activations: NDArray[np.float32], gradients: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        """Per-element weights of the activations, broadcastable to ``(N, h, w, C)``.

        Args:
            activations: float32 (N, h, w, C) target-layer activations A.
            gradients: float32 (N, h, w, C) d logit / d A.

        Returns:
            float32 weights, e.g. (N, 1, 1, C) per-channel or (N, h, w, C) per-element.
        """

    def logits(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """All logits of a batch through the cached graph: (N, H, W, C) -> float32 (N, outputs).

        Reuses the traced gradient function (the backward pass stops at the target layer, so it
        costs little) instead of tracing a second graph.
        """
        return self._function(_as_batch(x, self.input_shape), 0)[2]

    def raw_maps(
        self, x: NDArray[np.float32], label: str | int = "any"
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], str]:
        """Raw maps at the layer's resolution, before upsampling and normalising.

        Args:
            x: float32 (N, H, W, C) model input (not modified).
            label: Output to explain, by name or index.

        Returns:
            (float32 (N, h, w) non-negative maps, float32 (N,) chosen logits, label name).
        """
        index = resolve_label(label, self._function.n_outputs, self.labels)
        activations, gradients, logits = self._function(x, index)
        activations = np.nan_to_num(activations, nan=0.0, posinf=0.0, neginf=0.0)
        gradients = np.nan_to_num(gradients, nan=0.0, posinf=0.0, neginf=0.0)
        weighted = np.sum(self.weights(activations, gradients) * activations, axis=-1)
        maps = np.maximum(weighted, 0.0).astype(np.float32)
        # No gradient at all means no explanation, even if activations are positive.
        no_gradient = ~np.any(gradients != 0, axis=(1, 2, 3))
        maps[no_gradient] = 0.0
        names = self.labels if self.labels is not None else RSNA_LABELS
        name = names[index] if index < len(names) else str(index)
        return maps, logits[:, index].astype(np.float32), name

    def __call__(self, x: NDArray, label: str | int = "any") -> list[CamResult]:
        """Explain a batch.

        Args:
            x: float (N, H, W, C) or one (H, W, C) model input; never modified.
            label: Output to explain, by name (``"any"``, a subtype) or index.

        Returns:
            One :class:`CamResult` per input, heatmaps at (H, W).
        """
        batch = _as_batch(x, self.input_shape)
        maps, logits, name = self.raw_maps(batch, label)
        results = []
        for raw, logit in zip(maps, logits, strict=True):
            heatmap, flat = normalise(upsample(raw, batch.shape[1:3]))
            heatmap.setflags(write=False)
            results.append(
                CamResult(
                    heatmap=heatmap,
                    flat=flat,
                    method=self.name,
                    label=name,
                    layer=self.layer,
                    logit=float(logit),
                    probability=float(1.0 / (1.0 + np.exp(-np.float64(logit)))),
                )
            )
        return results


def _as_batch(x: NDArray, input_shape: tuple[Any, ...]) -> NDArray[np.float32]:
    """A float32 copy of ``x`` as (N, H, W, C), checked against the model's input shape."""
    array = np.array(x, dtype=np.float32, copy=True)
    if array.ndim == len(input_shape):
        array = array[np.newaxis]
    if array.ndim != len(input_shape) + 1:
        raise ValueError(
            f"input has shape {np.shape(x)}; expected one {tuple(input_shape)} input or a batch"
        )
    for got, want in zip(array.shape[1:], input_shape, strict=True):
        if want is not None and got != want:
            raise ValueError(
                f"input has shape {np.shape(x)}; the model expects (N, {', '.join(map(str, input_shape))})"
            )
    return array
