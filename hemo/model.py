"""One model builder over an architecture registry, model cards, and safe save/load.

Every model is a flat functional graph (a ``keras.applications`` backbone is built with
``input_tensor=`` so its layers live in the outer graph, never as a nested model)::

    input (size, size, C) in [0, 1]
      -> [gray_to_rgb]            1-channel spec on an ImageNet backbone: repeat to 3 channels
      -> [imagenet_preprocess]    each application's expected input range (Rescaling/Normalization)
      -> backbone                 last feature map named CAM_LAYERS[arch] (Grad-CAM target)
      -> head_pool -> head_dropout -> logits (Dense, no activation) -> probabilities (sigmoid)

A model is saved as ``NAME.keras`` with a JSON :class:`ModelCard` beside it (``NAME.json``), and
optionally ``NAME.h5`` written by Keras (the published method shipped ``.h5``). Loading goes
through ``keras.saving.load_model(safe_mode=True)``; pickles are refused; the card is checked
against the graph, so a model can never be fed differently from how it was trained.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import layers

from hemo import __version__
from hemo.architectures import (
    ARCHITECTURES,
    CAM_LAYERS,
    COMPACT_CAM_LAYER,
    HEAD_POOL_NAMES,
    Architecture,
)
from hemo.errors import ConfigError, ModelError
from hemo.modelfile import (
    WEIGHTS_IMAGENET,
    check_model_file,
    model_paths,
    require_card,
    weights_option,
)
from hemo.preprocess import InputSpec

if TYPE_CHECKING:
    from hemo.anatomy import SliceRange
    from hemo.density import DensityBlend
    from hemo.referral import ReferralBand

log = logging.getLogger(__name__)

# Layer names ------------------------------------------------------------------------------------
LOGITS_LAYER = "logits"
PROBS_LAYER = "probabilities"
INPUT_LAYER = "image"
GRAY_TO_RGB_LAYER = "gray_to_rgb"
PREPROCESS_LAYER = "imagenet_preprocess"
HEAD_POOL_LAYER = "head_pool"
HEAD_DROPOUT_LAYER = "head_dropout"
#: The training-only lesion map on the CAM layer (:func:`with_mask_head`); never saved.
MASK_HEAD_LAYER = "mask_head"
#: Keras layer of each global pooling of the head (:data:`hemo.architectures.HEAD_POOL_NAMES`).
HEAD_POOLS = dict(
    zip(HEAD_POOL_NAMES, (layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D), strict=True)
)
#: Layers that belong to the classification head (trainable in both transfer-learning phases).
HEAD_LAYERS: tuple[str, ...] = (HEAD_POOL_LAYER, HEAD_DROPOUT_LAYER, LOGITS_LAYER, PROBS_LAYER)

# Weights ----------------------------------------------------------------------------------------
#: Seconds a blocked socket may wait while Keras fetches ImageNet weights (offline: fail fast).
DOWNLOAD_SOCKET_TIMEOUT_S = 15.0
#: Batch-norm momentum of an application backbone built from random weights. Keras keeps 0.999
#: (MobileNetV2) or 0.99 (the others), made for long trainings or for fine-tuning ImageNet
#: statistics; from scratch on a small dataset (7 steps an epoch for the 140 Kaggle images) the
#: inference statistics then stay near their 0/1 start for hundreds of steps, and deep backbones
#: give every image the same output (chance AUC out of fold). 0.9 (PyTorch's default) follows the
#: batches within about 50 steps.
RANDOM_INIT_BN_MOMENTUM = 0.9
#: Longest Keras loading error kept in a ModelError message (one line for the CLI and pages).
MAX_REASON_CHARS = 300

# ImageNet preprocessing constants (keras.applications.imagenet_utils) ---------------------------
PIXEL_MAX = 255.0
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)
RGB_CHANNELS = 3

# Compact CNN ------------------------------------------------------------------------------------
#: Stem filters (3x3 conv, stride 2: 1/2 of the input size).
COMPACT_STEM = 32
#: Stages as (filters of each conv, 2x2 max pool before the stage): 1/4, 1/8, then 1/8 again,
#: so the Grad-CAM layer keeps 1/8 of the input size (16x16 at 128 px, 32x32 at 256 px).
COMPACT_STAGES: tuple[tuple[tuple[int, ...], bool], ...] = (
    ((64,), True),
    ((128, 128), True),
    ((256, 256), False),
)
COMPACT_KERNEL = 3
COMPACT_WEIGHT_DECAY = 1e-4
#: Ensembles (:func:`merge_ensemble`): member layer-name prefix, fewest members, architecture.
ENSEMBLE_PREFIX = "m{member}_"
MIN_ENSEMBLE = 2
ENSEMBLE_ARCHITECTURE = "compact"


@dataclass(frozen=True)
class ModelCard:
    """What a saved model is, how to feed it, and how well it did (``NAME.json``).

    Attributes:
        name: Model name (file stem).
        architecture: Key of :data:`ARCHITECTURES`.
        input_spec: How inputs were preprocessed in training; prediction uses the same.
        labels: Output labels, in output order (``("any",)`` or ``config.RSNA_LABELS``).
        threshold: Operating threshold on P(any), chosen on validation data.
        cam_layer: Grad-CAM target layer name in the graph.
        metrics: Metrics with the data they were measured on (e.g. ``{"test": {...}}``).
        training: Training summary (data, seed, epochs, run name, init weights).
        hemo_version: Version of hemo that wrote the card.
        slice_range: :meth:`hemo.anatomy.SliceRange.to_dict` of the training images: slices
            and images outside it are marked, and left out of series verdicts. ``None`` (cards
            written before it, or no image measured): every slice counts.
        referral: :meth:`hemo.referral.ReferralBand.to_dict`: predictions this close to the
            threshold are flagged ``uncertain`` (refer to a reader), chosen on the same
            validation predictions as the threshold. ``None`` (cards written before it, or no
            band reached its target): nothing is flagged.
        density: :meth:`hemo.density.DensityBlend.to_dict`: P(any) is the network's blended
            with a regression over density features measured on the input (the threshold
            applies to the blend). ``None`` (cards written before it): the network's alone.
    """

    name: str
    architecture: str
    input_spec: InputSpec
    labels: tuple[str, ...]
    threshold: float = 0.5
    cam_layer: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    hemo_version: str = __version__
    slice_range: dict[str, Any] | None = None
    referral: dict[str, Any] | None = None
    density: dict[str, Any] | None = None

    def parse_density(self) -> DensityBlend | None:
        """The card's :class:`hemo.density.DensityBlend`, or ``None``."""
        from hemo.density import DensityBlend

        if self.density is None:
            return None
        try:
            return DensityBlend.from_dict(self.density)
        except ConfigError as exc:
            raise ModelError(f"model card's density entry: {exc}") from exc

    def parse_referral(self) -> ReferralBand | None:
        """The card's :class:`hemo.referral.ReferralBand`, or ``None``."""
        from hemo.referral import ReferralBand

        return (
            None if self.referral is None else ReferralBand.from_dict(self.referral, self.threshold)
        )

    def parse_slice_range(self) -> SliceRange | None:
        """The card's :class:`hemo.anatomy.SliceRange`, or ``None``."""
        from hemo.anatomy import SliceRange

        return None if self.slice_range is None else SliceRange.from_dict(self.slice_range)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dictionary (the InputSpec as its own dict)."""
        data = dataclasses.asdict(self)
        data["input_spec"] = self.input_spec.to_dict()
        data["labels"] = list(self.labels)
        return data

    def to_json(self) -> str:
        """The card as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, default=_json_default)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Card from :meth:`to_dict` output; unknown keys are ignored (newer hemo versions)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        missing = {"name", "architecture", "input_spec", "labels"} - values.keys()
        if missing:
            raise ModelError(f"model card lacks the field(s) {sorted(missing)}")
        for key in ("name", "architecture", "cam_layer", "hemo_version"):
            if key in values and not isinstance(values[key], str):
                raise ModelError(f"model card's {key} must be text, got {values[key]!r:.80}")
        labels = values["labels"]
        if (
            not isinstance(labels, list)
            or not labels
            or not all(isinstance(x, str) for x in labels)
        ):
            raise ModelError(f"model card's labels must be a list of names, got {labels!r:.80}")
        if not isinstance(values["input_spec"], dict):
            raise ModelError(
                f"model card's input_spec must be an object, got {values['input_spec']!r:.80}"
            )
        try:
            values["input_spec"] = InputSpec.from_dict(values["input_spec"])
        except (ConfigError, TypeError, ValueError) as exc:
            raise ModelError(f"model card's input_spec is malformed: {exc}") from exc
        values["labels"] = tuple(labels)
        threshold = values.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ModelError(f"model card's threshold must be a number, got {threshold!r:.80}")
        values["threshold"] = float(threshold)
        card = cls(**values)
        card.parse_slice_range()  # a malformed range fails at load, not at the first series
        card.parse_referral()
        card.parse_density()
        return card

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Card from JSON text written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"model card is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise ModelError("model card is not a card: its JSON nests too deeply") from exc
        if not isinstance(data, dict):
            raise ModelError("model card must be a JSON object")
        return cls.from_dict(data)


