"""The tf.data chain from an index table to training batches, and seeded augmentation.

One preprocessing path: every image goes through :func:`hemo.io.read_scan` and
:func:`hemo.preprocess.to_model_input` (the same calls prediction and Grad-CAM make), decoded in
parallel and, for small sets, cached in memory as preprocessed tensors::

    index rows -> (path, labels) -> decode + to_model_input (parallel) -> [cache] -> [shuffle]
        -> batch -> train_preprocessing (augment) | val_preprocessing -> prefetch

A file that cannot be read or preprocessed (damaged pixel data that indexing, which reads
headers, did not see) is reported once, by name, and takes no part: it stays in its batch as a
black image of sample weight 0 (so every epoch keeps its known number of batches), which moves
no loss and no weighted metric; validation batches carry that weight too (``(x, y, w)``). The
others train (:func:`left_out` lists the files for the run's report).

Augmentation uses Keras preprocessing layers: RandomRotation, RandomZoom and RandomFlip (the
published method's three) plus RandomContrast and RandomBrightness (window jitter); it is seeded
and applied to the training split only. Optional extras, all off by default: a random display
curve (``gamma``), blur, mixup, and synthetic hyperdense lesions pasted into negatives, which then
count as positive (``lesion``, :func:`paste_lesions`).

With ``mask_grid`` (the trainer's ``mask_loss``), each row's lesion mask (``mask_path``, e.g.
phantoms) is carried onto the input grid with the image, moved by the same random geometry, and
appended to the targets as a row of lesion fractions on the CAM layer's grid
(:func:`mask_targets`).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from numpy.typing import NDArray

from hemo.config import DEFAULT_SEED, RSNA_LABELS, SUBTYPES
from hemo.errors import ConfigError, DatasetError, HemoError
from hemo.preprocess import InputSpec

log = logging.getLogger(__name__)

# Settings ---------------------------------------------------------------------------------------
#: Index column holding each output label.
LABEL_COLUMNS: dict[str, str] = {"any": "label_any", **{s: s for s in SUBTYPES}}
BINARY_LABELS: tuple[str, ...] = ("any",)
#: Augmentation at strength 1.0 (each scales linearly with the strength parameter).
ROTATION_DEG = 15.0
ZOOM_FRACTION = 0.10
CONTRAST_FACTOR = 0.10
BRIGHTNESS_FACTOR = 0.05
FLIP_MODE = "horizontal"
#: Share of training images blurred when ``Augment.blur`` > 0 (the rest stay sharp).
BLUR_PROBABILITY = 0.5
#: Synthetic lesions (``Augment.lesion``), in fractions of the input size unless stated: the
#: ellipse's radii, how deep inside the head outline its centre lies, how far from bone.
LESION_RADIUS = (0.02, 0.09)
LESION_DEPTH = 0.08
LESION_BONE_MARGIN = 0.03
#: Display levels: above ``LESION_BONE`` is bone, below ``LESION_AIR`` is outside the head.
LESION_BONE = 0.85
LESION_AIR = 0.05
#: The lesion's level is the brain's mean plus this share of the way up to white (acute blood
#: is brighter than brain and darker than bone), then per-pixel noise of this sd.
LESION_CONTRAST = (0.35, 0.8)
LESION_NOISE = 0.03
#: Edge sharpness (logistic slope per radius) and opacity ranges.
LESION_EDGE = (3.0, 10.0)
LESION_OPACITY = (0.7, 1.0)
FULL_TURN_DEG = 360.0
#: Augmentation layers that move pixels: with masks they move the mask too (the others change
#: intensities, the image only).
GEOMETRIC_LAYERS = (keras.layers.RandomFlip, keras.layers.RandomRotation, keras.layers.RandomZoom)
#: Inputs live in [0, 1]; augmented values are kept there.
VALUE_RANGE = (0.0, 1.0)
SHUFFLE_BUFFER = 4096
#: ``cache`` left to hemo (``None``, config ``"auto"``) keeps a set's preprocessed tensors in
#: memory when they take at most this share of the machine's physical memory ...
CACHE_AUTO_MEMORY_SHARE = 0.25
#: ... or at most this many bytes where physical memory cannot be read.
CACHE_AUTO_MAX_BYTES = 4 * 2**30
#: ``cache = true`` is refused when the tensors would take more than this share of it.
CACHE_MAX_MEMORY_SHARE = 0.8
AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class Augment:
    """Augmentation settings.

    Attributes:
        strength: Multiplies every range below; 0 turns augmentation off.
        seed: Seed of every random layer (same seed, same augmented batches).
        rotation_deg: Largest rotation, degrees, either way.
        zoom_fraction: Largest zoom in or out, as a fraction of the size.
        contrast_factor: RandomContrast factor.
        brightness_factor: RandomBrightness factor (fraction of the [0, 1] range): window jitter.
        flip: RandomFlip mode (left-right is anatomically plausible for a head).
        mixup: Mixup's Beta(alpha, alpha) parameter (Zhang et al. 2018): each augmented image,
            its targets and its sample weight become a convex mix with another image of the
            batch. 0 turns it off. Applied after the other augmentations, training only.
        gamma: Largest log-gamma: each image becomes ``x ** exp(u)``, ``u ~ U(-gamma, gamma)``
            (a display curve other than the linear window, as in scanned figures and
            exported PNGs). 0 turns it off. Not scaled by ``strength``.
        blur: Largest Gaussian-blur sigma, in pixels of the model input: half the images are
            blurred with a sigma drawn from (0, blur] (smoother than the source, as after
            resampling and compression). 0 turns it off. Not scaled by ``strength``.
        lesion: Share of negative training images that get a synthetic hyperdense lesion
            pasted into the brain and become positive (:func:`paste_lesions`): the real
            background stays, so the only difference the label follows is the lesion.
            Display input and the binary ``any`` label only; 0 turns it off.
        jitter_maps: The intensity augmentations (contrast, brightness, ``gamma``) act on the
            derived map channels too (the asymmetry and hyperdensity maps), as on the gray
            ones (the default, and what every model before the key was trained with). False
            leaves the maps out of them: the maps move with the geometry (flip, rotation, zoom)
            and the blur only, so a map of 0 stays 0, as it is at prediction.
    """

    strength: float = 1.0
    seed: int = DEFAULT_SEED
    rotation_deg: float = ROTATION_DEG
    zoom_fraction: float = ZOOM_FRACTION
    contrast_factor: float = CONTRAST_FACTOR
    brightness_factor: float = BRIGHTNESS_FACTOR
    flip: str = FLIP_MODE
    mixup: float = 0.0
    gamma: float = 0.0
    blur: float = 0.0
    lesion: float = 0.0
    jitter_maps: bool = True


def labels_for(df: pd.DataFrame) -> tuple[str, ...]:
    """Output labels a dataset supports: the six RSNA labels when every subtype is known.

    Args:
        df: Index table.

    Returns:
        ``config.RSNA_LABELS`` or ``("any",)``.
    """
    subtype_cols = [LABEL_COLUMNS[s] for s in SUBTYPES]
    if all(c in df.columns for c in subtype_cols) and df[subtype_cols].notna().all().all():
        return RSNA_LABELS
    return BINARY_LABELS


def label_matrix(df: pd.DataFrame, labels: Sequence[str]) -> NDArray[np.float32]:
    """(N, len(labels)) float32 targets in {0, 1} from the index label columns.

    Raises:
        DatasetError: A label column is missing or has unknown values.
    """
    columns = []
    for label in labels:
        column = LABEL_COLUMNS.get(label, label)
        if column not in df.columns:
            raise DatasetError(f"index has no column {column!r} for label {label!r}")
        values = df[column]
        if values.isna().any():
            raise DatasetError(
                f"index column {column!r} has {int(values.isna().sum())} unknown values; "
                "train on labels every row has (e.g. --labels any)"
            )
        columns.append(values.to_numpy(dtype=np.float32))
    return np.stack(columns, axis=1)


def class_weights(df: pd.DataFrame, column: str = "label_any") -> dict[int, float]:
    """Balanced class weights ``n / (2 * n_class)`` from a (training) split.

    Args:
        df: Rows to count (pass the train split only).
        column: Binary label column.

    Returns:
        ``{0: w_neg, 1: w_pos}``; both 1.0 when a class is absent.
    """
    values = df[column].to_numpy(dtype=np.int64)
    n = len(values)
    counts = np.bincount(values, minlength=2)
    if n == 0 or (counts == 0).any():
        return {0: 1.0, 1: 1.0}
    return {k: float(n / (2.0 * counts[k])) for k in (0, 1)}


def load_input(path: str, spec: InputSpec) -> NDArray[np.float32]:
    """Read one file and preprocess it exactly as prediction does: (size, size, C) in [0, 1]."""
    from hemo.io import read_scan
    from hemo.preprocess import to_model_input

    return np.asarray(to_model_input(read_scan(path), spec), dtype=np.float32)


def load_inputs(paths: Sequence[str], spec: InputSpec) -> NDArray[np.float32]:
    """Stack :func:`load_input` over ``paths``: (N, size, size, C) float32."""
    return np.stack([load_input(p, spec) for p in paths]) if len(paths) else np.zeros(0)


def load_input_and_mask(
    path: str, mask_path: str, spec: InputSpec
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """:func:`load_input` plus the row's lesion mask (any subtype) on the input grid.

    Args:
        path: The image.
        mask_path: Its bitmask PNG (docs/CONTRACTS.md, Phantoms), or "" for a row without a
            mask (the mask is then empty and the row carries no mask target).
        spec: The model's input spec.

    Returns:
        ``(x, m)``: float32 (size, size, C) and (size, size, 1), the mask as the share of each
        input pixel that is lesion.
    """
    from hemo.cam.metrics import read_mask
    from hemo.io import read_scan
    from hemo.preprocess import mask_to_model_input, to_model_input

    scan = read_scan(path)
    x = np.asarray(to_model_input(scan, spec), dtype=np.float32)
    if not mask_path:
        return x, np.zeros((spec.size, spec.size, 1), dtype=np.float32)
    mask = mask_to_model_input(read_mask(mask_path, "any"), scan, spec)
    return x, mask[:, :, None]


def mask_targets(y: tf.Tensor, has_mask: tf.Tensor, mask: tf.Tensor, grid: int) -> tf.Tensor:
    """Targets of a mask-supervised batch: ``[labels | has_mask | grid x grid lesion fractions]``.

    Args:
        y: (N, L) label targets.
        has_mask: (N,) 1 for rows with a mask, 0 for rows without (no mask loss for them).
        mask: (N, size, size, 1) lesion fractions on the input grid.
        grid: Side of the CAM layer's feature map; the mask is area-averaged onto it.

    Returns:
        float32 (N, L + 1 + grid * grid).
    """
    coarse = tf.image.resize(tf.cast(mask, tf.float32), (grid, grid), method="area")
    flat = tf.reshape(coarse, (-1, grid * grid))
    return tf.concat([tf.cast(y, tf.float32), tf.cast(has_mask, tf.float32)[:, None], flat], 1)


def augment_with_mask(
    augmenter: keras.Sequential, x: tf.Tensor, mask: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Run ``augmenter`` on a batch, moving ``mask`` with the image.

    The geometric layers (:data:`GEOMETRIC_LAYERS`) see the image and the mask as one stack of
    channels, so both get the same flip, rotation and zoom; the intensity layers see the image
    only. Each layer draws its randomness per image from its own seed, so the image comes out
    exactly as ``augmenter(x)`` would give it.
    """
    channels = x.shape[-1]
    for layer in augmenter.layers:
        if isinstance(layer, GEOMETRIC_LAYERS):
            both = layer(tf.concat([x, tf.cast(mask, x.dtype)], axis=-1), training=True)
            x, mask = both[..., :channels], both[..., channels:]
        else:
            x = layer(x, training=True)
    return x, mask


