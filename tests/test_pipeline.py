"""Tests of hemo.pipeline: one preprocessing path, seeded train-only augmentation, class weights."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from hemo.config import RSNA_LABELS
from hemo.datasets import load_index
from hemo.errors import ConfigError, DatasetError
from hemo.pipeline import (
    Augment,
    _dilate,
    _erode,
    augment_gray_only,
    augment_with_mask,
    cache_bytes,
    class_weights,
    decide_cache,
    label_matrix,
    labels_for,
    load_inputs,
    make_augmenter,
    make_dataset,
    mix_batch,
    paste_lesions,
    train_preprocessing,
)
from hemo.preprocess import InputSpec

SPEC = InputSpec(size=32)


@pytest.fixture(scope="module")
def index(phantom_dir: Path) -> pd.DataFrame:
    """The phantom fixture's index (absolute paths)."""
    return load_index(phantom_dir)


def _first_batch(ds) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(t) for t in next(iter(ds)))


def _batch(rows: pd.DataFrame, augment: Augment, training: bool = True) -> tuple[np.ndarray, ...]:
    """The first batch of ``rows`` (all in one) through the pipeline, label ``any``."""
    return _first_batch(make_dataset(rows, SPEC, ("any",), len(rows), training, augment))


def test_validation_batches_are_the_preprocessed_inputs(index: pd.DataFrame) -> None:
    """Validation data is to_model_input of each file, in index order, with no augmentation."""
    rows = index.iloc[:8]
    x, y, w = _first_batch(make_dataset(rows, SPEC, RSNA_LABELS, batch_size=8))
    assert np.all(w == 1.0)
    np.testing.assert_array_equal(x, load_inputs(list(rows["path"]), SPEC))
    np.testing.assert_array_equal(y, label_matrix(rows, RSNA_LABELS))


def test_augmentation_is_seeded(index: pd.DataFrame) -> None:
    """Same seed gives the same augmented batch; another seed gives another one."""

    def batch(seed: int) -> np.ndarray:
        ds = make_dataset(index, SPEC, RSNA_LABELS, 8, True, Augment(seed=seed), seed=seed)
        return _first_batch(ds)[0]

    first, again, other = batch(3), batch(3), batch(4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.min() >= 0.0 and first.max() <= 1.0


def test_augmentation_changes_training_images(index: pd.DataFrame) -> None:
    """With strength 1 the training batch differs from the same rows unaugmented."""
    rows = index.iloc[:8]
    plain = make_dataset(rows, SPEC, ("any",), 8, True, Augment(strength=0.0), seed=1)
    augmented = make_dataset(rows, SPEC, ("any",), 8, True, Augment(strength=1.0), seed=1)
    x_plain, x_aug = _first_batch(plain)[0], _first_batch(augmented)[0]
    assert x_plain.shape == x_aug.shape == (8, *SPEC.input_shape)
    assert not np.allclose(x_plain, x_aug)


def test_mix_batch_mixes_images_targets_and_weights_with_one_lambda() -> None:
    """Every output is lam * own + (1 - lam) * partner with the same lam for image, target and
    weight; a seed fixes the mixes."""
    n = 16
    x = np.broadcast_to(
        np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None, None, None], (n, 4, 4, 1)
    )
    y = (np.arange(n) % 2).astype(np.float32)[:, None]
    w = np.where(y[:, 0] == 1, 3.0, 0.5).astype(np.float32)
    mx, my, mw = (np.asarray(t) for t in mix_batch(x, y, w, 0.4, keras.random.SeedGenerator(7)))
    again = np.asarray(mix_batch(x, y, w, 0.4, keras.random.SeedGenerator(7))[0])
    np.testing.assert_array_equal(mx, again)
    assert mx.shape == x.shape and my.shape == y.shape and mw.shape == w.shape
    assert 0.0 <= mx.min() and mx.max() <= 1.0 and 0.0 <= my.min() and my.max() <= 1.0
    own = x[:, 0, 0, 0]
    for i in range(n):
        value = mx[i, 0, 0, 0]
        # Which partner and lam reproduce the image? The same must reproduce target and weight.
        fits = []
        for j in range(n):
            if own[i] == own[j]:
                fits.append((j, 1.0) if value == pytest.approx(own[i], abs=1e-6) else None)
                continue
            lam = (value - own[j]) / (own[i] - own[j])
            if -1e-5 <= lam <= 1 + 1e-5:
                fits.append((j, lam))
        assert any(
            f is not None
            and my[i, 0] == pytest.approx(f[1] * y[i, 0] + (1 - f[1]) * y[f[0], 0], abs=1e-4)
            and mw[i] == pytest.approx(f[1] * w[i] + (1 - f[1]) * w[f[0]], abs=1e-4)
            for f in fits
        ), i
    assert ((my > 0.01) & (my < 0.99)).any()  # soft targets appear