def _json_default(value: Any) -> Any:
    """Serialise numpy scalars/arrays and paths inside card metrics."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def spec_channels(spec: InputSpec) -> int:
    """Number of channels ``to_model_input`` produces for ``spec`` (one per HU window)."""
    return int(spec.input_shape[-1])


# Building ---------------------------------------------------------------------------------------
def build_model(
    arch: str,
    spec: InputSpec,
    labels: Sequence[str],
    weights: str | os.PathLike | None = None,
    dropout: float = 0.2,
    *,
    alpha: float = 1.0,
    pool: str = "average",
) -> keras.Model:
    """Build an uncompiled classifier: (N, size, size, C) in [0, 1] -> (N, len(labels)) sigmoid.

    Args:
        arch: Key of :data:`ARCHITECTURES`.
        spec: Input specification; fixes the input shape.
        labels: Output labels (one sigmoid each).
        weights: ``None``/``"none"`` (random init), ``"imagenet"`` (Keras download, applications
            only), a ``.weights.h5`` file of a model with the same architecture, spec and labels,
            or a legacy ``.h5`` backbone weights file for the application.
        dropout: Dropout rate before the logits.
        alpha: Width multiplier of ``mobilenet_v2`` (ImageNet weights exist for 0.35-1.4).
        pool: Global pooling of the head, a key of :data:`HEAD_POOLS`.

    Returns:
        A flat functional ``keras.Model`` named ``hemo_<arch>``.

    Raises:
        ModelError: Unknown architecture, bad weights option, input too small, offline
            ImageNet download, or a weights file that does not fit.
    """
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    entry = ARCHITECTURES[arch]
    if pool not in HEAD_POOLS:
        raise ModelError(f"unknown head pooling {pool!r}; choose one of {sorted(HEAD_POOLS)}")
    if not labels:
        raise ModelError("a model needs at least one output label")
    if spec.size < entry.min_size:
        raise ModelError(
            f"input size {spec.size} px is below the {entry.min_size} px {arch} accepts"
        )
    weights_kind, weights_path = weights_option(weights)
    if weights_kind == WEIGHTS_IMAGENET and entry.application is None:
        raise ModelError(
            f"no ImageNet weights for the {arch!r} architecture; use --weights none or "
            "--init models/X.keras"
        )
    # Input in [0, 1], channels as the spec produces them
    channels = spec_channels(spec)
    inputs = keras.Input(shape=(spec.size, spec.size, channels), name=INPUT_LAYER)
    # Backbone: a flat graph ending at the Grad-CAM layer
    if entry.application is None:
        features = _compact_backbone(inputs)
    else:
        backbone_weights: str | Path | None = None  # random; a whole-model file loads below
        if weights_kind == "backbone":
            backbone_weights = weights_path
        elif weights_kind == WEIGHTS_IMAGENET:
            backbone_weights = WEIGHTS_IMAGENET
        features = _application_backbone(entry, inputs, backbone_weights, alpha)
    # Head: pool, dropout, logits, sigmoid
    x = HEAD_POOLS[pool](name=HEAD_POOL_LAYER)(features)
    x = layers.Dropout(dropout, name=HEAD_DROPOUT_LAYER)(x)
    logits = layers.Dense(len(labels), name=LOGITS_LAYER)(x)
    probs = layers.Activation("sigmoid", name=PROBS_LAYER, dtype="float32")(logits)
    model = keras.Model(inputs, probs, name=f"hemo_{arch}")
    # Whole-model weights file
    if weights_kind == "model":
        try:
            model.load_weights(weights_path)
        except (ValueError, OSError, KeyError) as exc:
            raise ModelError(
                f"weights do not fit a {arch} model with input {spec.size}x{spec.size}x"
                f"{channels} and {len(labels)} outputs: {exc}",
                source=weights_path,
            ) from exc
    return model


def merge_ensemble(members: Sequence[keras.Model], cards: Sequence[ModelCard]) -> keras.Model:
    """One flat model that computes the mean of its members' logits (compact CNNs).

    Every member's backbone is rebuilt in one graph with the prefix ``m<i>_`` on its layer names
    and its weights copied; their last feature maps are concatenated into the layer
    :data:`COMPACT_CAM_LAYER` (so Grad-CAM, :func:`logits_model` and the card work as for one
    model), then the usual head: pooling, dropout, ``logits``, ``probabilities``. The logits
    layer holds every member's kernel stacked and divided by the number of members, and the mean
    of their biases: global pooling is per channel, so its output is exactly the mean of the
    members' logits (soft voting on the logit scale).

    Args:
        members: Two or more trained compact models of one input spec, labels and head pooling.
        cards: Their cards, in the same order.

    Returns:
        The merged, uncompiled ``keras.Model`` named ``hemo_compact_ensemble<N>``.

    Raises:
        ModelError: Fewer than two members, another architecture, or members that differ in
            input spec, labels or head pooling.
    """
    if len(members) < MIN_ENSEMBLE or len(members) != len(cards):
        raise ModelError(f"an ensemble needs at least {MIN_ENSEMBLE} members, each with its card")
    first = cards[0]
    if any(card.architecture != ENSEMBLE_ARCHITECTURE for card in cards):
        raise ModelError(
            f"ensembles are built from {ENSEMBLE_ARCHITECTURE!r} models only, got "
            f"{sorted({card.architecture for card in cards})}"
        )
    for card in cards[1:]:
        if card.input_spec != first.input_spec or tuple(card.labels) != tuple(first.labels):
            raise ModelError(
                f"ensemble members differ: {card.name!r} has input {card.input_spec} and labels "
                f"{list(card.labels)}, {first.name!r} has {first.input_spec} and "
                f"{list(first.labels)}"
            )
    pools = {type(member.get_layer(HEAD_POOL_LAYER)) for member in members}
    if len(pools) != 1:
        raise ModelError("ensemble members differ in their head pooling (average vs max)")
    inputs = keras.Input(shape=tuple(members[0].inputs[0].shape[1:]), name=INPUT_LAYER)
    features = [
        _compact_backbone(inputs, prefix=ENSEMBLE_PREFIX.format(member=i))
        for i in range(len(members))
    ]
    joined = layers.Concatenate(axis=-1, name=COMPACT_CAM_LAYER)(features)
    x = pools.pop()(name=HEAD_POOL_LAYER)(joined)
    x = layers.Dropout(members[0].get_layer(HEAD_DROPOUT_LAYER).rate, name=HEAD_DROPOUT_LAYER)(x)
    logits = layers.Dense(len(first.labels), name=LOGITS_LAYER)(x)
    probs = layers.Activation("sigmoid", name=PROBS_LAYER, dtype="float32")(logits)
    model = keras.Model(inputs, probs, name=f"hemo_{ENSEMBLE_ARCHITECTURE}_ensemble{len(members)}")
    for i, member in enumerate(members):
        prefix = ENSEMBLE_PREFIX.format(member=i)
        for layer in backbone_layers(member):
            model.get_layer(prefix + layer.name).set_weights(layer.get_weights())
    kernels, biases = zip(*(m.get_layer(LOGITS_LAYER).get_weights() for m in members), strict=True)
    model.get_layer(LOGITS_LAYER).set_weights(
        [np.concatenate(kernels, axis=0) / len(members), np.mean(biases, axis=0)]
    )
    return model


def _application_backbone(
    entry: Architecture, inputs: keras.KerasTensor, weights: Any, alpha: float
) -> keras.KerasTensor:
    """Put a ``keras.applications`` backbone into the outer graph; returns its CAM feature map."""
    x = inputs
    # Grayscale to the 3 channels every ImageNet backbone expects
    if x.shape[-1] == 1:
        x = layers.Concatenate(axis=-1, name=GRAY_TO_RGB_LAYER)([x, x, x])
    elif x.shape[-1] != RGB_CHANNELS:
        raise ModelError(
            f"{entry.name} needs 1 or 3 input channels, the input spec gives {x.shape[-1]}"
        )
    # The application's own input range, from our [0, 1]
    x = _imagenet_preprocess(entry.preprocess)(x)
    constructor: Callable[..., keras.Model] = getattr(keras.applications, entry.application)
    kwargs: dict[str, Any] = {
        "include_top": False,
        "weights": None if weights is None else str(weights),
        "input_tensor": x,
        "input_shape": tuple(x.shape[1:]),
    }
    if entry.name == "mobilenet_v2":
        kwargs["alpha"] = alpha
    base = _call_with_download_guard(constructor, kwargs, entry.name, weights)
    if weights is None:
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = min(layer.momentum, RANDOM_INIT_BN_MOMENTUM)
    return base.get_layer(entry.cam_layer).output


def _imagenet_preprocess(mode: str) -> layers.Layer:
    """Layer mapping [0, 1] inputs to the range an application's ImageNet weights expect."""
    if mode == "caffe":
        # x * 255 - mean (BGR order of the caffe weights; our channels are windows, not RGB)
        mean = [m / PIXEL_MAX for m in CAFFE_MEAN_BGR]
        variance = [(1.0 / PIXEL_MAX) ** 2] * RGB_CHANNELS
        return layers.Normalization(mean=mean, variance=variance, name=PREPROCESS_LAYER)
    if mode == "torch":
        variance = [s**2 for s in TORCH_STD_RGB]
        return layers.Normalization(
            mean=list(TORCH_MEAN_RGB), variance=variance, name=PREPROCESS_LAYER
        )
    if mode == "efficientnet":
        # EfficientNet rescales and normalises inside itself from [0, 255]
        return layers.Rescaling(PIXEL_MAX, name=PREPROCESS_LAYER)
    if mode == "tf":
        return layers.Rescaling(2.0, offset=-1.0, name=PREPROCESS_LAYER)
    raise ModelError(f"unknown preprocessing mode {mode!r}")


