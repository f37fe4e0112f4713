"""Tests of the Grad-CAM family (hemo.cam.base, gradcam, gradcampp, hirescam, registry)."""

from __future__ import annotations

import threading

import keras
import numpy as np
import pytest

from hemo.cam import METHODS, explain
from hemo.cam.base import find_cam_layer, normalise, upsample
from hemo.config import RSNA_LABELS
from hemo.model import ARCHITECTURES, CAM_LAYERS, build_model
from hemo.preprocess import InputSpec

SIZE = 32
POOL = 4
BRIGHT = 1.0
BACKGROUND = 0.1
SQUARE = (slice(20, 28), slice(4, 12))


def bright_square_model(head: str = "avg", n_outputs: int = 1) -> keras.Model:
    """A conv layer firing only on bright pixels, pooled, a Dense logit and a sigmoid."""
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    features = keras.layers.Conv2D(
        2,
        3,
        padding="same",
        activation="relu",
        name="features",
        kernel_initializer=keras.initializers.Constant(1 / 9),
        bias_initializer=keras.initializers.Constant(-0.5),  # fires where the local mean > 0.5
    )(inputs)
    pooled = keras.layers.AveragePooling2D(POOL, name="pooled")(features)
    pool = keras.layers.GlobalAveragePooling2D if head == "avg" else keras.layers.GlobalMaxPooling2D
    vector = pool(name="head_pool")(pooled)
    kernel = np.ones((2, n_outputs), np.float32)
    kernel[:, 1:] = -1.0  # every output but the first is *lowered* by the square
    logits = keras.layers.Dense(
        n_outputs, name="logits", kernel_initializer=keras.initializers.Constant(kernel)
    )(vector)
    probs = keras.layers.Activation("sigmoid", name="probabilities")(logits)
    return keras.Model(inputs, probs, name=f"square_{head}")


def square_image(rows: slice = SQUARE[0], cols: slice = SQUARE[1]) -> np.ndarray:
    image = np.full((SIZE, SIZE, 1), BACKGROUND, np.float32)
    image[rows, cols] = BRIGHT
    return image


@pytest.fixture(scope="module")
def avg_model() -> keras.Model:
    return bright_square_model("avg")