def test_mixup_in_the_training_pipeline_only_when_asked(index: pd.DataFrame) -> None:
    """Augment(mixup=0) keeps hard 0/1 targets; mixup > 0 gives soft ones; validation never."""
    rows = index.iloc[:16]
    hard = _batch(rows, Augment(strength=0.0))[1]
    soft = _batch(rows, Augment(strength=0.0, mixup=0.4))[1]
    again = _batch(rows, Augment(strength=0.0, mixup=0.4))[1]
    assert set(np.unique(hard)) <= {0.0, 1.0}
    assert ((soft > 0.01) & (soft < 0.99)).any()
    np.testing.assert_array_equal(soft, again)  # seeded: a rebuilt pipeline mixes the same
    _, val_y, val_w = _batch(rows, Augment(mixup=0.4), training=False)
    assert np.all(val_w == 1.0)  # every image read: full weight
    assert set(np.unique(val_y)) <= {0.0, 1.0}


def test_gamma_gives_each_training_image_its_own_display_curve(index: pd.DataFrame) -> None:
    """Augment(gamma=g): every image is the plain one raised to one power in [e^-g, e^g]; the
    powers differ between images, black stays black, and validation is untouched."""
    rows = index.iloc[:16]
    plain = _batch(rows, Augment(strength=0.0))[0]
    curved = _batch(rows, Augment(strength=0.0, gamma=0.5))[0]
    again = _batch(rows, Augment(strength=0.0, gamma=0.5))[0]
    np.testing.assert_array_equal(curved, again)
    powers = []
    for a, b in zip(plain, curved, strict=True):
        mid = (a > 0.05) & (a < 0.95)
        power = np.median(np.log(b[mid]) / np.log(a[mid]))
        np.testing.assert_allclose(b, a**power, atol=2e-3)
        powers.append(power)
    assert all(np.exp(-0.5) - 1e-3 <= p <= np.exp(0.5) + 1e-3 for p in powers)
    assert np.ptp(powers) > 0.1
    assert (curved[plain == 0.0] == 0.0).all()
    val = _batch(rows, Augment(gamma=0.5), training=False)[0]
    np.testing.assert_array_equal(val, load_inputs(list(rows["path"]), SPEC))


def test_blur_smooths_about_half_the_training_images(index: pd.DataFrame) -> None:
    """Augment(blur=s): some images come out exactly as they went in, the others smoother (less
    total variation, the same mean brightness); validation is untouched."""
    rows = index.iloc[:16]
    plain = _batch(rows, Augment(strength=0.0))[0]
    blurred = _batch(rows, Augment(strength=0.0, blur=1.5))[0]

    def variation(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x, axis=0)).sum() + np.abs(np.diff(x, axis=1)).sum())

    same = [np.allclose(a, b, atol=1e-6) for a, b in zip(plain, blurred, strict=True)]
    assert 0 < sum(same) < len(same)
    for a, b, kept in zip(plain, blurred, same, strict=True):
        if not kept:
            assert variation(b) < 0.9 * variation(a)
            assert b.mean() == pytest.approx(a.mean(), abs=0.03)
    val = _batch(rows, Augment(blur=1.5), training=False)[0]
    np.testing.assert_array_equal(val, load_inputs(list(rows["path"]), SPEC))