def _call_with_download_guard(
    constructor: Callable[..., keras.Model], kwargs: dict[str, Any], arch: str, weights: Any
) -> keras.Model:
    """Call an application constructor; an offline ImageNet download becomes a fast ModelError."""
    if weights != WEIGHTS_IMAGENET:
        try:
            return constructor(**kwargs)
        except (ValueError, OSError) as exc:
            if weights is None:
                raise
            raise ModelError(f"backbone weights do not fit {arch}: {exc}", weights) from exc
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        return constructor(**kwargs)
    except Exception as exc:
        if not _is_network_error(exc):
            raise
        raise ModelError(
            f"cannot download ImageNet weights for {arch} (offline?): {exc}. Alternatives: "
            "--weights none (random init), --weights FILE.weights.h5 (a local weights file), "
            "or --init models/X.keras (start from another hemo model)"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


def _is_network_error(exc: BaseException) -> bool:
    """True for the errors ``keras.utils.get_file`` raises when a download fails."""
    if isinstance(exc, urllib.error.URLError | socket.timeout | ConnectionError | OSError):
        return True
    return "URL fetch failure" in str(exc)


def _compact_backbone(inputs: keras.KerasTensor, prefix: str = "") -> keras.KerasTensor:
    """Our small CNN: conv-BN-ReLU stages, last feature map at 1/8 of the input size.

    A stride-2 stem, then :data:`COMPACT_STAGES` (2x2 max pools before the first two stages), He
    init and a little L2 decay: about 1.2 M parameters, made for 128-256 px inputs and small
    datasets; the 1/8 resolution of the last map keeps Grad-CAM heatmaps local. ``prefix`` goes
    before every layer name (the members of an ensemble, :func:`merge_ensemble`).
    """
    regularizer = keras.regularizers.L2(COMPACT_WEIGHT_DECAY)
    x = _conv_bn_relu(inputs, COMPACT_STEM, f"{prefix}compact_stem", regularizer, strides=2)
    last_stage = len(COMPACT_STAGES) - 1
    for stage, (filters, pool) in enumerate(COMPACT_STAGES):
        if pool:
            x = layers.MaxPooling2D(2, name=f"{prefix}compact_pool{stage}")(x)
        for i, n in enumerate(filters):
            last = stage == last_stage and i == len(filters) - 1
            name = COMPACT_CAM_LAYER if last else f"compact_s{stage}_c{i}"
            x = _conv_bn_relu(x, n, f"{prefix}{name}", regularizer)
    return x


def _conv_bn_relu(
    x: keras.KerasTensor,
    filters: int,
    name: str,
    regularizer: keras.regularizers.Regularizer,
    strides: int = 1,
) -> keras.KerasTensor:
    """3x3 conv (no bias) -> BatchNorm -> ReLU; the ReLU carries ``name``."""
    x = layers.Conv2D(
        filters,
        COMPACT_KERNEL,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=name)(x)


# Graph helpers ----------------------------------------------------------------------------------
def cam_layer_of(model: keras.Model) -> str:
    """Name of the Grad-CAM layer of a hemo model (the registry name found in its graph).

    Raises:
        ModelError: No registered CAM layer is in the graph.
    """
    names = {layer.name for layer in model.layers}
    for arch in ARCHITECTURES.values():
        if arch.cam_layer in names:
            return arch.cam_layer
    raise ModelError(
        f"model {model.name!r} has none of the Grad-CAM layers {sorted(CAM_LAYERS.values())}"
    )


def logits_model(model: keras.Model, layer_name: str | None = None) -> keras.Model:
    """A new model sharing ``model``'s layers with outputs (CAM activations, logits).

    ``model`` is never changed: its output stays the sigmoid, and the returned model reuses
    the same layer objects (and so the same weights).

    Args:
        model: A hemo model (from :func:`build_model` or :func:`load_model`).
        layer_name: Feature layer to expose; defaults to the model's registered CAM layer.

    Returns:
        ``keras.Model`` mapping (N, H, W, C) to [(N, h, w, k) activations, (N, labels) logits].

    Raises:
        ModelError: The layer or the logits layer is not in the graph.
    """
    name = layer_name or cam_layer_of(model)
    try:
        features = model.get_layer(name).output
        logits = model.get_layer(LOGITS_LAYER).output
    except ValueError as exc:
        raise ModelError(f"model {model.name!r} has no layer {exc}") from exc
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, [features, logits], name=f"{model.name}_logits")


