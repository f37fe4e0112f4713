"""Tests of hemo.model: registry builder, flat graphs, logits model, cards, safe save/load."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import keras
import numpy as np
import pytest

from hemo import model as hm
from hemo.config import RSNA_LABELS
from hemo.errors import ModelError
from hemo.preprocess import InputSpec

SIZE = 64
SPEC = InputSpec(size=SIZE)
GRAY = InputSpec(size=SIZE, mode="display", channels=1)


def _card(spec: InputSpec = SPEC, labels=("any",), arch: str = "compact") -> hm.ModelCard:
    return hm.ModelCard("tiny", arch, spec, tuple(labels), 0.4, hm.CAM_LAYERS[arch])


def _x(spec: InputSpec, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *spec.input_shape), dtype=np.float32)


@pytest.fixture(scope="module")
def compact() -> keras.Model:
    """A tiny compact model with the six RSNA outputs."""
    keras.utils.set_random_seed(0)
    return hm.build_model("compact", SPEC, RSNA_LABELS)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(hm.ARCHITECTURES))
def test_every_architecture_builds_flat_and_trains_a_step(arch: str) -> None:
    """Each architecture builds without a nested model, has its CAM layer, and trains one step."""
    spec = SPEC if arch == "compact" else GRAY
    model = hm.build_model(arch, spec, ("any",), alpha=0.35)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.get_layer(hm.CAM_LAYERS[arch]) is not None
    assert model.output_shape == (None, 1)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    before = [w.copy() for w in model.get_layer(hm.LOGITS_LAYER).get_weights()]
    loss = model.train_on_batch(_x(spec), np.array([[0.0], [1.0]], dtype=np.float32))
    assert np.isfinite(loss)
    after = model.get_layer(hm.LOGITS_LAYER).get_weights()
    assert not np.allclose(before[0], after[0])


def test_random_init_backbone_learns_inference_statistics_in_a_short_training() -> None:
    """From random weights, an application backbone's batch norms must learn their inference
    statistics within a short training. Keras keeps them with momentum 0.999 (MobileNetV2) or 0.99,
    made for long trainings or ImageNet fine-tuning: after a small dataset's few hundred steps they
    were still near the initial 0/1 and every image got the same output in inference (chance AUC
    in a cross-validation of the 140 Kaggle images). Bright vs dark images, 100 steps (constant
    output with 0.99 or 0.999): inference mode must separate them as training did."""
    keras.utils.set_random_seed(0)
    spec = InputSpec(size=32, mode="display", channels=1)
    model = hm.build_model("mobilenet_v2", spec, ("any",), alpha=0.35)
    moments = [
        layer.momentum
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert moments and max(moments) <= hm.RANDOM_INIT_BN_MOMENTUM
    rng = np.random.default_rng(0)
    y = np.tile([0.0, 1.0], 16).astype(np.float32)[:, None]
    x = (0.2 + 0.6 * y[:, :, None, None] + 0.05 * rng.standard_normal((32, 32, 32, 1))).astype(
        np.float32
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    for _ in range(100):
        model.train_on_batch(x, y)
    p = np.asarray(model(x, training=False))[:, 0]
    assert p[y[:, 0] == 1].min() > p[y[:, 0] == 0].max()


def test_imagenet_backbone_keeps_its_batch_norm_momentum(monkeypatch) -> None:
    """Only a random-init backbone gets the faster statistics: fine-tuning ImageNet weights keeps
    the application's own momentum (its statistics are already right)."""
    seen = {}

    def fake_guard(constructor, kwargs, arch, weights):
        base = constructor(**{**kwargs, "weights": None})
        seen["weights"] = weights
        return base

    monkeypatch.setattr(hm, "_call_with_download_guard", fake_guard)
    model = hm.build_model("mobilenet_v2", GRAY, ("any",), weights="imagenet", alpha=0.35)
    assert seen["weights"] == "imagenet"
    moments = {
        layer.momentum
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert moments == {0.999}


def test_gray_input_is_repeated_to_rgb_inside_the_graph() -> None:
    """A 1-channel spec on an ImageNet backbone takes (H, W, 1) and repeats it in the graph."""
    model = hm.build_model("mobilenet_v2", GRAY, ("any",), alpha=0.35)
    assert model.inputs[0].shape[1:] == (SIZE, SIZE, 1)
    assert model.get_layer(hm.GRAY_TO_RGB_LAYER).output.shape[-1] == 3


def test_compact_cam_layer_keeps_one_eighth_resolution(compact: keras.Model) -> None:
    """The compact CNN's Grad-CAM layer is at 1/8 of the input size and the model is < 2 M params."""
    assert compact.get_layer(hm.COMPACT_CAM_LAYER).output.shape[1:3] == (SIZE // 8, SIZE // 8)
    assert compact.count_params() < 2_000_000


def test_logits_model_matches_sigmoid_and_leaves_model_unchanged(compact: keras.Model) -> None:
    """logits_model gives (CAM activations, logits) with sigmoid(logits) == model output."""
    x = _x(SPEC)
    expected = compact.predict(x, verbose=0)
    config_before = json.dumps(compact.get_config(), default=str)
    features, logits = hm.logits_model(compact)(x)
    assert features.shape[1:] == compact.get_layer(hm.COMPACT_CAM_LAYER).output.shape[1:]
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(logits))), expected, atol=1e-5)
    assert compact.outputs[0].shape[-1] == len(RSNA_LABELS)
    assert compact.get_layer(hm.PROBS_LAYER).activation.__name__ == "sigmoid"
    assert json.dumps(compact.get_config(), default=str) == config_before
    np.testing.assert_allclose(compact.predict(x, verbose=0), expected, atol=1e-6)