def augment_gray_only(augmenter: keras.Sequential, x: tf.Tensor, gray: int) -> tf.Tensor:
    """Run ``augmenter`` on a batch whose channels after the first ``gray`` are derived maps.

    The geometric layers (:data:`GEOMETRIC_LAYERS`) and the blur see every channel, so a map
    moves and smooths with its image; the intensity layers (contrast, brightness) see the gray
    channels only. Each layer draws its randomness per image from its own seed, so the gray
    channels come out exactly as ``augmenter(x)`` would give them.
    """
    for layer in augmenter.layers:
        if isinstance(layer, (*GEOMETRIC_LAYERS, keras.layers.RandomGaussianBlur)):
            x = layer(x, training=True)
        else:
            x = tf.concat([layer(x[..., :gray], training=True), x[..., gray:]], axis=-1)
    return x


def make_augmenter(augment: Augment) -> keras.Sequential:
    """The seeded augmentation stack: rotation, zoom, flip, contrast and brightness when
    ``augment.strength`` > 0, then blur when ``augment.blur`` > 0."""
    s = augment.strength
    seed = augment.seed
    layers = []
    if s > 0:
        layers += [
            keras.layers.RandomFlip(augment.flip, seed=seed),
            keras.layers.RandomRotation(
                s * augment.rotation_deg / FULL_TURN_DEG,
                fill_mode="constant",
                fill_value=0.0,
                seed=seed + 1,
            ),
            keras.layers.RandomZoom(
                (-s * augment.zoom_fraction, s * augment.zoom_fraction),
                fill_mode="constant",
                fill_value=0.0,
                seed=seed + 2,
            ),
            keras.layers.RandomContrast(
                s * augment.contrast_factor, value_range=VALUE_RANGE, seed=seed + 3
            ),
            keras.layers.RandomBrightness(
                s * augment.brightness_factor, value_range=VALUE_RANGE, seed=seed + 4
            ),
        ]
    if augment.blur > 0:
        layers.append(
            keras.layers.RandomGaussianBlur(
                factor=(BLUR_PROBABILITY, BLUR_PROBABILITY),
                # The kernel spans +-3 sigma of the largest blur
                kernel_size=2 * math.ceil(3 * augment.blur) + 1,
                sigma=(0.0, augment.blur),
                value_range=VALUE_RANGE,
                seed=seed + 5,
            )
        )
    return keras.Sequential(layers, name="augment")