@pytest.mark.parametrize("head", ["avg", "max"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_map_peaks_on_bright_square(method: str, head: str) -> None:
    """Every method puts the maximum on the bright square, for average and max pooling heads."""
    model = bright_square_model(head)
    result = explain(model, square_image(), method=method, layer="pooled")
    row, col = result.peak
    assert SQUARE[0].start <= row < SQUARE[0].stop and SQUARE[1].start <= col < SQUARE[1].stop
    assert not result.flat
    assert result.heatmap.shape == (SIZE, SIZE) and result.heatmap.dtype == np.float32
    assert result.heatmap.min() == 0.0 and result.heatmap.max() == pytest.approx(1.0)
    assert result.heatmap[2, SIZE - 3] == 0.0  # far from the square


@pytest.mark.parametrize("method", sorted(METHODS))
def test_map_follows_the_square(method: str, avg_model: keras.Model) -> None:
    """Moving the square moves the peak."""
    result = explain(avg_model, square_image(slice(2, 8), slice(22, 30)), method=method)
    row, col = result.peak
    assert 2 <= row < 8 and 22 <= col < 30


def test_gap_head_known_map(avg_model: keras.Model) -> None:
    """With a GAP head all three methods equal the normalised, upsampled activation sum."""
    x = square_image()
    layer = keras.Model(avg_model.inputs[0], avg_model.get_layer("pooled").output)
    raw = np.asarray(layer(x[None]))[0].sum(axis=-1)
    expected, _ = normalise(upsample(raw, (SIZE, SIZE)))
    for method in METHODS:
        result = explain(avg_model, x, method=method, layer="pooled")
        np.testing.assert_allclose(result.heatmap, expected, atol=1e-5, err_msg=method)


def test_default_layer_is_last_spatial(avg_model: keras.Model) -> None:
    """Without a layer name the last (N, h, w, C) layer is used."""
    assert find_cam_layer(avg_model) == "pooled"
    assert explain(avg_model, square_image()).layer == "pooled"


def test_result_fields(avg_model: keras.Model) -> None:
    """Logit and probability are the model's; method, label and layer are recorded."""
    x = square_image()
    result = explain(avg_model, x, method="hirescam", label="any", layer="features")
    probability = float(np.asarray(avg_model(x[None]))[0, 0])
    assert result.probability == pytest.approx(probability, abs=1e-6)
    assert result.probability == pytest.approx(1 / (1 + np.exp(-result.logit)), abs=1e-6)
    assert (result.method, result.label, result.layer) == ("hirescam", "any", "features")
    assert not result.heatmap.flags.writeable


def test_label_by_name_and_index() -> None:
    """Output 0 (raised by the square) has a map; output 1 (lowered by it) is flat."""
    model = bright_square_model("avg", n_outputs=2)
    x = square_image()
    labels = ("any", "subdural")
    by_name = explain(model, x, label="any", labels=labels)
    by_index = explain(model, x, label=0, labels=labels)
    np.testing.assert_array_equal(by_name.heatmap, by_index.heatmap)
    assert by_name.label == "any" and not by_name.flat
    lowered = explain(model, x, label="subdural", labels=labels)
    assert lowered.flat and lowered.label == "subdural"
    assert not lowered.heatmap.any()


def test_unknown_label(avg_model: keras.Model) -> None:
    """A label the model does not output is refused with the known outputs."""
    with pytest.raises(
        ValueError, match=r"label 'subdural' is not an output of this model; outputs: \['any'\]"
    ):
        explain(avg_model, square_image(), label="subdural")
    with pytest.raises(ValueError, match="label index 3 out of range: the model has 1 outputs"):
        explain(avg_model, square_image(), label=3)


def test_unknown_method_and_layer(avg_model: keras.Model) -> None:
    """Unknown method and layer names are refused by name."""
    with pytest.raises(
        ValueError, match=r"unknown CAM method 'scorecam'; choose one of \['gradcam'"
    ):
        explain(avg_model, square_image(), method="scorecam")
    with pytest.raises(ValueError, match="layer 'conv9' not found in model 'square_avg'"):
        explain(avg_model, square_image(), layer="conv9")


def test_wrong_input_shape(avg_model: keras.Model) -> None:
    """An input of the wrong size names the expected shape."""
    with pytest.raises(
        ValueError, match=r"input has shape \(16, 16, 1\); the model expects \(N, 32, 32, 1\)"
    ):
        explain(avg_model, np.zeros((16, 16, 1), np.float32))


def test_constant_logit_gives_flat_zero_map() -> None:
    """A logit that ignores the input has zero gradients: all-zero map, flat=True, no NaN."""
    inputs = keras.Input((SIZE, SIZE, 1))
    features = keras.layers.Conv2D(2, 3, activation="relu", name="features")(inputs)
    vector = keras.layers.GlobalAveragePooling2D()(features)
    logits = keras.layers.Dense(
        1,
        name="logits",
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(2.0),
    )(vector)
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(logits))
    for method in METHODS:
        result = explain(model, square_image(), method=method)
        assert result.flat, method
        assert not np.isnan(result.heatmap).any()
        assert not result.heatmap.any()
        assert result.logit == pytest.approx(2.0)


def test_dark_input_gives_flat_map(avg_model: keras.Model) -> None:
    """No bright pixel: activations are zero everywhere, the map is flat and NaN-free."""
    for method in METHODS:
        result = explain(avg_model, np.zeros((SIZE, SIZE, 1), np.float32), method=method)
        assert result.flat and not result.heatmap.any() and not np.isnan(result.heatmap).any()


def test_model_without_logits_layer() -> None:
    """A model ending in Dense(sigmoid) is explained on its pre-sigmoid logit, unchanged."""
    inputs = keras.Input((SIZE, SIZE, 1))
    features = keras.layers.Conv2D(
        2,
        3,
        padding="same",
        activation="relu",
        name="features",
        kernel_initializer=keras.initializers.Constant(1 / 9),
        bias_initializer=keras.initializers.Constant(-0.5),
    )(inputs)
    vector = keras.layers.GlobalAveragePooling2D()(features)
    probs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones")(vector)
    model = keras.Model(inputs, probs)
    x = square_image()
    result = explain(model, x)
    probability = float(np.asarray(model(x[None]))[0, 0])
    assert result.probability == pytest.approx(probability, abs=1e-6)
    row, col = result.peak
    assert SQUARE[0].start <= row < SQUARE[0].stop and SQUARE[1].start <= col < SQUARE[1].stop
    assert model.layers[-1].get_config()["activation"] == "sigmoid"


def test_no_mutation_of_model_or_input() -> None:
    """Weights, layer configs and the input array are identical before and after."""
    model = bright_square_model("max", n_outputs=2)
    x = square_image()
    x_before = x.copy()
    weights_before = [w.copy() for w in model.get_weights()]
    config_before = model.get_config()
    layer_configs_before = [layer.get_config() for layer in model.layers]
    for method in METHODS:
        explain(model, x, method=method, labels=("any", "subdural"))
        explain(model, np.stack([x, x]), method=method, label=1, layer="features")
    np.testing.assert_array_equal(x, x_before)
    for before, after in zip(weights_before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert model.get_config() == config_before
    assert [layer.get_config() for layer in model.layers] == layer_configs_before
    assert model.output.shape == (None, 2)


def test_batch_equals_singles(avg_model: keras.Model) -> None:
    """A batch gives one result per input, each equal to explaining it alone."""
    xs = np.stack([square_image(), square_image(slice(2, 8), slice(22, 30))])
    results = explain(avg_model, xs, method="gradcam++")
    assert isinstance(results, list) and len(results) == 2
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_allclose(
            result.heatmap, explain(avg_model, x, method="gradcam++").heatmap, atol=1e-6
        )


def test_threads_match_one_thread() -> None:
    """Four threads on one freshly loaded model give the same maps as one thread."""
    model = bright_square_model("max")
    rng = np.random.default_rng(0)
    inputs = []
    for _ in range(8):
        row, col = rng.integers(0, SIZE - 8, size=2)
        inputs.append(square_image(slice(row, row + 8), slice(col, col + 8)))
    methods = sorted(METHODS)
    results: dict[tuple[int, str], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(indices: range) -> None:
        try:
            for i in indices:
                for method in methods:
                    results[(i, method)] = explain(model, inputs[i], method=method).heatmap
        except BaseException as exc:  # surfaced below, so a failing thread fails the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(range(i, 8, 4),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for i, x in enumerate(inputs):
        for method in methods:
            np.testing.assert_array_equal(
                results[(i, method)], explain(model, x, method=method).heatmap
            )


ARCH_SIZE = 32


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_gives_a_valid_map(arch: str) -> None:
    """Each registered architecture (random weights) gives a [0, 1] map on its CAM layer."""
    spec = InputSpec(size=ARCH_SIZE)
    model = build_model(arch, spec, RSNA_LABELS, weights=None)
    x = np.random.default_rng(0).random((ARCH_SIZE, ARCH_SIZE, 3)).astype(np.float32)
    for method in METHODS:
        result = explain(model, x, method=method, label="subdural")
        assert result.layer == CAM_LAYERS[arch]
        assert result.heatmap.shape == (ARCH_SIZE, ARCH_SIZE)
        assert result.heatmap.dtype == np.float32
        assert not np.isnan(result.heatmap).any()
        assert 0.0 <= result.heatmap.min() <= result.heatmap.max() <= 1.0
        assert result.flat or result.heatmap.max() == pytest.approx(1.0)


def test_gradient_graph_cached_weakly() -> None:
    """The gradient graph is built once per (model, layer) and freed with the model."""
    import gc
    import weakref

    from hemo.cam import base

    model = bright_square_model("avg")
    explain(model, square_image(), method="gradcam")
    explain(model, square_image(), method="hirescam")
    assert list(base._CACHE[model]) == ["pooled"]
    explain(model, square_image(), layer="features")
    assert sorted(base._CACHE[model]) == ["features", "pooled"]
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_gradcam_matches_keras_io_recipe() -> None:
    """On a compact model, the raw Grad-CAM map equals keras-io's make_gradcam_heatmap recipe."""
    import tensorflow as tf

    from hemo.cam.gradcam import GradCAM

    keras.utils.set_random_seed(1)
    model = build_model("compact", InputSpec(size=ARCH_SIZE), RSNA_LABELS, weights=None)
    layer = CAM_LAYERS["compact"]
    x = np.random.default_rng(2).random((2, ARCH_SIZE, ARCH_SIZE, 3)).astype(np.float32)
    grad_model = keras.Model(
        model.inputs[0], [model.get_layer(layer).output, model.get_layer("logits").output]
    )
    expected = []
    for sample in x:
        with tf.GradientTape() as tape:
            conv, logits = grad_model(sample[None], training=False)
            score = logits[:, RSNA_LABELS.index("subdural")]
        pooled = tf.reduce_mean(tape.gradient(score, conv), axis=(0, 1, 2))
        expected.append(np.maximum((conv[0] @ pooled[..., None])[..., 0].numpy(), 0.0))
    raw, logits, name = GradCAM(model, layer=layer).raw_maps(x, "subdural")
    assert name == "subdural" and raw.shape == (2, *expected[0].shape)
    assert raw.max() > 0.0  # a non-trivial map
    np.testing.assert_allclose(raw, np.stack(expected), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size", [1.0, 1e-4, 1e-6])
def test_gradcampp_weights_are_the_closed_form_at_any_gradient_size(size: float) -> None:
    """Grad-CAM++'s alpha = g^2 / (2 g^2 + sum A g^3) (0 where g = 0), to rounding, also for
    gradients as small as the shipped ensemble's (~1e-4), where an absolute 1e-7 guard on the
    denominator replaced the formula; the weights' proportions do not depend on the scale."""
    from hemo.cam.gradcampp import GradCAMPlusPlus

    rng = np.random.default_rng(3)
    activations = rng.gamma(1.0, 1.0, (2, 6, 6, 5)).astype(np.float32)
    gradients = (rng.normal(0, 1, (2, 6, 6, 5)) * size).astype(np.float32)
    gradients[0, 0, 0, :] = 0.0
    g = gradients.astype(np.float64)
    total = activations.astype(np.float64).sum(axis=(1, 2), keepdims=True)
    denominator = 2 * g**2 + total * g**3
    alpha = np.divide(g**2, denominator, out=np.zeros_like(g), where=denominator != 0)
    expected = np.sum(alpha * np.maximum(g, 0), axis=(1, 2), keepdims=True)
    weights = GradCAMPlusPlus.weights(None, activations, gradients)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=0)