def test_logits_model_unknown_layer_is_refused(compact: keras.Model) -> None:
    """Asking for a layer that is not in the graph raises ModelError."""
    with pytest.raises(ModelError, match="has no layer"):
        hm.logits_model(compact, "no_such_layer")


def test_unknown_architecture_is_refused() -> None:
    """An unknown architecture name lists the registry."""
    with pytest.raises(ModelError, match="unknown architecture 'vgg'"):
        hm.build_model("vgg", SPEC, ("any",))


def test_save_load_round_trip_preserves_predictions(tmp_path: Path, compact: keras.Model) -> None:
    """.keras and .h5 files load back with identical predictions and the same card."""
    card = _card(labels=RSNA_LABELS)
    hm.save_model(compact, tmp_path / "tiny", card, h5=True)
    assert {p.name for p in tmp_path.iterdir()} == {"tiny.keras", "tiny.json", "tiny.h5"}
    x = _x(SPEC, seed=1)
    expected = compact.predict(x, verbose=0)
    for name in ("tiny.keras", "tiny.h5"):
        loaded, loaded_card = hm.load_model(tmp_path / name)
        assert loaded_card == card
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)


def test_card_json_round_trip() -> None:
    """ModelCard -> JSON -> ModelCard is the identity."""
    card = dataclasses.replace(_card(labels=RSNA_LABELS), metrics={"test": {"roc_auc": 0.9}})
    assert hm.ModelCard.from_json(card.to_json()) == card


@pytest.mark.parametrize("suffix", [".pkl", ".joblib", ".keras"])
def test_pickle_is_refused(tmp_path: Path, suffix: str) -> None:
    """A pickle file (by suffix, or by its bytes behind a .keras name) is never loaded."""
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ModelError, match="refusing to load a pickle"):
        hm.load_model(path)


def test_card_mismatch_is_refused(tmp_path: Path, compact: keras.Model) -> None:
    """A card whose labels or input size do not fit the model is refused at load time."""
    hm.save_model(compact, tmp_path / "m", _card(labels=RSNA_LABELS))
    card_path = tmp_path / "m.json"
    data = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**data, "labels": ["any"]}))
    with pytest.raises(ModelError, match="card lists 1 labels"):
        hm.load_model(tmp_path / "m.keras")
    data["input_spec"]["size"] = 128
    card_path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"InputSpec gives input \(128, 128, 3\)"):
        hm.load_model(tmp_path / "m.keras")


def test_save_refuses_a_card_that_does_not_fit(tmp_path: Path, compact: keras.Model) -> None:
    """save_model checks the card first and writes nothing on a mismatch."""
    with pytest.raises(ModelError, match="cam_layer 'relu' is not in the model"):
        hm.save_model(compact, tmp_path / "m", _card(labels=RSNA_LABELS, arch="densenet121"))
    assert not list(tmp_path.iterdir())


