"""Issue 6: only .keras/.h5 through Keras safe_mode; code-carrying and mismatched models refused.

tests/test_model.py already pins the pickle refusals (by suffix and by bytes behind .keras) and a
card whose labels or input size do not fit; this file adds joblib files, Lambda layers (.keras and
.h5, with a sentinel proving the code never ran), configs naming unknown or dangerous modules,
and the remaining card mismatches.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import keras
import pytest

from hemo import model as hm
from hemo.errors import ModelError
from hemo.preprocess import InputSpec

SPEC = InputSpec(size=32, mode="display", channels=1)


def _card(name: str = "m", **changes) -> hm.ModelCard:
    fields = dict(name=name, architecture="compact", input_spec=SPEC, labels=("any",),
                  threshold=0.5, cam_layer=hm.CAM_LAYERS["compact"])  # fmt: skip
    fields.update(changes)
    return hm.ModelCard(**fields)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A valid tiny compact model saved with its card."""
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("safe")
    return hm.save_model(hm.build_model("compact", SPEC, ("any",)), folder / "m", _card())


def _lambda_model(sentinel: Path) -> keras.Model:
    """A model whose Lambda layer writes ``sentinel`` whenever its Python code runs."""

    inputs = keras.Input(SPEC.input_shape)
    payload = lambda x, path: (open(path, "w").write("code ran"), x)[1]  # noqa: E731
    x = keras.layers.Lambda(payload, name="evil", arguments={"path": str(sentinel)})(inputs)
    x = keras.layers.Conv2D(4, 3, name=hm.CAM_LAYERS["compact"])(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(1, name=hm.LOGITS_LAYER)(x)
    outputs = keras.layers.Activation("sigmoid", name=hm.PROBS_LAYER)(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("suffix", [".joblib", ".keras", ".h5"])
@pytest.mark.parametrize("compress", [0, 3])
def test_joblib_files_are_refused(tmp_path, suffix, compress):
    """A joblib dump (plain or zlib-compressed) under any model suffix is refused, never unpickled."""
    import joblib

    path = tmp_path / f"model{suffix}"
    joblib.dump({"weights": [1, 2, 3]}, path, compress=compress)
    (tmp_path / "model.json").write_text(_card().to_json())
    with pytest.raises(
        ModelError,
        match=r"refusing to load a pickle|not a Keras v3 file: a \.keras model is a zip|"
        r"not an HDF5 file \(bad signature\)",
    ) as info:
        hm.load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_lambda_layer_is_refused_without_running_its_code(tmp_path, fmt):
    """A .keras or .h5 with a Lambda layer is refused by safe_mode; the lambda never runs."""
    sentinel = tmp_path / "sentinel.txt"
    model = _lambda_model(sentinel)
    sentinel.unlink()  # building the graph ran it once, at save time
    path = tmp_path / f"evil.{fmt}"
    model.save(path)
    sentinel.unlink(missing_ok=True)
    (tmp_path / "evil.json").write_text(_card("evil").to_json())
    with pytest.raises(ModelError, match=r"evil\.(keras|h5): Keras cannot load this model: .*"
                       r"(Lambda|lambda|safe_mode|unsafe)") as info:  # fmt: skip
        hm.load_model(path)
    assert not sentinel.exists(), "the Lambda layer's code ran while loading"
    assert "\n" not in str(info.value) and len(info.value.reason) < 400


def _rewrite_config(src: Path, dst: Path, edit) -> Path:
    """Copy a .keras archive, passing its config.json through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(edit(json.loads(data))).encode()
            zout.writestr(item, data)
    dst.with_suffix(".json").write_text(src.with_suffix(".json").read_text())
    return dst


def _first_conv(config: dict) -> dict:
    return next(la for la in config["config"]["layers"] if la["class_name"] == "Conv2D")


@pytest.mark.parametrize(
    ("module", "class_name"),
    [("hemo_no_such_module", "Conv2D"), ("keras.layers", "NoSuchLayer"), ("os", "system"),
     ("builtins", "eval"), ("subprocess", "Popen")],
)  # fmt: skip
def test_config_naming_unknown_or_dangerous_classes_is_refused(saved, tmp_path, module, class_name):
    """A .keras whose config names an unknown module/class (or os.system, eval) is refused."""

    def edit(config):
        layer = _first_conv(config)
        layer["module"], layer["class_name"] = module, class_name
        layer.pop("registered_name", None)
        return config

    path = _rewrite_config(saved, tmp_path / "bad.keras", edit)
    with pytest.raises(ModelError, match=r"bad\.keras: Keras cannot load this model: ") as info:
        hm.load_model(path)
    assert "\n" not in str(info.value), "the message must be one line (CLI, st.error)"


def test_registered_name_pointing_elsewhere_is_refused(saved, tmp_path):
    """A custom registered_name (e.g. 'evil>Payload') that no code registered is refused."""

    def edit(config):
        _first_conv(config)["registered_name"] = "evil>Payload"
        return config

    path = _rewrite_config(saved, tmp_path / "reg.keras", edit)
    with pytest.raises(ModelError, match=r"reg\.keras: Keras cannot load this model"):
        hm.load_model(path)


def test_archive_without_config_is_refused(saved, tmp_path):
    """A zip named .keras that is not a Keras archive is refused with ModelError."""
    path = tmp_path / "empty.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a model")
    path.with_suffix(".json").write_text(saved.with_suffix(".json").read_text())
    with pytest.raises(ModelError, match=r"empty\.keras: Keras cannot load this model"):
        hm.load_model(path)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (
            {"cam_layer": "no_such_layer"},
            r"card/model mismatch: the card's cam_layer 'no_such_layer'",
        ),
        ({"architecture": "vgg"}, r"card names an unknown architecture 'vgg'"),
        ({"input_spec": InputSpec(size=32, mode="hu")}, r"InputSpec gives input \(32, 32, 3\)"),
        ({"labels": ("any", "epidural")}, r"the card lists 2 labels"),
    ],
)
def test_card_that_does_not_match_is_refused(saved, tmp_path, change, pattern):
    """A card whose CAM layer, architecture, channels or labels do not fit the model is refused."""
    path = tmp_path / "m.keras"
    path.write_bytes(saved.read_bytes())
    path.with_suffix(".json").write_text(_card(**change).to_json())
    with pytest.raises(ModelError, match=rf"m\.keras: .*{pattern}"):
        hm.load_model(path)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [(None, r"m\.keras: no model card m\.json beside the model"),
     ("{not json", r"m\.json: model card is not valid JSON"),
     ("[1, 2]", r"m\.json: model card must be a JSON object"),
     ('{"name": "m"}', r"m\.json: model card lacks the field\(s\)"),
     (b"\xff\xfe{", r"m\.json: model card is not UTF-8 text")],
)  # fmt: skip
def test_missing_or_malformed_card_is_refused(saved, tmp_path, text, pattern):
    """No card, or a card that is not a hemo card, refuses the model naming the file at fault."""
    path = tmp_path / "m.keras"
    path.write_bytes(saved.read_bytes())
    if isinstance(text, bytes):
        path.with_suffix(".json").write_bytes(text)
    elif text is not None:
        path.with_suffix(".json").write_text(text)
    with pytest.raises(ModelError, match=rf"^{re.escape(str(tmp_path))}/{pattern}"):
        hm.load_model(path)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("threshold", "abc", r"threshold must be a number, got 'abc'"),
        ("labels", 5, r"labels must be a list of names, got 5"),
        ("input_spec", [1, 2], r"input_spec must be an object, got \[1, 2\]"),
        ("architecture", {"a": 1}, r"architecture must be text"),
        ("input_spec", {"mode": "evil"}, r"input_spec is malformed: InputSpec.mode is 'evil'"),
        (None, None, r"its JSON nests too deeply"),
    ],
)
def test_a_card_with_a_field_of_the_wrong_kind_is_one_error_naming_it(
    saved, tmp_path, field, value, pattern
):
    """A card whose fields have the wrong type, or JSON nested 100,000 deep, is a ModelError
    naming the card file (was a TypeError/ValueError/RecursionError traceback)."""
    import json

    path = tmp_path / "m.keras"
    path.write_bytes(saved.read_bytes())
    card = json.loads(saved.with_suffix(".json").read_text())
    if field is None:
        text = "[" * 100_000
    else:
        card[field] = value
        text = json.dumps(card)
    path.with_suffix(".json").write_text(text)
    with pytest.raises(ModelError, match=rf"^{re.escape(str(tmp_path))}/m\.json: .*{pattern}"):
        hm.load_model(path)


def test_a_folder_as_model_says_it_is_a_folder(tmp_path):
    """A folder (even one named like a model) is refused as a folder, saying what to give."""
    for folder in (tmp_path / "models", tmp_path / "m.keras"):
        folder.mkdir()
        with pytest.raises(ModelError, match=r"is a folder, not a model; give the NAME\.keras"):
            hm.load_model(folder)


def test_a_model_named_without_its_suffix_loads_as_saved():
    """load_model takes models/NAME as save_model and --export do; a name with nothing behind
    it is still "not found", naming the path given."""
    from tiny_models import tiny_model_path

    path = tiny_model_path("display")
    model, card = hm.load_model(path.with_suffix(""))
    assert card.name == hm.load_model(path)[1].name and model.count_params() > 0
    with pytest.raises(ModelError, match="nothing_here: model file not found"):
        hm.load_model(path.with_name("nothing_here"))


def test_shipped_models_load_safely():
    """Every shipped models/*.keras loads through safe_mode with a matching card."""
    shipped = sorted(hm.MODELS_DIR.glob("*.keras")) if hasattr(hm, "MODELS_DIR") else []
    if not shipped:
        from hemo.config import MODELS_DIR

        shipped = sorted(MODELS_DIR.glob("*.keras"))
    if not shipped:
        pytest.skip("no shipped model in models/")
    for path in shipped:
        model, card = hm.load_model(path)
        assert model.outputs[0].shape[-1] == len(card.labels)


def test_a_truncated_keras_file_says_it_is_incomplete(saved, tmp_path):
    """A .keras zip cut short (half-copied) is named as an incomplete archive before Keras is
    asked (which said "File not found" for a file that exists)."""
    path = tmp_path / "m.keras"
    path.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    path.with_suffix(".json").write_text(saved.with_suffix(".json").read_text())
    with pytest.raises(ModelError, match=r"m\.keras: the \.keras archive is incomplete"):
        hm.load_model(path)