def _head(n: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` drawn heads: air 0, a bone ring 0.95, brain 0.45; returns x and the brain and bone
    masks."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    brain = r < 0.40 * size
    bone = (r >= 0.40 * size) & (r < 0.46 * size)
    x = np.where(brain, 0.45, np.where(bone, 0.95, 0.0)).astype(np.float32)
    return np.repeat(x[None, ..., None], n, axis=0), brain, bone


def test_dilate_and_erode_match_opencv() -> None:
    """The cumulative-sum dilation and erosion equal OpenCV's with a square kernel, outside the
    image counting as background for both."""
    import cv2

    rng = np.random.default_rng(0)
    masks = (rng.random((3, 40, 40)) > 0.7).astype(np.uint8)
    masks[2, 5:35, :] = 1  # touches the image edge: eroded from it
    for k in (1, 3, 7):
        kernel = np.ones((k, k), np.uint8)
        grown = np.asarray(_dilate(masks[..., None].astype(np.float32), k))[..., 0]
        shrunk = np.asarray(_erode(masks[..., None].astype(np.float32), k))[..., 0]
        for m, g, s in zip(masks, grown, shrunk, strict=True):
            np.testing.assert_array_equal(g, cv2.dilate(m, kernel, borderValue=0))
            np.testing.assert_array_equal(
                s, cv2.erode(m, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            )


def test_paste_lesions_paints_a_brighter_blob_into_brain_only_and_relabels() -> None:
    """share 1: every negative gets one blob brighter than brain, painted on brain only (bone
    and air untouched), its centre of mass clear of the bone, and its label becomes 1;
    positives are left exactly as they were."""
    x, brain, _ = _head(12)
    y = np.array([[0.0]] * 8 + [[1.0]] * 4, dtype=np.float32)
    out, labels = (np.asarray(t) for t in paste_lesions(x, y, 1.0, keras.random.SeedGenerator(1)))
    np.testing.assert_array_equal(labels, np.ones((12, 1)))
    np.testing.assert_array_equal(out[8:], x[8:])
    size = x.shape[1]
    for before, after in zip(x[:8, ..., 0], out[:8, ..., 0], strict=True):
        changed = np.abs(after - before) > 0.02
        assert changed.sum() > 4
        assert not (changed & ~brain).any()
        assert after[changed].mean() > 0.45 + 0.1
        # Its centre of mass keeps the margin from the bone
        gain = np.clip(after - before, 0, None)
        cy, cx = (np.mgrid[:size, :size] * gain).sum(axis=(1, 2)) / gain.sum()
        assert np.hypot(cy - size / 2 + 0.5, cx - size / 2 + 0.5) < 0.37 * size
    assert len({np.argmax(a - x[0]) for a in out[:8]}) > 1  # not one place for all


def test_paste_lesions_share_and_seed() -> None:
    """share 0 changes nothing; about ``share`` of the negatives get a lesion; the same seed
    paints the same; an image with no brain (all air) is never relabelled."""
    x, _, _ = _head(64)
    y = np.zeros((64, 1), np.float32)
    none = paste_lesions(x, y, 0.0, keras.random.SeedGenerator(2))
    np.testing.assert_array_equal(np.asarray(none[0]), x)
    np.testing.assert_array_equal(np.asarray(none[1]), y)
    half = [np.asarray(t) for t in paste_lesions(x, y, 0.5, keras.random.SeedGenerator(2))]
    again = [np.asarray(t) for t in paste_lesions(x, y, 0.5, keras.random.SeedGenerator(2))]
    np.testing.assert_array_equal(half[0], again[0])
    assert 16 <= half[1].sum() <= 48
    painted = [not np.array_equal(a, b) for a, b in zip(half[0], x, strict=True)]
    np.testing.assert_array_equal(painted, half[1][:, 0] == 1)
    air = np.zeros_like(x[:4])
    out, labels = paste_lesions(air, y[:4], 1.0, keras.random.SeedGenerator(2))
    assert not np.asarray(labels).any() and not np.asarray(out).any()


def test_lesions_on_real_negatives_in_the_training_pipeline_only(head_ct_dir: Path) -> None:
    """Augment(lesion=1) on real Kaggle negatives: every training image gets a lesion and the
    label 1, inside the head; validation batches are the plain inputs with their labels; HU
    input, subtype labels or the asymmetry channel are refused by name."""
    from hemo.datasets import build_index

    rows = build_index(head_ct_dir)
    rows = rows[rows["label_any"] == 0].iloc[:8].reset_index(drop=True)
    spec = InputSpec(size=64, mode="display", channels=1, crop_head=True)
    plain = load_inputs(list(rows["path"]), spec)
    lesion = Augment(strength=0.0, lesion=1.0)
    x, y, _ = _first_batch(make_dataset(rows, spec, ("any",), 8, True, lesion, seed=3))
    assert (y == 1).all()
    order = [int(np.argmin([np.abs(p - a).sum() for p in plain])) for a in x]
    assert sorted(order) == list(range(8))  # each batch image is one of the rows, painted
    for a, i in zip(x, order, strict=True):
        changed = np.abs(a - plain[i]) > 0.02
        assert changed.any() and (a[changed] > plain[i][changed]).mean() > 0.9
        assert (plain[i][changed] > 0.05).all()  # never on air
    vx, vy, _ = _first_batch(make_dataset(rows, spec, ("any",), 8, False, lesion))
    np.testing.assert_array_equal(vx, plain)
    assert (vy == 0).all()
    with pytest.raises(ConfigError, match="augment.lesion .* needs display input"):
        make_dataset(rows, InputSpec(size=32), ("any",), 8, True, lesion)
    with pytest.raises(ConfigError, match="labels 'any'"):
        make_dataset(rows, spec, ("any", "subdural"), 8, True, lesion)
    asym = InputSpec(size=64, mode="display", channels=2, crop_head=True, asymmetry=True)
    hyper = InputSpec(size=64, mode="display", channels=2, crop_head=True, hyperdensity=True)
    for maps in (asym, hyper):  # painted gray, the maps would not show the lesion
        with pytest.raises(ConfigError, match="without the asymmetry or hyperdensity channel"):
            make_dataset(rows, maps, ("any",), 8, True, lesion)


def test_class_weights_balance_the_train_split() -> None:
    """Weights are n / (2 n_class) so both classes weigh the same in total."""
    df = pd.DataFrame({"label_any": [0, 0, 0, 1]})
    assert class_weights(df) == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}
    assert class_weights(pd.DataFrame({"label_any": [0, 0]})) == {0: 1.0, 1: 1.0}


def test_training_batches_carry_sample_weights(index: pd.DataFrame) -> None:
    """Training batches are (x, y, w) with w from the class weight of each row's any label."""
    weights = {0: 0.5, 1: 3.0}
    _, y, w = _first_batch(make_dataset(index, SPEC, ("any",), 16, True, None, weights=weights))
    np.testing.assert_array_equal(w, np.where(y[:, 0] == 1, 3.0, 0.5))


def test_row_weights_multiply_the_class_weights(index: pd.DataFrame) -> None:
    """Per-row factors (e.g. look-alike group weights) multiply each row's class weight; a
    factor vector of the wrong length is refused."""
    factors = np.where(index["label_any"].to_numpy() == 1, 2.0, 0.25).astype(np.float32)
    weights = {0: 0.5, 1: 3.0}
    dataset = make_dataset(
        index, SPEC, ("any",), 16, True, None, weights=weights, row_weights=factors
    )
    _, y, w = _first_batch(dataset)
    np.testing.assert_allclose(w, np.where(y[:, 0] == 1, 6.0, 0.125))
    with pytest.raises(DatasetError, match="row_weights has shape"):
        make_dataset(index, SPEC, ("any",), 16, True, None, row_weights=factors[:-1])


def test_labels_follow_the_dataset() -> None:
    """Six RSNA labels when every subtype is known, else the binary any."""
    full = pd.DataFrame({c: [0] for c in ("label_any", *RSNA_LABELS[1:])})
    assert labels_for(full) == RSNA_LABELS
    assert labels_for(full.assign(subdural=[None])) == ("any",)
    assert labels_for(pd.DataFrame({"label_any": [1]})) == ("any",)


def test_unknown_labels_are_refused() -> None:
    """A label column with unknown values cannot be trained on."""
    df = pd.DataFrame({"label_any": [1, 0], "subdural": [1, None]})
    with pytest.raises(DatasetError, match="'subdural' has 1 unknown values"):
        label_matrix(df, ("any", "subdural"))


def test_empty_rows_are_refused() -> None:
    """An empty split gives a DatasetError, not an empty dataset."""
    with pytest.raises(DatasetError, match="no rows"):
        make_dataset(pd.DataFrame({"path": [], "label_any": []}), SPEC, ("any",))


def test_augment_with_mask_moves_the_mask_exactly_as_the_image() -> None:
    """Flip, rotation and zoom move image and mask alike (an image equal to its mask stays
    equal to it), intensity changes touch the image only, and the image comes out exactly as
    the augmenter alone makes it."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    blobs = (rng.random((6, 32, 32, 1)) > 0.9).astype(np.float32)
    geometric = Augment(strength=2.0, seed=3, contrast_factor=0.0, brightness_factor=0.0)
    x, mask = augment_with_mask(make_augmenter(geometric), tf.constant(blobs), tf.constant(blobs))
    np.testing.assert_allclose(np.asarray(x), np.asarray(mask), atol=1e-6)
    assert not np.allclose(np.asarray(mask), blobs)  # it did move
    full = Augment(strength=2.0, seed=3)
    image = np.stack([rng.random((32, 32, 2))] * 6).astype(np.float32)
    x, mask = augment_with_mask(make_augmenter(full), tf.constant(image), tf.constant(blobs))
    alone = make_augmenter(full)(tf.constant(image), training=True)
    np.testing.assert_allclose(np.asarray(x), np.asarray(alone), atol=1e-6)
    assert mask.shape == blobs.shape


def test_jitter_maps_off_keeps_the_maps_out_of_the_intensity_jitter() -> None:
    """augment.jitter_maps = false: the gray channels come out exactly as with every channel
    jittered, the map channels as the geometry (and blur) alone moves them, so a map of 0
    stays 0; on (the default), brightness lifts the maps too; gamma likewise."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    gray = rng.random((8, 32, 32, 1)).astype(np.float32)
    maps = np.zeros((8, 32, 32, 2), np.float32)
    maps[:, 10:14, 4:8] = 0.6  # a one-sided blob in both maps
    x = tf.constant(np.concatenate([gray, maps], axis=-1))
    y, w = tf.zeros((8, 1)), tf.ones((8,))
    full = Augment(strength=2.0, seed=3, blur=1.0)
    apart, _, _ = train_preprocessing(make_augmenter(full), gray_channels=1)(x, y, w)
    every, _, _ = train_preprocessing(make_augmenter(full))(x, y, w)
    apart, every = np.asarray(apart), np.asarray(every)
    np.testing.assert_allclose(apart[..., :1], every[..., :1], atol=1e-6)
    geometry = Augment(strength=2.0, seed=3, blur=1.0, contrast_factor=0.0, brightness_factor=0.0)
    moved = np.clip(np.asarray(make_augmenter(geometry)(x, training=True)), 0, 1)
    np.testing.assert_allclose(apart[..., 1:], moved[..., 1:], atol=1e-6)
    assert (apart[..., 1:] == 0).mean() > 0.8 and (every[..., 1:] == 0).mean() < 0.5
    direct = np.asarray(augment_gray_only(make_augmenter(full), x, 1))
    np.testing.assert_allclose(np.clip(direct, 0, 1), apart, atol=1e-6)
    curved, _, _ = train_preprocessing(None, gamma=0.5, gray_channels=1)(x, y, w)
    np.testing.assert_array_equal(np.asarray(curved)[..., 1:], maps)
    assert not np.allclose(np.asarray(curved)[..., :1], gray)


def test_jitter_maps_off_is_wired_from_the_dataset(index: pd.DataFrame) -> None:
    """make_dataset leaves the maps of a display input with maps out of the jitter when
    Augment.jitter_maps is off (a map of a symmetric phantom stays mostly 0 under strong
    brightness jitter) and refuses it with mask supervision."""
    rows = index[index["split"] == "train"].head(16)
    spec = InputSpec(size=32, mode="display", channels=2, crop_head=True, asymmetry=True)
    none = Augment(strength=0.0, seed=0)
    jitter = dict(strength=4.0, seed=0, rotation_deg=0.0, zoom_fraction=0.0, flip="horizontal")
    outs = {}
    for on in (True, False):
        ds = make_dataset(rows, spec, ("any",), 16, True, Augment(**jitter, jitter_maps=on), 0)
        outs[on] = np.asarray(next(iter(ds))[0])
    plain = np.asarray(next(iter(make_dataset(rows, spec, ("any",), 16, True, none, 0)))[0])
    assert np.abs(outs[False][..., 1].mean() - plain[..., 1].mean()) < 0.01
    assert np.abs(outs[True][..., 1] - outs[False][..., 1]).max() > 0.1
    with pytest.raises(ConfigError, match="jitter_maps"):
        make_dataset(rows, spec, ("any",), 8, True, Augment(jitter_maps=False), 0, mask_grid=4)


def test_mask_targets_carry_each_rows_mask_on_the_grid(index: pd.DataFrame) -> None:
    """With mask_grid the targets are [labels | has_mask | grid lesion fractions]: validation
    gives each row's carried mask area-averaged onto the grid, rows without a mask are flagged
    0 with an empty grid, training images are exactly the plain pipeline's, and synthetic
    lesions or mixup are refused."""
    import cv2

    from hemo.cam.metrics import read_mask
    from hemo.io import read_scan
    from hemo.preprocess import mask_to_model_input

    spec = InputSpec(size=32, mode="display", channels=1, crop_head=True)
    rows = pd.concat(
        [index[index["label_any"] == 1].iloc[:5], index[index["label_any"] == 0].iloc[:3]]
    )
    rows = rows.reset_index(drop=True)
    rows.loc[7, "mask_path"] = pd.NA  # a row from a dataset without masks
    x, targets, _ = _first_batch(make_dataset(rows, spec, ("any",), 8, mask_grid=4))
    assert targets.shape == (8, 1 + 1 + 16)
    np.testing.assert_array_equal(targets[:, 0], rows["label_any"].to_numpy())
    np.testing.assert_array_equal(targets[:, 1], [1] * 7 + [0])
    for i in range(7):
        row = rows.iloc[i]
        carried = mask_to_model_input(
            read_mask(row["mask_path"], "any"), read_scan(row["path"]), spec
        )
        coarse = cv2.resize(carried, (4, 4), interpolation=cv2.INTER_AREA).ravel()
        np.testing.assert_allclose(targets[i, 2:], coarse, atol=1e-5)
    assert targets[:5, 2:].sum(axis=1).min() > 0  # positives have a lesion somewhere
    assert not targets[5:, 2:].any()  # negatives and the maskless row have none
    augment = Augment(strength=2.0, seed=4)
    plain = _first_batch(make_dataset(rows, spec, ("any",), 8, True, augment, seed=2))
    masked = _first_batch(make_dataset(rows, spec, ("any",), 8, True, augment, seed=2, mask_grid=4))
    np.testing.assert_allclose(masked[0], plain[0], atol=1e-6)
    np.testing.assert_array_equal(masked[1][:, 0], plain[1][:, 0])
    np.testing.assert_array_equal(masked[2], plain[2])
    for extra in ({"mixup": 0.2}, {"lesion": 0.3}):
        with pytest.raises(ConfigError, match="mask supervision cannot follow"):
            make_dataset(rows, spec, ("any",), 8, True, Augment(**extra), mask_grid=4)


def test_cache_is_decided_by_the_bytes_the_tensors_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto caches what fits in a quarter of physical memory (4 GiB where unknown); true is
    refused when the tensors would not fit (the full RSNA set at 256 px is ~590 GB), naming
    the size and the way out; false never caches."""
    import hemo.pipeline as pipeline

    spec = InputSpec(size=128)  # 3 windows: 196,608 bytes per image
    assert cache_bytes(1000, spec) == 1000 * 128 * 128 * 3 * 4
    monkeypatch.setattr(pipeline, "physical_memory_bytes", lambda: 2**30)
    assert decide_cache(1000, spec, None) is True  # 188 MiB <= 256 MiB
    assert decide_cache(2000, spec, None) is False  # 375 MiB
    assert decide_cache(4000, spec, True) is True  # 750 MiB <= 819 MiB
    with pytest.raises(
        ConfigError,
        match=r"keep 5000 preprocessed images \(937\.5 MiB\) in memory, and this machine has 1\.0 GiB",
    ):
        decide_cache(5000, spec, True)
    assert decide_cache(10, spec, False) is False
    monkeypatch.setattr(pipeline, "physical_memory_bytes", lambda: None)
    assert decide_cache(20_000, spec, None) is True  # 3.7 GiB <= 4 GiB
    assert decide_cache(30_000, spec, None) is False
    assert decide_cache(10**6, spec, True) is True  # unknown memory: the user's word stands
    monkeypatch.undo()
    assert pipeline.physical_memory_bytes() > 2**28  # this machine says how much it has


def test_an_unreadable_image_keeps_its_place_with_weight_zero(
    index: pd.DataFrame, tmp_path: Path
) -> None:
    """A damaged file among good ones: training and validation batches keep every row (the
    epoch's batch count stays known), the damaged one black with sample weight 0, the others
    as read and weighted; the file is listed by left_out."""
    from hemo.pipeline import left_out

    rows = index.iloc[:8].copy()
    bad = tmp_path / "damaged.dcm"
    bad.write_bytes(Path(rows.loc[0, "path"]).read_bytes()[:300])
    rows.loc[0, "path"] = str(bad)
    for training in (True, False):
        ds = make_dataset(rows, SPEC, ("any",), len(rows), training)
        assert int(ds.cardinality()) == 1
        x, _, w = _first_batch(ds)
        assert len(w) == len(rows)
        if not training:  # training batches are shuffled: find the black one
            assert w[0] == 0.0 and not x[0].any() and np.all(w[1:] == 1.0)
        assert np.sum(w == 0.0) == 1 and np.all(w[w > 0] > 0)
    assert left_out([bad])[str(bad)].startswith(f"{bad}: ")  # the reason names the file


def test_mixup_gives_no_weight_to_a_mix_holding_a_left_out_image() -> None:
    """mix_batch: a mix whose image or partner has weight 0 (an unreadable image) gets weight
    0, so the left-out image's label reaches no loss; mixes of readable images keep theirs."""
    import keras

    x = np.random.default_rng(0).uniform(size=(6, 4, 4, 1)).astype(np.float32)
    y = np.eye(6, dtype=np.float32)  # one label per row: the mixed targets name the partner
    w = np.array([1.0, 0.0, 2.0, 1.0, 1.0, 0.5], np.float32)
    seen_zero = seen_kept = False
    for seed in range(8):
        _, mixed_y, mixed_w = (
            np.asarray(t) for t in mix_batch(x, y, w, 0.4, keras.random.SeedGenerator(seed))
        )
        for i in range(6):
            others = [j for j in range(6) if j != i and mixed_y[i, j] > 1e-6]
            partner = others[0] if others else i
            if w[i] == 0 or w[partner] == 0:
                assert mixed_w[i] == 0.0
                seen_zero |= partner == 1 and i != 1
            else:
                assert mixed_w[i] > 0.0
                seen_kept = True
    assert seen_zero and seen_kept  # both cases were drawn