def test_imagenet_offline_fails_fast_naming_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing ImageNet download becomes a ModelError naming --weights none and --init."""
    from keras.src.utils import file_utils

    def offline(*_args, **_kwargs):
        raise Exception("URL fetch failure on https://example: None -- [Errno -3] name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ModelError, match=r"--weights none.*--init models/X\.keras"):
        hm.build_model("mobilenet_v2", GRAY, ("any",), weights="imagenet", alpha=0.35)


def test_weights_file_and_init_from_model(
    tmp_path: Path, compact: keras.Model, caplog: pytest.LogCaptureFixture
) -> None:
    """A .weights.h5 file loads whole; init_from copies layers whose names and shapes match and
    names the layers that start afresh (at INFO for the output layer alone)."""
    weights = tmp_path / "c.weights.h5"
    compact.save_weights(weights)
    same = hm.build_model("compact", SPEC, RSNA_LABELS, weights=weights)
    x = _x(SPEC, seed=2)
    np.testing.assert_allclose(same.predict(x, verbose=0), compact.predict(x, verbose=0), atol=1e-6)
    hm.save_model(compact, tmp_path / "donor", _card(labels=RSNA_LABELS))
    binary = hm.build_model("compact", SPEC, ("any",))
    with caplog.at_level("INFO", logger="hemo.model"):
        copied, total = hm.init_from_model(binary, tmp_path / "donor.keras")
    assert copied == total - 1  # every layer but the 1-output logits
    (record,) = [r for r in caplog.records if "copied" in r.getMessage()]
    assert record.levelname == "INFO"
    assert record.getMessage().endswith(f"copied {total - 1} of {total} layers with weights; "
                                        f"starting afresh: {hm.LOGITS_LAYER}")  # fmt: skip
    # under the share of INIT_WARN_SHARE copied, the same line is a warning
    caplog.clear()
    with pytest.MonkeyPatch.context() as patch, caplog.at_level("INFO", logger="hemo.model"):
        patch.setattr(hm, "INIT_WARN_SHARE", 1.0)
        hm.init_from_model(binary, tmp_path / "donor.keras")
    assert [r.levelname for r in caplog.records if "copied" in r.getMessage()] == ["WARNING"]
    np.testing.assert_array_equal(
        binary.get_layer(hm.COMPACT_CAM_LAYER + "_conv").get_weights()[0],
        compact.get_layer(hm.COMPACT_CAM_LAYER + "_conv").get_weights()[0],
    )


def test_weights_file_loads_into_an_application_backbone(tmp_path: Path) -> None:
    """A whole-model .weights.h5 file loads into an application architecture too (the backbone is
    built from random weights, then the file fills every layer); it used to reach Keras'
    constructor as weights="model" and fail as 'backbone weights do not fit'."""
    keras.utils.set_random_seed(0)
    donor = hm.build_model("mobilenet_v2", GRAY, ("any",), alpha=0.35)
    weights = tmp_path / "m.weights.h5"
    donor.save_weights(weights)
    keras.utils.set_random_seed(1)
    same = hm.build_model("mobilenet_v2", GRAY, ("any",), weights=weights, alpha=0.35)
    x = _x(GRAY, seed=3)
    np.testing.assert_allclose(same.predict(x, verbose=0), donor.predict(x, verbose=0), atol=1e-6)


def test_init_from_a_donor_with_fewer_input_channels(tmp_path: Path) -> None:
    """A 2-channel (asymmetry) model started from a 1-channel donor: every layer is copied, the
    stem's kernel is the donor's on channel 0 and zero on the new channel, so the copy predicts
    exactly what the donor does while the new channel is still unused."""
    keras.utils.set_random_seed(5)
    donor = hm.build_model("compact", GRAY, ("any",))
    hm.save_model(donor, tmp_path / "gray", _card(GRAY))
    two = dataclasses.replace(GRAY, channels=2, asymmetry=True)
    model = hm.build_model("compact", two, ("any",))
    names: list[str] = []
    copied, total = hm.init_from_model(model, tmp_path / "gray.keras", names)
    assert copied == total == len(names)
    stem = next(layer for layer in model.layers if layer.weights)
    kernel = stem.get_weights()[0]
    assert kernel.shape[2] == 2 and not kernel[:, :, 1].any()
    np.testing.assert_array_equal(kernel[:, :, :1], donor.get_layer(stem.name).get_weights()[0])
    x = _x(two, n=3, seed=6)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), donor.predict(x[..., :1], verbose=0), atol=1e-5
    )
    # The other way round (fewer channels than the donor) is not an expansion
    assert not hm._more_input_channels(donor.get_layer(stem.name).get_weights(), stem.get_weights())


def test_anchor_weights_penalises_drift_from_the_donor_and_holds_training_back() -> None:
    """L2-SP: zero penalty at the anchor, strength * sum of squared drift away from it; the same
    steps at a high learning rate move anchored weights less than free ones."""
    keras.utils.set_random_seed(3)
    donor = hm.build_model("compact", GRAY, ("any",))
    x, y = _x(GRAY, n=8, seed=4), np.tile([[0.0], [1.0]], (4, 1)).astype("float32")
    drift = {}
    for strength in (0.0, 0.9):
        model = hm.build_model("compact", GRAY, ("any",))
        model.set_weights(donor.get_weights())
        conv = hm.COMPACT_CAM_LAYER + "_conv"
        if strength:
            assert hm.anchor_weights(model, strength, [conv]) == 1  # the kernel (no bias: BN)
            kernel = model.get_layer(conv).kernel
            assert isinstance(kernel.regularizer, hm.AnchorPenalty)  # replaces the weight decay
            assert float(kernel.regularizer(kernel)) == pytest.approx(0.0, abs=1e-9)
            start = keras.ops.convert_to_numpy(kernel)
            kernel.assign(start + 0.01)
            penalty = strength * start.size * 1e-4
            assert float(kernel.regularizer(kernel)) == pytest.approx(penalty, rel=1e-3)
            assert any(float(loss) == pytest.approx(penalty, rel=1e-3) for loss in model.losses)
            kernel.assign(start)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
        for _ in range(6):
            model.train_on_batch(x, y)
        moved = model.get_layer(conv).get_weights()[0] - donor.get_layer(conv).get_weights()[0]
        drift[strength] = float(np.square(moved).sum())
    assert 0 < drift[0.9] < 0.5 * drift[0.0]


def test_max_head_pool_reads_the_strongest_response_and_round_trips(tmp_path: Path) -> None:
    """pool="max": the logits are the Dense of each feature map's maximum; it saves and loads;
    an unknown pooling is refused."""
    keras.utils.set_random_seed(5)
    model = hm.build_model("compact", GRAY, ("any",), pool="max")
    assert isinstance(model.get_layer(hm.HEAD_POOL_LAYER), keras.layers.GlobalMaxPooling2D)
    x = _x(GRAY, n=3, seed=6)
    maps = keras.Model(model.input, model.get_layer(hm.COMPACT_CAM_LAYER).output)(x)
    kernel, bias = model.get_layer(hm.LOGITS_LAYER).get_weights()
    expected = 1 / (1 + np.exp(-(np.asarray(maps).max(axis=(1, 2)) @ kernel + bias)))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-6)
    hm.save_model(model, tmp_path / "maxpool", _card(GRAY))
    loaded, _ = hm.load_model(tmp_path / "maxpool.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ModelError, match="unknown head pooling 'median'"):
        hm.build_model("compact", GRAY, ("any",), pool="median")


def test_missing_weights_file_is_refused(tmp_path: Path) -> None:
    """A weights path that does not exist names the options."""
    with pytest.raises(ModelError, match="weights file not found"):
        hm.build_model("compact", SPEC, ("any",), weights=tmp_path / "x.weights.h5")


def test_set_trainable_top_freezes_backbone_but_head() -> None:
    """Phase 1 trains only the head; phase 2 with n_top trains that many backbone layers."""
    model = hm.build_model("compact", SPEC, ("any",))
    assert hm.set_trainable_top(model, 0) == 0
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert trainable == {hm.LOGITS_LAYER}
    assert hm.set_trainable_top(model, 2) == 1  # the top conv; its BatchNorm stays frozen
    assert model.get_layer(hm.COMPACT_CAM_LAYER + "_bn").trainable is False
    assert hm.set_trainable_top(model, None) == len(hm.backbone_layers(model))


def _members(n: int, spec: InputSpec = GRAY, pool: str = "average") -> list[keras.Model]:
    """``n`` compact models with different weights and non-trivial BatchNorm statistics."""
    members = []
    for seed in range(n):
        keras.utils.set_random_seed(seed)
        model = hm.build_model("compact", spec, ("any",), pool=pool)
        rng = np.random.default_rng(seed)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                gamma, beta, mean, var = layer.get_weights()
                layer.set_weights(
                    [gamma, beta, rng.random(mean.shape), rng.random(var.shape) + 0.5]
                )
        logits = model.get_layer(hm.LOGITS_LAYER)
        kernel, bias = logits.get_weights()
        logits.set_weights([kernel, bias + rng.normal(size=bias.shape)])
        members.append(model)
    return members


def test_merged_ensemble_computes_the_mean_of_the_members_logits(tmp_path: Path) -> None:
    """One flat graph, the CAM layer concatenates the members' maps, logits are their mean."""
    members = _members(3)
    merged = hm.merge_ensemble(members, [_card(GRAY)] * 3)
    assert not any(isinstance(layer, keras.Model) for layer in merged.layers)
    assert hm.cam_layer_of(merged) == hm.COMPACT_CAM_LAYER
    cam_layer = merged.get_layer(hm.COMPACT_CAM_LAYER)
    assert (
        cam_layer.output.shape[-1]
        == 3 * members[0].get_layer(hm.COMPACT_CAM_LAYER).output.shape[-1]
    )
    x = _x(GRAY, n=4)
    expected = np.mean([np.asarray(hm.logits_model(m)(x)[1]) for m in members], axis=0)
    _, logits = hm.logits_model(merged)(x)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-5)
    # Saved and loaded through the safe path like any hemo model, predictions unchanged
    path = hm.save_model(merged, tmp_path / "ens", _card(GRAY))
    loaded, card = hm.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(merged(x)), rtol=1e-5, atol=1e-6)
    assert card.cam_layer == hm.COMPACT_CAM_LAYER