def mix_batch(
    x: tf.Tensor, y: tf.Tensor, w: tf.Tensor, alpha: float, seed: keras.random.SeedGenerator
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Mixup within a batch: ``lam * a + (1 - lam) * b`` for images, targets and weights.

    ``b`` is the batch in a random order and ``lam ~ Beta(alpha, alpha)`` per image
    (``keras.random``; a fresh ``SeedGenerator`` with the same seed gives the same mixes).

    Args:
        x: Images (B, H, W, C) in [0, 1].
        y: Targets (B, L) in [0, 1].
        w: Sample weights (B,).
        alpha: Beta parameter, > 0.
        seed: Seed generator of the draws.

    Returns:
        The mixed ``(x, y, w)``; images stay in [0, 1], targets in [0, 1]; a mix with an image
        of weight 0 has weight 0.
    """
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.float32)
    w = tf.cast(w, tf.float32)
    n = tf.shape(x)[0]
    order = keras.random.shuffle(tf.range(n), seed=seed)
    lam = keras.random.beta((n,), alpha, alpha, seed=seed)
    lx = tf.reshape(lam, [-1, 1, 1, 1])
    ly = tf.reshape(lam, [-1, 1])
    mixed_x = lx * x + (1.0 - lx) * tf.gather(x, order)
    mixed_y = ly * y + (1.0 - ly) * tf.gather(y, order)
    partner = tf.gather(w, order)
    mixed_w = lam * w + (1.0 - lam) * partner
    # an image of weight 0 (unreadable, left out) takes no part: nor does any mix holding it
    mixed_w *= tf.cast((w > 0) & (partner > 0), tf.float32)
    return mixed_x, mixed_y, mixed_w


def _dilate(mask: tf.Tensor, k: int, outside: float = 0.0) -> tf.Tensor:
    """Binary dilation of (B, H, W, 1) 0/1 masks by a k x k square (k odd), the image
    continued by ``outside``. Counted with cumulative sums: TF's max pool took about 50 times
    longer on a CPU for a 15 x 15 window (measured on 16 images of 96 x 96)."""
    pad = k // 2
    m = tf.pad(mask, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=outside)
    rows = tf.cumsum(tf.pad(m, [[0, 0], [1, 0], [0, 0], [0, 0]]), axis=1)
    m = rows[:, k:] - rows[:, :-k]
    cols = tf.cumsum(tf.pad(m, [[0, 0], [0, 0], [1, 0], [0, 0]]), axis=2)
    return tf.cast(cols[:, :, k:] - cols[:, :, :-k] > 0.5, tf.float32)


def _erode(mask: tf.Tensor, k: int) -> tf.Tensor:
    """Binary erosion of (B, H, W, 1) 0/1 masks by a k x k square; outside the image counts
    as background, so a head cut by the crop is eroded from the image edge too."""
    return 1.0 - _dilate(1.0 - mask, k, outside=1.0)


def _odd(n: float) -> int:
    """Side of a window with a centre pixel and ``round(n / 2)`` pixels either side of it, so
    ``_odd(2 * r)`` reaches ``r`` pixels from the centre."""
    return max(1, 2 * int(round(n / 2)) + 1)


def paste_lesions(
    x: tf.Tensor, y: tf.Tensor, share: float, seed: keras.random.SeedGenerator, column: int = 0
) -> tuple[tf.Tensor, tf.Tensor]:
    """Paste a synthetic hyperdense lesion into a share of the negative images; they become
    positive.

    Each chosen image gets one soft-edged ellipse (radii ``LESION_RADIUS`` of the size, any
    orientation) centred on brain tissue: at least ``LESION_DEPTH`` inside the head outline
    and ``LESION_BONE_MARGIN`` from bone. Its level is the mean of that tissue plus a share
    (``LESION_CONTRAST``) of the way up to white, with per-pixel noise, and it is painted over
    soft tissue only (never over bone or air), with an opacity from ``LESION_OPACITY``. An
    image without such tissue, or already positive, is left as it is.

    Args:
        x: Display images (B, H, W, C) in [0, 1]; channels are painted alike.
        y: Targets (B, L); ``y[:, column]`` is the ``any`` label.
        share: Probability that a negative image gets a lesion, in [0, 1].
        seed: Seed generator of every draw.
        column: Index of the ``any`` target.

    Returns:
        ``(x', y')``: images in [0, 1] and targets with the lesioned rows set to 1.
    """
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.float32)
    n, size = tf.shape(x)[0], x.shape[1]
    gray = x[..., :1]
    # Where a centre may go: brain tissue, away from the head outline and from bone
    soft = tf.cast((gray > LESION_AIR) & (gray < LESION_BONE), tf.float32)
    head = tf.cast(gray > LESION_AIR, tf.float32)
    bone = tf.cast(gray >= LESION_BONE, tf.float32)
    near_bone = _dilate(bone, _odd(2 * LESION_BONE_MARGIN * size))
    centre = _erode(head, _odd(2 * LESION_DEPTH * size)) * (1.0 - near_bone) * soft
    area = tf.reduce_sum(centre, axis=[1, 2, 3])
    brain = tf.reduce_sum(gray * centre, axis=[1, 2, 3]) / tf.maximum(area, 1.0)
    # One centre per image, uniform over its allowed pixels
    logits = tf.math.log(tf.reshape(centre, [n, -1]) + 1e-30)
    index = tf.cast(keras.random.categorical(logits, 1, seed=seed)[:, 0], tf.int32)
    cy = tf.cast(index // size, tf.float32)[:, None, None]
    cx = tf.cast(index % size, tf.float32)[:, None, None]

    def draw(low: float, high: float) -> tf.Tensor:
        return keras.random.uniform((n,), low, high, seed=seed)[:, None, None]

    a = draw(*LESION_RADIUS) * size
    b = draw(*LESION_RADIUS) * size
    angle = draw(0.0, math.pi)
    edge = draw(*LESION_EDGE)
    opacity = draw(*LESION_OPACITY)
    level = brain[:, None, None] + draw(*LESION_CONTRAST) * (1.0 - brain[:, None, None])
    # The ellipse, soft-edged, over soft tissue only
    grid = tf.range(size, dtype=tf.float32)
    dy = grid[None, :, None] - cy
    dx = grid[None, None, :] - cx
    u = dx * tf.cos(angle) + dy * tf.sin(angle)
    v = -dx * tf.sin(angle) + dy * tf.cos(angle)
    radius = tf.sqrt(tf.square(u / a) + tf.square(v / b))
    paint = tf.sigmoid(edge * (1.0 - radius)) * opacity
    noise = keras.random.normal(tf.shape(paint), stddev=LESION_NOISE, seed=seed)
    # Which rows: negatives, drawn with probability ``share``, that have tissue to paint
    chosen = (
        (y[:, column] < 0.5)
        & (keras.random.uniform((n,), 0.0, 1.0, seed=seed) < share)
        & (area > 0)
    )
    on = tf.cast(chosen, tf.float32)
    paint = (paint * on[:, None, None])[..., None] * soft
    x = x + paint * (level[..., None] + noise[..., None] - x)
    y = tf.tensor_scatter_nd_update(
        y,
        tf.stack([tf.range(n), tf.fill([n], column)], axis=1),
        tf.maximum(y[:, column], on),
    )
    return tf.clip_by_value(x, *VALUE_RANGE), y


def train_preprocessing(
    augmenter: keras.Sequential | None,
    mixup: float = 0.0,
    seed: int = DEFAULT_SEED,
    gamma: float = 0.0,
    lesion: float = 0.0,
    gray_channels: int = 0,
):
    """Batch map for training: synthetic lesions (if on), augment (if any), random gamma (if
    on), mixup (if on), keep values in [0, 1].

    Args:
        augmenter: From :func:`make_augmenter`, or None for no augmentation.
        mixup: Beta parameter of :func:`mix_batch`; 0 for none.
        seed: Seed of the mixup, gamma and lesion draws.
        gamma: Largest log-gamma (``Augment.gamma``); 0 for none.
        lesion: Share of negatives given a lesion (:func:`paste_lesions`, on target column
            0); 0 for none.
        gray_channels: When > 0, the channels after the first ``gray_channels`` are derived
            maps that the intensity augmentations and the gamma leave alone
            (:func:`augment_gray_only`, ``Augment.jitter_maps = False``); 0: every channel.

    Returns:
        A function ``(x, y, w) -> (x', y', w')`` for ``Dataset.map`` on batches.
    """

    mixer = keras.random.SeedGenerator(seed) if mixup > 0 else None
    curver = keras.random.SeedGenerator(seed + 1) if gamma > 0 else None
    painter = keras.random.SeedGenerator(seed + 2) if lesion > 0 else None

    def apply(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        # A lesion into some negatives first, so the geometry moves it with the head
        if painter is not None:
            x, y = paste_lesions(x, y, lesion, painter)
        # Random geometry and intensity, per image of the batch
        if augmenter is not None:
            if gray_channels:
                x = augment_gray_only(augmenter, x, gray_channels)
            else:
                x = augmenter(x, training=True)
        x = tf.clip_by_value(x, *VALUE_RANGE)
        # Another display curve per image: x ** exp(u) keeps 0 and 1 where they are
        if curver is not None and gray_channels:
            curved = _random_curve(x[..., :gray_channels], gamma, curver)
            x = tf.concat([curved, x[..., gray_channels:]], axis=-1)
        elif curver is not None:
            x = _random_curve(x, gamma, curver)
        # Convex mixes of image pairs and their targets
        if mixer is not None:
            x, y, w = mix_batch(x, y, w, mixup, mixer)
        # Back into the model's input range
        return tf.clip_by_value(x, *VALUE_RANGE), y, w

    return apply


def _random_curve(x: tf.Tensor, gamma: float, seeds: keras.random.SeedGenerator) -> tf.Tensor:
    """Each image through its own display curve ``x ** exp(u)``, u uniform in [-gamma, gamma]."""
    u = keras.random.uniform((tf.shape(x)[0], 1, 1, 1), -gamma, gamma, seed=seeds)
    return tf.pow(x, tf.exp(u))


def train_preprocessing_with_masks(
    augmenter: keras.Sequential | None, grid: int, seed: int = DEFAULT_SEED, gamma: float = 0.0
):
    """Batch map for mask-supervised training: augment image and mask together
    (:func:`augment_with_mask`), random gamma on the image (if on), keep values in [0, 1], then
    the extended targets of :func:`mask_targets`.

    Returns:
        A function ``(x, mask, y, has_mask, w) -> (x', targets, w)`` for ``Dataset.map``.
    """
    curver = keras.random.SeedGenerator(seed + 1) if gamma > 0 else None

    def apply(x, mask, y, has_mask, w):
        if augmenter is not None:
            x, mask = augment_with_mask(augmenter, x, mask)
        x = tf.clip_by_value(x, *VALUE_RANGE)
        if curver is not None:
            x = _random_curve(x, gamma, curver)
        x = tf.clip_by_value(x, *VALUE_RANGE)
        return x, mask_targets(y, has_mask, tf.clip_by_value(mask, 0.0, 1.0), grid), w

    return apply


def val_preprocessing(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Batch map for validation and test: no augmentation, inputs as preprocessed."""
    return tf.cast(x, tf.float32), tf.cast(y, tf.float32)


def cache_bytes(n_images: int, spec: InputSpec) -> int:
    """Memory the preprocessed float32 tensors of ``n_images`` take in a tf.data cache."""
    height, width, channels = spec.input_shape
    return int(n_images) * height * width * channels * 4


def physical_memory_bytes() -> int | None:
    """This machine's physical memory, or ``None`` where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _size_text(n_bytes: float) -> str:
    """``1.5 GiB``, ``12.0 MiB``: memory sizes for messages."""
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def decide_cache(n_images: int, spec: InputSpec, cache: bool | None) -> bool:
    """Whether to keep ``n_images`` preprocessed tensors in memory.

    Args:
        n_images: Images that would be cached (e.g. a run's training plus validation rows).
        spec: Their input specification (size and channels set the bytes per image).
        cache: ``None`` (auto): cache when they fit in :data:`CACHE_AUTO_MEMORY_SHARE` of
            physical memory (:data:`CACHE_AUTO_MAX_BYTES` where it is unknown). ``True``:
            cache, unless they would not fit. ``False``: never.

    Raises:
        ConfigError: ``cache=True`` for tensors over :data:`CACHE_MAX_MEMORY_SHARE` of physical
            memory (the first epoch would fill it and the run die hours in).
    """
    need, total = cache_bytes(n_images, spec), physical_memory_bytes()
    if cache is None:
        limit = CACHE_AUTO_MAX_BYTES if total is None else CACHE_AUTO_MEMORY_SHARE * total
        if need > limit:
            log.info(
                "not caching: %d preprocessed images would take %s of memory",
                n_images,
                _size_text(need),
            )
        return need <= limit
    if cache and total is not None and need > CACHE_MAX_MEMORY_SHARE * total:
        raise ConfigError(
            f"cache = true would keep {n_images} preprocessed images ({_size_text(need)}) "
            f"in memory, and this machine has {_size_text(total)}: set cache = false "
            "(each epoch reads the files again) or auto"
        )
    return bool(cache)


#: Training files that could not be read or preprocessed, with why (since the last
#: :func:`forget_left_out`): :func:`make_dataset` gives each weight 0 and reports it once;
#: :func:`left_out` lists them for a run's report.
_LEFT_OUT: dict[str, str] = {}
_LEFT_OUT_LOCK = threading.Lock()


def _leave_out(path: str, exc: HemoError) -> None:
    """Record a training file that cannot be read (warned once per file)."""
    with _LEFT_OUT_LOCK:
        if path in _LEFT_OUT:
            return
        _LEFT_OUT[path] = str(exc)
    log.warning("left out of training (cannot be read): %s", exc)


def forget_left_out() -> None:
    """Start a new record of left-out files (each training run starts one: a file fixed since
    an earlier run in this process, or one only that run read, is not reported again)."""
    with _LEFT_OUT_LOCK:
        _LEFT_OUT.clear()


def left_out(paths: Iterable[str] | None = None) -> dict[str, str]:
    """Files :func:`make_dataset` left out so far (``path -> reason``), only ``paths`` if given."""
    with _LEFT_OUT_LOCK:
        found = dict(_LEFT_OUT)
    if paths is None:
        return found
    return {p: found[p] for p in map(str, paths) if p in found}


def make_dataset(
    df: pd.DataFrame,
    spec: InputSpec,
    labels: Sequence[str],
    batch_size: int = 32,
    training: bool = False,
    augment: Augment | None = None,
    seed: int = DEFAULT_SEED,
    cache: bool | None = None,
    weights: dict[int, float] | None = None,
    mask_grid: int = 0,
    row_weights: NDArray[np.float32] | None = None,
) -> tf.data.Dataset:
    """tf.data pipeline over index rows.

    Args:
        df: Index rows (absolute ``path`` plus label columns), e.g. one split.
        spec: Input specification (the model's card spec).
        labels: Output labels (see :func:`labels_for`).
        batch_size: Batch size.
        training: Shuffle (seeded), augment and emit sample weights ``(x, y, w)``; otherwise
            emit ``(x, y, w)`` in index order, ``w`` 1 for a read image and 0 for one that
            could not be read.
        augment: Augmentation settings (training only); None or strength 0 for none.
        seed: Shuffle seed.
        cache: Keep the preprocessed tensors in memory; default (``None``): when they fit,
            see :func:`decide_cache` (which a caller caching several sets should ask first).
        weights: Class weights on ``label_any`` turned into per-sample weights (training).
        row_weights: Optional (N,) factors multiplied into each row's sample weight (training;
            e.g. :func:`hemo.lookalike.group_weights`).
        mask_grid: When > 0, the targets are :func:`mask_targets` on a grid of this side: each
            row's lesion mask (``mask_path``; rows without one are flagged and carry none),
            moved with the image by the augmentation. Not with ``lesion`` or ``mixup``.

    Returns:
        A batched, prefetched ``tf.data.Dataset``.

    Raises:
        DatasetError: Empty rows or missing label columns.
        ConfigError: ``mask_grid`` with synthetic lesions or mixup.
    """
    if df.empty:
        raise DatasetError("no rows to build a dataset from (empty split?)")
    if training and augment is not None and augment.lesion > 0:
        if spec.mode != "display" or spec.map_channels or tuple(labels) != BINARY_LABELS:
            raise ConfigError(
                "augment.lesion paints display-grayscale lesions and sets the 'any' label: it "
                "needs display input without the asymmetry or hyperdensity channel and labels "
                f"'any' (got mode {spec.mode!r}, asymmetry {spec.asymmetry}, hyperdensity "
                f"{spec.hyperdensity}, labels {list(labels)})"
            )
    if mask_grid > 0 and training and _gray_channels(spec, augment):
        raise ConfigError(
            "mask supervision augments the image and its mask together: it cannot leave the "
            "map channels out of the intensity augmentations (augment.jitter_maps = false); "
            "turn that off"
        )
    if mask_grid > 0 and training and augment is not None and (augment.lesion or augment.mixup):
        raise ConfigError(
            "mask supervision cannot follow synthetic lesions (augment.lesion) or mixes of "
            "images (augment.mixup): their pixels have no mask; turn those off"
        )
    paths = df["path"].astype(str).to_numpy()
    y = label_matrix(df, labels)
    size, channels = spec.size, spec.input_shape[-1]
    cache = decide_cache(len(df), spec, None) if cache is None else cache
    # Sample weights from class weights on "any"
    w = np.ones(len(df), dtype=np.float32)
    if weights is not None:
        any_col = df[LABEL_COLUMNS["any"]].to_numpy(dtype=np.int64)
        w = np.where(any_col == 1, weights[1], weights[0]).astype(np.float32)
    if row_weights is not None:
        factors = np.asarray(row_weights, np.float32)
        if factors.shape != (len(df),):
            raise DatasetError(f"row_weights has shape {factors.shape}; expected ({len(df)},)")
        w = w * factors

    def decode(path: bytes) -> tuple[NDArray[np.float32], np.float32]:
        try:
            return load_input(path.decode("utf-8"), spec), np.float32(1.0)
        except HemoError as exc:
            _leave_out(path.decode("utf-8"), exc)
            return np.zeros((size, size, channels), np.float32), np.float32(0.0)

    def decode_tf(path: tf.Tensor, target: tf.Tensor, weight: tf.Tensor):
        x, ok = tf.numpy_function(decode, [path], (tf.float32, tf.float32), stateful=False)
        x.set_shape((size, size, channels))
        ok.set_shape(())
        return x, target, weight, ok

    if mask_grid > 0:
        return _masked_dataset(
            df, spec, y, w, batch_size, training, augment, seed, cache, mask_grid
        )
    # Rows -> decoded, preprocessed tensors (parallel, in order), optionally cached
    ds = tf.data.Dataset.from_tensor_slices((paths, y, w))
    ds = ds.map(decode_tf, num_parallel_calls=AUTOTUNE, deterministic=True)
    # An unreadable image stays in place as a black image of weight 0 (tf.data keeps knowing
    # how many batches an epoch has): it moves no loss, no metric and no threshold
    ds = ds.map(lambda x, t, weight, ok: (x, t, weight * ok))
    if cache:
        ds = ds.cache()
    # Shuffle, batch and augment (train) or batch as is (val/test)
    if training:
        ds = ds.shuffle(min(len(df), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
        on = augment is not None and (augment.strength > 0 or augment.blur > 0)
        mixup = augment.mixup if augment is not None else 0.0
        gamma = augment.gamma if augment is not None else 0.0
        lesion = augment.lesion if augment is not None else 0.0
        augment_seed = augment.seed if augment is not None else seed
        ds = ds.map(
            train_preprocessing(
                make_augmenter(augment) if on else None,
                mixup,
                augment_seed + 5,
                gamma,
                lesion,
                _gray_channels(spec, augment),
            )
        )
    else:
        # (x, y, w): w is 0 for an unreadable image (1 otherwise), so validation ignores it
        ds = ds.batch(batch_size).map(
            lambda x, t, weight: (*val_preprocessing(x, t), tf.cast(weight > 0, tf.float32))
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(AUTOTUNE)


def _gray_channels(spec: InputSpec, augment: Augment | None) -> int:
    """How many leading gray channels the intensity augmentations may touch: 0 (all of them)
    unless ``augment.jitter_maps`` is off and the input has derived map channels."""
    if augment is None or augment.jitter_maps or not spec.map_channels:
        return 0
    return spec.channels - spec.map_channels


def _masked_dataset(
    df: pd.DataFrame,
    spec: InputSpec,
    y: NDArray[np.float32],
    w: NDArray[np.float32],
    batch_size: int,
    training: bool,
    augment: Augment | None,
    seed: int,
    cache: bool,
    grid: int,
) -> tf.data.Dataset:
    """:func:`make_dataset` with ``mask_grid``: rows -> (x, mask, y, has_mask, w) -> batches of
    ``(x, mask_targets, w)`` (training) or ``(x, mask_targets)``."""
    paths = df["path"].astype(str).to_numpy()
    if "mask_path" in df.columns:
        mask_paths = df["mask_path"].astype("string").fillna("").astype(str).to_numpy()
    else:
        mask_paths = np.full(len(df), "", dtype=object).astype(str)
    has_mask = (mask_paths != "").astype(np.float32)
    size, channels = spec.size, spec.input_shape[-1]

    def decode(path: bytes, mask_path: bytes):
        try:
            x, mask = load_input_and_mask(path.decode("utf-8"), mask_path.decode("utf-8"), spec)
            return x, mask, np.float32(1.0)
        except HemoError as exc:
            _leave_out(path.decode("utf-8"), exc)
            zeros = np.zeros((size, size, channels), np.float32)
            return zeros, np.zeros((size, size, 1), np.float32), np.float32(0.0)

    def decode_tf(path, mask_path, target, has, weight):
        x, mask, ok = tf.numpy_function(
            decode, [path, mask_path], (tf.float32, tf.float32, tf.float32), stateful=False
        )
        x.set_shape((size, size, channels))
        mask.set_shape((size, size, 1))
        ok.set_shape(())
        return x, mask, target, has, weight, ok

    ds = tf.data.Dataset.from_tensor_slices((paths, mask_paths, y, has_mask, w))
    ds = ds.map(decode_tf, num_parallel_calls=AUTOTUNE, deterministic=True)
    # An unreadable image: a black image of weight 0, and no mask (see make_dataset)
    ds = ds.map(lambda x, mask, t, has, weight, ok: (x, mask, t, has * ok, weight * ok))
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(len(df), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
        on = augment is not None and (augment.strength > 0 or augment.blur > 0)
        gamma = augment.gamma if augment is not None else 0.0
        augment_seed = augment.seed if augment is not None else seed
        step = train_preprocessing_with_masks(
            make_augmenter(augment) if on else None, grid, augment_seed + 5, gamma
        )
        ds = ds.batch(batch_size).map(step)
    else:
        ds = ds.batch(batch_size).map(
            lambda x, mask, t, has, w: (
                tf.cast(x, tf.float32),
                mask_targets(t, has, mask, grid),
                tf.cast(w > 0, tf.float32),
            )
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(AUTOTUNE)