def with_mask_head(model: keras.Model, layer_name: str | None = None) -> tuple[keras.Model, int]:
    """A training-only view of ``model`` that also maps its CAM layer to a lesion map.

    A 1x1 convolution with a sigmoid (:data:`MASK_HEAD_LAYER`) on the feature layer gives each
    cell of its grid a lesion probability; the output is ``[model's outputs | the grid
    flattened]`` in one tensor, so the training loss can score both (``hemo train``'s
    ``mask_loss``). ``model`` is never changed and shares its layers, so training this view
    trains ``model``; only ``model`` is saved.

    Args:
        model: A hemo model (from :func:`build_model`).
        layer_name: Feature layer; defaults to the model's registered CAM layer.

    Returns:
        ``(view, grid)``: the model (N, H, W, C) -> (N, labels + grid * grid) and the side of
        the feature layer's grid.

    Raises:
        ModelError: The layer is not in the graph or its map is not square.
    """
    name = layer_name or cam_layer_of(model)
    try:
        features = model.get_layer(name).output
    except ValueError as exc:
        raise ModelError(f"model {model.name!r} has no layer {exc}") from exc
    height, width = features.shape[1], features.shape[2]
    if height is None or height != width:
        raise ModelError(
            f"layer {name!r} gives a {height} x {width} map; a mask needs a square one"
        )
    lesion = layers.Conv2D(1, 1, activation="sigmoid", name=MASK_HEAD_LAYER)(features)
    flat = layers.Reshape((height * width,), name=f"{MASK_HEAD_LAYER}_flat")(lesion)
    out = layers.Concatenate(name=f"{MASK_HEAD_LAYER}_and_labels")([model.output, flat])
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, out, name=f"{model.name}_with_mask"), int(height)


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers with weights outside the head, in graph order (the transfer-learning backbone)."""
    return [layer for layer in model.layers if layer.weights and layer.name not in HEAD_LAYERS]


def set_trainable_top(model: keras.Model, n_top: int | None) -> int:
    """Freeze the backbone except its top ``n_top`` weighted layers; the head stays trainable.

    BatchNormalization layers of the backbone stay frozen (inference mode) while fine-tuning,
    as the Keras transfer-learning guide recommends; with ``n_top=None`` everything trains.

    Args:
        model: The model being trained (changed in place: this is the training run's own model).
        n_top: 0 for phase 1 (head only), N for the top N backbone layers, None for all.

    Returns:
        Number of backbone layers left trainable.
    """
    backbone = backbone_layers(model)
    if n_top is None:
        for layer in model.layers:
            layer.trainable = True
        return len(backbone)
    chosen = set(id(layer) for layer in backbone[len(backbone) - n_top :]) if n_top > 0 else set()
    count = 0
    for layer in model.layers:
        if layer.name in HEAD_LAYERS or not layer.weights:
            layer.trainable = True
            continue
        on = id(layer) in chosen and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = on
        count += int(on)
    return count


#: ``init_from_model`` warns when it copies under this share of the layers, and names this
#: many of the layers left to start afresh.
INIT_WARN_SHARE = 0.5
INIT_NAMED = 8


def init_from_model(
    model: keras.Model, source: str | os.PathLike, names: list[str] | None = None
) -> tuple[int, int]:
    """Copy weights layer by layer (by name, where every weight shape matches) from a hemo model.

    One exception: a convolution whose kernel has more input channels than the donor's (an
    input spec with more channels, e.g. ``asymmetry``) takes the donor's kernel on its first
    channels and zeros on the new ones, so the copied network computes what the donor did until
    training uses the new channels.

    Args:
        model: Target model (changed in place: it is the new training run's model).
        source: A saved hemo model (``.keras``/``.h5`` with its card), loaded safely.
        names: When given, the names of the copied layers are appended to it.

    Returns:
        (layers copied, layers with weights in ``model``).

    Raises:
        ModelError: The donor cannot be loaded, or not one layer fits (e.g. a merged ensemble).
    """
    donor, _ = load_model(source)
    donor_layers = {layer.name: layer for layer in donor.layers}
    weighted = [layer for layer in model.layers if layer.weights]
    copied = 0
    fresh: list[str] = []  # layers that start from their own initial weights
    for layer in weighted:
        other = donor_layers.get(layer.name)
        if other is None:
            fresh.append(layer.name)
            continue
        mine, theirs = layer.get_weights(), other.get_weights()
        if len(mine) == len(theirs) and all(
            a.shape == b.shape for a, b in zip(mine, theirs, strict=True)
        ):
            layer.set_weights(theirs)
        elif _more_input_channels(mine, theirs):
            kernel = np.zeros_like(mine[0])
            kernel[:, :, : theirs[0].shape[2]] = theirs[0]
            layer.set_weights([kernel, *theirs[1:]])
            log.info("init: %s gets the donor's kernel on its first channels", layer.name)
        else:
            fresh.append(layer.name)
            continue
        copied += 1
        if names is not None:
            names.append(layer.name)
    if copied == 0:
        members = sum(name.endswith(COMPACT_CAM_LAYER) for name in donor_layers) - 1
        hint = (
            f" (it is an ensemble of {members} models, whose layers are named "
            f"{ENSEMBLE_PREFIX.format(member=0)}...; init from one of its member runs instead)"
            if members > 1
            else ""
        )
        raise ModelError(
            f"the init model shares no layer (name and weight shapes) with this "
            f"{model.name} model{hint}",
            source=source,
        )
    # An output layer of another width starts afresh as a matter of course; most of the
    # network doing so means the init model is not what this run was meant to start from
    level = logging.WARNING if copied < len(weighted) * INIT_WARN_SHARE else logging.INFO
    log.log(
        level,
        "init from %s: copied %d of %d layers with weights%s",
        source,
        copied,
        len(weighted),
        f"; starting afresh: {', '.join(fresh[:INIT_NAMED])}" if fresh else "",
    )
    return copied, len(weighted)


def _more_input_channels(mine: list[np.ndarray], theirs: list[np.ndarray]) -> bool:
    """Whether ``mine`` is a 2-D convolution's weights that differ from ``theirs`` only by more
    input channels in the kernel (the bias and any other weights identical in shape)."""
    if len(mine) != len(theirs) or not mine or mine[0].ndim != 4 or theirs[0].ndim != 4:
        return False
    (kh, kw, cin, cout), (dh, dw, din, dout) = mine[0].shape, theirs[0].shape
    same_rest = all(a.shape == b.shape for a, b in zip(mine[1:], theirs[1:], strict=True))
    return (kh, kw, cout) == (dh, dw, dout) and cin > din and same_rest


class AnchorPenalty:
    """L2-SP (Li et al., 2018): ``strength * sum((w - w0)^2)``, pulling a weight back towards its
    starting value ``w0`` instead of towards zero. Set as a Keras variable's ``regularizer`` (in
    place of the compact CNN's weight decay), so ``fit`` adds it to the loss."""

    def __init__(self, anchor: Any, strength: float) -> None:
        self.anchor = keras.ops.convert_to_tensor(anchor, dtype="float32")
        self.strength = float(strength)

    def __call__(self, x):
        return self.strength * keras.ops.sum(keras.ops.square(x - self.anchor))


def anchor_weights(model: keras.Model, strength: float, names: Sequence[str]) -> int:
    """Pull the trainable weights of the layers ``names`` towards their current values (L2-SP).

    Call it right after :func:`init_from_model`: the anchors are the donor's weights. Frozen
    weights contribute nothing (Keras only regularizes trainable variables).

    Returns:
        The number of variables anchored.
    """
    anchored = 0
    for name in names:
        for variable in model.get_layer(name).trainable_weights:
            anchor = keras.ops.convert_to_numpy(variable)  # a copy: the variable will move
            variable.regularizer = AnchorPenalty(anchor, strength)
            anchored += 1
    return anchored


# Saving and loading -----------------------------------------------------------------------------
def save_model(
    model: keras.Model, path: str | os.PathLike, card: ModelCard, h5: bool = False
) -> Path:
    """Write ``NAME.keras`` and its card ``NAME.json`` (and ``NAME.h5`` when asked).

    Each file is written to a temporary name and moved into place, so a reader never sees a
    half-written model.

    Args:
        model: The model to save (not changed).
        path: ``models/NAME`` with or without ``.keras``.
        card: Its model card (checked against the model first).
        h5: Also write the legacy Keras HDF5 file.

    Returns:
        Path of the ``.keras`` file.

    Raises:
        ModelError: The card does not describe the model.
    """
    keras_path, card_path, h5_path = model_paths(path)
    check_card(model, card, source=keras_path)
    keras_path.parent.mkdir(parents=True, exist_ok=True)
    # The model through a temporary file (Keras needs the suffix), then the card
    tmp = keras_path.with_name(f".{keras_path.stem}.{os.getpid()}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, keras_path)
    if h5:
        tmp_h5 = h5_path.with_name(f".{h5_path.stem}.{os.getpid()}.tmp.h5")
        model.save(tmp_h5)
        os.replace(tmp_h5, h5_path)
    tmp_card = card_path.with_name(f".{card_path.name}.{os.getpid()}.tmp")
    tmp_card.write_text(card.to_json() + "\n", encoding="utf-8")
    os.replace(tmp_card, card_path)
    return keras_path


def read_card(path: str | os.PathLike) -> ModelCard:
    """The card beside a model file (``NAME.json``).

    Raises:
        ModelError: The card is missing or malformed (the message names the card file).
    """
    card_file = require_card(path)
    try:
        return ModelCard.from_json(card_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelError(f"model card is not UTF-8 text: {exc}", source=card_file) from exc
    except ModelError as exc:
        if exc.source is not None:
            raise
        raise ModelError(exc.reason, source=card_file) from exc


def check_card(
    model: keras.Model, card: ModelCard, source: str | os.PathLike | None = None
) -> None:
    """Check that ``card`` describes ``model``: input shape, output width, CAM layer.

    Raises:
        ModelError: Naming what differs.
    """
    spec = card.input_spec
    expected = (spec.size, spec.size, spec_channels(spec))
    actual = tuple(model.inputs[0].shape[1:])
    if actual != expected:
        raise ModelError(
            f"card/model mismatch: the card's InputSpec gives input {expected}, "
            f"the model takes {actual}",
            source=source,
        )
    width = model.outputs[0].shape[-1]
    if width != len(card.labels):
        raise ModelError(
            f"card/model mismatch: the card lists {len(card.labels)} labels "
            f"{list(card.labels)}, the model has {width} outputs",
            source=source,
        )
    names = {layer.name for layer in model.layers}
    if card.cam_layer not in names:
        raise ModelError(
            f"card/model mismatch: the card's cam_layer {card.cam_layer!r} is not in the model",
            source=source,
        )
    if card.architecture not in ARCHITECTURES:
        raise ModelError(f"card names an unknown architecture {card.architecture!r}", source)


def _keras_reason(exc: BaseException) -> str:
    """One line from a Keras loading error (they nest whole layer configs over many lines).

    The innermost ``Exception encountered:`` part names the cause (e.g. a Lambda refused by
    safe_mode, a class that could not be located); it is cut to :data:`MAX_REASON_CHARS`.
    """
    text = str(exc).rsplit("Exception encountered:", 1)[-1].strip()
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(exc).__name__)
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def load_model(path: str | os.PathLike) -> tuple[keras.Model, ModelCard]:
    """Load a hemo model safely and check its card.

    Args:
        path: ``NAME.keras`` or ``NAME.h5`` (the card ``NAME.json`` must be beside it), or
            ``NAME`` for ``NAME.keras``.

    Returns:
        (model, card). The model is uncompiled; treat it as read-only (share it, never mutate).

    Raises:
        ModelError: Pickle, wrong format, missing/mismatched card, or Keras cannot load it.
    """
    path = check_model_file(path)
    card = read_card(path)
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError/TypeError/OSError for bad files
        raise ModelError(
            f"Keras cannot load this model: {_keras_reason(exc)}", source=path
        ) from exc
    check_card(model, card, source=path)
    return model, card