def test_merged_ensemble_with_max_pooling_is_still_the_mean_of_logits() -> None:
    """Global max pooling is per channel too, so the merged head is exact with it as well."""
    members = _members(2, pool="max")
    merged = hm.merge_ensemble(members, [_card(GRAY)] * 2)
    x = _x(GRAY, n=3, seed=5)
    expected = np.mean([np.asarray(hm.logits_model(m)(x)[1]) for m in members], axis=0)
    np.testing.assert_allclose(
        np.asarray(hm.logits_model(merged)(x)[1]), expected, rtol=1e-4, atol=1e-5
    )


def test_gradcam_on_a_merged_ensemble() -> None:
    """Grad-CAM explains the ensemble through its concatenated feature map."""
    from hemo.cam import explain

    merged = hm.merge_ensemble(_members(2), [_card(GRAY)] * 2)
    cam = explain(merged, _x(GRAY, n=1)[0], method="gradcam", labels=("any",))
    assert cam.heatmap.shape == (SIZE, SIZE)
    assert np.nanmin(cam.heatmap) >= 0.0 and np.nanmax(cam.heatmap) <= 1.0


def test_merge_ensemble_refuses_what_it_cannot_merge() -> None:
    """One member, another architecture, another input spec or head pooling: clear errors."""
    two = _members(2)
    with pytest.raises(ModelError, match="at least 2 members"):
        hm.merge_ensemble(two[:1], [_card(GRAY)])
    with pytest.raises(ModelError, match="'compact' models only"):
        hm.merge_ensemble(two, [_card(GRAY), _card(GRAY, arch="mobilenet_v2")])
    other_spec = dataclasses.replace(GRAY, crop_head=not GRAY.crop_head)
    with pytest.raises(ModelError, match="members differ"):
        hm.merge_ensemble(two, [_card(GRAY), _card(other_spec)])
    mixed = [two[0], _members(1, pool="max")[0]]
    with pytest.raises(ModelError, match="head pooling"):
        hm.merge_ensemble(mixed, [_card(GRAY)] * 2)


def test_init_from_an_ensemble_is_refused_with_a_hint(tmp_path: Path) -> None:
    """A merged ensemble shares no layer name with a single model: init says so, not silently
    starting from random weights."""
    merged = hm.merge_ensemble(_members(2), [_card(GRAY)] * 2)
    hm.save_model(merged, tmp_path / "ens", _card(GRAY))
    single = hm.build_model("compact", GRAY, ("any",))
    with pytest.raises(ModelError, match="ensemble of 2 models.*m0_"):
        hm.init_from_model(single, tmp_path / "ens.keras")
