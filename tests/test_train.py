"""Tests of hemo.train and ``hemo train``: config resolution, run directory, resume, stop."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hemo import runs
from hemo.errors import ConfigError, DatasetError, TrainingError
from hemo.train import load_config_file, parse_overrides, plan_phases, resolve_config

#: Tiny runs: 32 px phantoms, small batches.
TINY = ["--image-size", "32", "--batch-size", "8", "--early-stopping-patience", "50"]
#: Seconds a subprocess run may take on a busy 2-core machine.
RUN_TIMEOUT_S = 240


def _cli(data: Path, name: str, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hemo", "train", "--data", str(data), "--name", name,
            "--epochs", str(epochs), *TINY, *extra]  # fmt: skip


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "HEMO_RUNS_DIR": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _raw_epochs(path: Path) -> list[int]:
    return pd.read_csv(path / runs.HISTORY_FILE)["epoch"].tolist()


def _kill_once(command: list[str], root: Path, marker: Path, what: str) -> None:
    """Start ``hemo train``; kill -9 it as soon as ``marker`` exists."""
    process = subprocess.Popen(
        command, env=_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(marker.exists, RUN_TIMEOUT_S, what)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()


def _readable_h5(path: Path) -> bool:
    """Whether ``path`` opens as an HDF5 file (a copy cut short by a kill does not)."""
    import h5py

    try:
        h5py.File(path, "r").close()
    except OSError:
        return False
    return True


def _rerun(command: list[str], root: Path) -> None:
    """Run ``hemo train`` again to the end; its stderr is the message if it fails."""
    rerun = subprocess.run(
        command, env=_env(root), timeout=RUN_TIMEOUT_S, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-4000:]


def test_overrides_parse_types_aliases_and_dotted_keys() -> None:
    """--key value pairs become typed dotted overrides; dashes and aliases map to keys."""
    tokens = [
        "--epochs",
        "3",
        "--image-size=128",
        "--augment.strength",
        "0.5",
        "--cache",
        "--arch",
        "resnet50",
    ]
    assert parse_overrides(tokens) == {
        "epochs": 3,
        "image_size": 128,
        "augment.strength": 0.5,
        "cache": True,
        "architecture": "resnet50",
    }


def test_config_file_and_overrides_resolve(tmp_path: Path) -> None:
    """TOML and YAML files load; overrides win; nested tables merge with the defaults."""
    toml = tmp_path / "c.toml"
    toml.write_text(
        'data = "d"\nepochs = 5\n[augment]\nstrength = 0.3\n[input]\nwindows = "rsna3"\n'
    )
    yaml = tmp_path / "c.yaml"
    yaml.write_text("data: d\nepochs: 5\naugment:\n  strength: 0.3\n")
    for path in (toml, yaml):
        config = resolve_config(load_config_file(path), {"epochs": 2, "learning_rate": 1})
        assert config["epochs"] == 2 and config["augment"]["strength"] == 0.3
        assert config["learning_rate"] == 1.0 and config["input"]["mode"] == "hu"


def test_weights_none_on_the_command_line_is_the_word() -> None:
    """``--weights none`` (what the offline ImageNet error advises) is weights "none", not a
    missing value; crossval's ``--set weights=none`` goes through the same path."""
    file = {"data": "d", "weights": "imagenet"}
    assert resolve_config(file, parse_overrides(["--weights", "none"]))["weights"] == "none"
    assert resolve_config(file, parse_overrides(["--weights=null"]))["weights"] == "none"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.yaml", b"epochs: [1, 2\nname: x\n", "cannot parse config: while parsing"),
        ("bad.yml", b"a: b: c\n", "cannot parse config: mapping values are not allowed"),
        ("bad.toml", b"epochs = \n", "cannot parse config: "),
        ("bad.json", b"{epochs: 1}", "cannot parse config: Expecting property name"),
        ("latin1.toml", b'name = "caf\xe9"\n', "cannot read config: not UTF-8 text"),
        ("c.ini", b"epochs = 1\n", "config must be one of"),
    ],
)
def test_an_unreadable_config_file_is_a_one_line_config_error(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    """A malformed YAML/TOML/JSON file or one that is not UTF-8 is a ConfigError naming the
    file (YAML's parser errors and UnicodeDecodeError escaped as tracebacks), on one line."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config_file(path)
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_bad_config_is_refused() -> None:
    """Unknown keys, bad choices and missing data name what is wrong."""
    with pytest.raises(ConfigError, match="unknown override key 'epoch'"):
        resolve_config({"data": "d"}, {"epoch": 3})
    with pytest.raises(ConfigError, match="architecture 'vgg' unknown"):
        resolve_config({"data": "d", "architecture": "vgg"})
    with pytest.raises(ConfigError, match="no training data"):
        resolve_config({})
    with pytest.raises(ConfigError, match="cache must be auto, true or false"):
        resolve_config({"data": "d", "cache": "maybe"})
    with pytest.raises(ConfigError, match=r"^image_size must be in \[16, 2048\] px, got 8$"):
        resolve_config({"data": "d"}, {"image_size": 8})  # the key, not InputSpec.size
    # a file's cache = true is overridden by auto (README's RSNA command), and back
    assert resolve_config({"data": "d", "cache": True}, {"cache": "auto"})["cache"] == "auto"
    assert resolve_config({"data": "d", "cache": "auto"}, {"cache": False})["cache"] is False
    with pytest.raises(ConfigError, match="cache must be auto, true or false"):
        resolve_config({"data": "d", "cache": True}, {"cache": "maybe"})
    with pytest.raises(ConfigError, match="augment.mixup must be a number >= 0"):
        resolve_config({"data": "d"}, {"augment.mixup": -0.2})
    with pytest.raises(ConfigError, match="augment.strength must be a number, got 'high'"):
        resolve_config({"data": "d", "augment": {"strength": "high"}})
    assert resolve_config({"data": "d"}, {"augment.mixup": 0.4})["augment"]["mixup"] == 0.4
    with pytest.raises(ConfigError, match="augment.gamma must be at most 1.0"):
        resolve_config({"data": "d"}, {"augment.gamma": 1.5})
    with pytest.raises(ConfigError, match="augment.blur must be a number >= 0"):
        resolve_config({"data": "d"}, {"augment.blur": -1})
    with pytest.raises(ConfigError, match="augment.lesion must be at most 1.0"):
        resolve_config({"data": "d"}, {"augment.lesion": 1.5})
    with pytest.raises(ConfigError, match="augment.jitter_maps must be true or false, got 'no'"):
        resolve_config({"data": "d"}, {"augment.jitter_maps": "no"})
    resolved = resolve_config({"data": "d", "augment": {"gamma": 0.5, "blur": 1.5}})
    assert resolved["augment"] == {
        "strength": 1.0,
        "mixup": 0.0,
        "gamma": 0.5,
        "blur": 1.5,
        "lesion": 0.0,
        "jitter_maps": True,
    }
    off = resolve_config({"data": "d"}, {"augment.jitter_maps": False})
    assert off["augment"]["jitter_maps"] is False


@pytest.mark.parametrize(
    "config_file",
    sorted((Path(__file__).parents[1] / "configs").glob("*.toml")),
    ids=lambda p: p.name,
)
def test_every_shipped_config_resolves(config_file: Path) -> None:
    """Each file in configs/ is a valid config: known keys, values in range, a valid InputSpec."""
    from hemo.train import input_spec

    config = resolve_config(load_config_file(config_file))
    assert config["name"] and input_spec(config).size == config["image_size"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learning_rate": "abc"}, "learning_rate must be a number, got 'abc'"),
        ({"dropout": "x"}, "dropout must be a number, got 'x'"),
        ({"fine_tune_learning_rate": True}, "fine_tune_learning_rate must be a number, got True"),
        ({"threshold.target_sensitivity": None}, "target_sensitivity must be a number, got None"),
        ({"alpha": float("nan")}, "alpha must be a number, got nan"),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"steps_per_epoch": "10x"}, "steps_per_epoch must be a number, got '10x'"),
        ({"learning_rate": 0}, r"learning_rate must be a number > 0, got 0.0"),
        ({"alpha": -1}, r"alpha must be a number > 0, got -1.0"),
        ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\), got 1.5"),
        ({"label_smoothing": 1}, r"label_smoothing must be a number in \[0, 1\), got 1.0"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"fine_tune_layers": -3}, "fine_tune_layers must be an integer >= 0, got -3"),
        ({"threshold.target_sensitivity": 0}, r"target_sensitivity must be a number in \(0, 1\]"),
        ({"threshold": 0.5}, r"threshold is a table: set its keys \(threshold.KEY\)"),
    ],
)
def test_numeric_keys_refuse_other_values_naming_key_and_value(
    overrides: dict, message: str
) -> None:
    """Every number key refuses text, bools, none, NaN and out-of-range values by name."""
    with pytest.raises(ConfigError, match=message):
        resolve_config({"data": "d"}, overrides)


def test_text_keys_take_numbers_as_text_and_refuse_flags() -> None:
    """``--name 123`` names the run "123"; ``--name`` with no value (true) is refused by name."""
    assert resolve_config({"data": "d"}, {"name": 123})["name"] == "123"
    with pytest.raises(ConfigError, match="name must be text, got True"):
        resolve_config({"data": "d"}, {"name": True})


@pytest.mark.parametrize(
    "option", [["--learning_rate", "abc"], ["--dropout", "x"], ["--export", "/proc/hemo/model"]]
)
def test_train_cli_bad_option_is_one_line_and_makes_no_run_folder(
    option: list[str],
    tmp_path: Path,
    phantom_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad number or an unwritable --export exits 2 with one line before any run folder."""
    from hemo.cli import EXIT_ERROR, main

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path / "runs")
    argv = ["train", "--data", str(phantom_dir), "--name", "bad", "--epochs", "1", *TINY]
    assert main([*argv, *option]) == EXIT_ERROR
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hemo: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    key, value = option[0].removeprefix("--"), option[1]
    if key == "export":
        assert errors[0].startswith(f"hemo: error: {value}: cannot write the exported model to ")
    else:
        assert errors[0] == f"hemo: error: {key} must be a number, got {value!r}"
    assert not (tmp_path / "runs").exists()


def test_train_help_says_what_every_key_does(capsys: pytest.CaptureFixture[str]) -> None:
    """Every configuration key has a line of help with its values (--help showed only
    'str, default none' for --weights, so imagenet and weight files went unsaid)."""
    from hemo.cli import main
    from hemo.train import DEFAULTS, KEY_HELP

    def keys(tree, prefix=""):
        for key, value in tree.items():
            yield from keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]

    assert sorted(keys(DEFAULTS)) == sorted(KEY_HELP)
    # every value a key accepts is named in its help (the lists are written out, so kept here)
    from hemo.architectures import ARCHITECTURES, HEAD_POOL_NAMES
    from hemo.config import THRESHOLD_METHODS
    from hemo.train import CHECKPOINTS, LR_SCHEDULES, STRATEGIES
    from hemo.windowing import PRESETS

    for key, values in {
        "architecture": ARCHITECTURES,
        "input.windows": PRESETS,
        "head_pool": HEAD_POOL_NAMES,
        "lr_schedule": LR_SCHEDULES,
        "checkpoint": CHECKPOINTS,
        "strategy": STRATEGIES,
        "threshold.method": THRESHOLD_METHODS,
    }.items():
        assert all(value in KEY_HELP[key] for value in values), (key, KEY_HELP[key])
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("none | imagenet (Keras download, needs network; not for compact) | "
                     "FILE.weights.h5 (str, default 'none')",
                     "plateau (halve when val AUC stalls) | cosine | constant",
                     "default | mirrored", "best (val AUC) | last", "youden | sensitivity"):  # fmt: skip
        assert fragment in text, fragment


def test_train_on_missing_data_is_one_line_and_makes_no_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--data that does not exist is named before a run folder is made (no failed run left)."""
    from hemo.cli import EXIT_ERROR, main

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path / "runs")
    missing = tmp_path / "nowhere"
    argv = ["train", "--data", str(missing), "--name", "gone", "--epochs", "1", *TINY]
    assert main(argv) == EXIT_ERROR
    err = capsys.readouterr().err
    assert f"hemo: error: {missing}: no such file or folder" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--init", "{tmp}/nope.keras", "{tmp}/nope.keras: model file not found"),
        ("--init", "{tmp}/model.pkl", "{tmp}/model.pkl: refusing to load a pickle"),
        ("--init", "{tmp}/notes.txt", "{tmp}/notes.txt: not a model file"),
        ("--init", "{tmp}/nocard.keras", "{tmp}/nocard.keras: no model card nocard.json beside"),
        ("--weights", "{tmp}/w.pkl", "{tmp}/w.pkl: refusing to load a pickle as weights"),
        (
            "--weights",
            "imagenet",
            "no ImageNet weights for the 'compact' architecture; use "
            "--weights none, or one of densenet121",
        ),  # fmt: skip
    ],
)
def test_train_refuses_bad_weights_or_init_before_making_a_run_folder(
    tmp_path: Path,
    phantom_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    message: str,
) -> None:
    """An --init or --weights the run would fail on in its first seconds is one line before
    a run folder is made (it left a 'failed' run on the Training page, after TensorFlow's
    start-up)."""
    import zipfile

    from hemo.cli import EXIT_ERROR, main

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path / "runs")
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04K\x01.")
    (tmp_path / "notes.txt").write_text("not a model")
    with zipfile.ZipFile(tmp_path / "nocard.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    argv = ["train", "--data", str(phantom_dir), "--name", "bad", "--epochs", "1", *TINY]
    assert main([*argv, option, value.format(tmp=tmp_path)]) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("hemo: error: " + message.format(tmp=tmp_path)), err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_train_names_missing_data_and_bad_init_without_starting_tensorflow(tmp_path: Path) -> None:
    """Those refusals come before TensorFlow is imported (seconds of start-up and its log
    lines before a one-line error), and a missing data/raw/<source> says to download it."""
    code = (
        "import sys\n"
        "from hemo.cli import main\n"
        f"assert main(['train', '--data', {str(tmp_path / 'rsna')!r}, '--name', 'x']) == 2\n"
        f"assert main(['train', '--data', {str(tmp_path)!r}, '--init', 'nope.keras']) == 2\n"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "HEMO_RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[0] == (
        f"hemo: error: {tmp_path / 'rsna'}: no such file or folder; download it first: "
        f"hemo download rsna --out {tmp_path}"
    )
    assert lines[1].startswith("hemo: error: ") and lines[1].endswith(
        "nope.keras: model file not found"
    )
    assert not (tmp_path / "runs").exists()


def test_train_on_one_patient_says_why_there_is_no_validation_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One patient's images all land in train: the refusal names the data and says why."""
    from hemo.phantom import write_demo_dataset
    from hemo.train import train

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path / "runs")
    write_demo_dataset(tmp_path / "one", n_studies=1, seed=0, slices_per_study=4, size=64)
    config = resolve_config(None, {"data": str(tmp_path / "one"), "name": "one", "epochs": 1})
    with pytest.raises(DatasetError) as caught:
        train(config)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'one'}: the index has no 'val' rows")
    assert re.search(
        r"4 images come from 1 patient\(s\) \([01] with a bleed, [01] without\)", message
    )
    assert "a label needs 3 or more patients to give val and test one each" in message


def test_train_refuses_a_cache_that_cannot_fit_before_reading_an_image(
    tmp_path: Path,
    phantom_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """cache = true for more tensors than the machine holds (a 64 KiB machine here) stops the
    run with one line saying why and what to set, before any epoch; auto trains uncached."""
    import hemo.pipeline as pipeline
    from hemo.cli import EXIT_ERROR, main

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(pipeline, "physical_memory_bytes", lambda: 2**16)
    argv = ["train", "--data", str(phantom_dir), "--epochs", "1", *TINY]
    assert main([*argv, "--name", "huge", "--cache", "true"]) == EXIT_ERROR
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hemo: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "cache = true would keep" in errors[0] and "set cache = false" in errors[0]
    assert not (tmp_path / "runs" / "huge" / "history.csv").exists()
    with caplog.at_level("INFO", logger="hemo.pipeline"):
        assert main([*argv, "--name", "auto", "--cache", "auto"]) == 0
    assert re.search(r"not caching: \d+ preprocessed images would take", caplog.text)


def test_check_export_makes_the_folder_and_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    """check_export creates the model's folder (leaving nothing in it) and names a bad path."""
    from hemo.train import check_export

    assert check_export(tmp_path / "models" / "m") == tmp_path / "models" / "m"
    assert list((tmp_path / "models").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"file/m: cannot write the exported model to .*file"):
        check_export(tmp_path / "file" / "m")


def test_l2sp_needs_a_non_negative_strength_and_an_init_model() -> None:
    """l2sp pulls towards the init model's weights: without init it is refused, as is < 0."""
    assert resolve_config({"data": "d"})["l2sp"] == 0.0
    with pytest.raises(ConfigError, match="l2sp pulls weights towards an init model"):
        resolve_config({"data": "d"}, {"l2sp": 0.001})
    with pytest.raises(ConfigError, match="l2sp must be a number >= 0"):
        resolve_config({"data": "d", "init": "m.keras"}, {"l2sp": -1})
    assert resolve_config({"data": "d", "init": "m.keras", "l2sp": 0.01})["l2sp"] == 0.01


@pytest.mark.slow
def test_run_with_l2sp_anchors_the_init_weights_and_says_so_in_the_card(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started from another model with l2sp anchors every copied trainable variable and
    records the strength beside the init model in the card."""
    from hemo import model as hm
    from hemo.preprocess import InputSpec
    from hemo.train import train

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    spec = InputSpec(size=32)
    donor = hm.build_model("compact", spec, ("any",))
    card = hm.ModelCard("donor", "compact", spec, ("any",), 0.5, hm.COMPACT_CAM_LAYER)
    hm.save_model(donor, tmp_path / "donor", card)
    overrides = parse_overrides(TINY) | {"epochs": 1, "name": "l2sp", "labels": "any"}
    overrides |= {"init": str(tmp_path / "donor.keras"), "l2sp": 0.01}
    path = train(resolve_config({"data": str(phantom_dir)}, overrides))
    _, card = hm.load_model(path / runs.MODEL_FILE)
    init = card.training["init"]
    assert init["layers_copied"] == init["layers"] == len([la for la in donor.layers if la.weights])
    assert init["l2sp"] == 0.01
    assert init["variables_anchored"] == len(donor.trainable_weights)


def test_mask_loss_is_a_non_negative_weight_for_keras_fit_without_pixel_mixing() -> None:
    """mask_loss is off by default, a number >= 0, and refused where the lesion masks cannot
    follow the pixels (mixup, synthetic lesions) or fit is not used (multiworker)."""
    assert resolve_config({"data": "d"})["mask_loss"] == 0.0
    assert resolve_config({"data": "d"}, {"mask_loss": 10})["mask_loss"] == 10
    with pytest.raises(ConfigError, match="mask_loss must be a number >= 0"):
        resolve_config({"data": "d"}, {"mask_loss": -1})
    with pytest.raises(ConfigError, match="mask_loss trains through Keras fit"):
        resolve_config({"data": "d"}, {"mask_loss": 1, "strategy": "multiworker"})
    for key in ("augment.mixup", "augment.lesion"):
        with pytest.raises(ConfigError, match="mask_loss needs a lesion mask"):
            resolve_config({"data": "d"}, {"mask_loss": 1, key: 0.2})


@pytest.mark.slow
def test_run_with_mask_loss_adds_the_mask_term_and_saves_the_plain_classifier(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mask_loss trains the CAM layer against the phantoms' lesion masks: the training loss
    carries the mask term (one epoch, same seed: higher by about weight x BCE), history keeps
    its columns, and the saved model is the plain one-output classifier with the weight in its
    card. Data without masks is refused, naming the folder."""
    from hemo.errors import DatasetError
    from hemo.model import MASK_HEAD_LAYER, load_model
    from hemo.train import train

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    overrides = parse_overrides(TINY) | {"epochs": 1, "labels": "any", "seed": 4}
    overrides |= {"input.mode": "display", "input.channels": 2, "input.asymmetry": True}
    overrides |= {"input.crop_head": True}
    plain = train(resolve_config({"data": str(phantom_dir)}, overrides | {"name": "plain"}))
    masked = train(
        resolve_config({"data": str(phantom_dir)}, overrides | {"name": "mask", "mask_loss": 5})
    )
    history = pd.read_csv(masked / runs.HISTORY_FILE)
    assert {"accuracy", "auc", "loss", "val_accuracy", "val_auc", "val_loss"} <= set(history)
    assert history["accuracy"].between(0, 1).all()
    # every training row has a mask: the untrained lesion map's BCE (about 0.7) times 5 comes on top
    extra = float(history["loss"].iloc[0] - pd.read_csv(plain / runs.HISTORY_FILE)["loss"].iloc[0])
    assert 1.5 < extra < 6.0
    model, card = load_model(masked / runs.MODEL_FILE)
    assert tuple(model.output.shape) == (None, 1)
    assert MASK_HEAD_LAYER not in {layer.name for layer in model.layers}
    assert card.training["config"]["mask_loss"] == 5
    bare = tmp_path / "no_masks"
    bare.mkdir()
    index = pd.read_parquet(phantom_dir / "index.parquet").drop(columns="mask_path")
    index["path"] = [str(phantom_dir / p) for p in index["path"]]
    index.to_parquet(bare / "index.parquet")
    with pytest.raises(DatasetError, match="no_masks: mask_loss needs lesion masks"):
        train(resolve_config({"data": str(bare)}, overrides | {"name": "bare", "mask_loss": 5}))


def test_head_pool_is_average_or_max() -> None:
    """head_pool chooses the head's global pooling; anything else is refused by name."""
    assert resolve_config({"data": "d"})["head_pool"] == "average"
    assert resolve_config({"data": "d"}, {"head_pool": "max"})["head_pool"] == "max"
    with pytest.raises(ConfigError, match="head_pool must be one of"):
        resolve_config({"data": "d"}, {"head_pool": "attention"})


def test_two_phase_plan() -> None:
    """head_epochs gives a frozen-backbone phase, then fine-tuning of the top N at the lower LR."""
    config = resolve_config({"data": "d", "epochs": 5, "head_epochs": 2, "fine_tune_layers": 10})
    head, tune = plan_phases(config)
    assert (head.start, head.end, head.n_top, head.learning_rate) == (0, 2, 0, 1e-3)
    assert (tune.start, tune.end, tune.n_top, tune.learning_rate) == (2, 5, 10, 1e-4)
    (only,) = plan_phases(resolve_config({"data": "d", "epochs": 3}))
    assert (only.start, only.end, only.n_top) == (0, 3, None)


@pytest.mark.slow
def test_two_epoch_run_writes_every_file(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2-epoch two-phase run writes config, history, status, checkpoint, model, card, report."""
    from hemo.model import load_model
    from hemo.train import train

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    overrides = parse_overrides(TINY) | {"epochs": 2, "head_epochs": 1, "name": "two"}
    overrides["cam_layer"] = "compact_s1_c1"  # a card may name another layer than the default
    # A 2-epoch model is far from 0.98 on any calls; 0.6 gives it a band to choose
    overrides["threshold.referral_accuracy"] = 0.6
    path = train(resolve_config({"data": str(phantom_dir)}, overrides))
    assert path == tmp_path / "two"
    status = json.loads((path / runs.STATUS_FILE).read_text())
    assert status["state"] == "finished" and status["epoch"] == 2 and status["pid"] == os.getpid()
    assert _raw_epochs(path) == [0, 1]
    assert (path / runs.CHECKPOINT_DIR / runs.BEST_CHECKPOINT).is_file()
    assert json.loads((path / runs.CONFIG_FILE).read_text())["head_epochs"] == 1
    assert not (path / runs.BACKUP_DIR).exists()
    model, card = load_model(path / runs.MODEL_FILE)
    assert card.labels == ("any", *card.labels[1:]) and len(card.labels) == 6
    assert card.metrics["measured_on"]["split"] == "test" and 0.0 <= card.threshold <= 1.0
    assert card.cam_layer == "compact_s1_c1"
    assert card.training["layout"] == "phantom"  # the app warns that it never saw a real scan
    # The slice range is measured on the training split's images
    from hemo.anatomy import RANGE_MARGIN, scan_anatomy
    from hemo.datasets import load_index
    from hemo.io import read_scan

    index = load_index(phantom_dir)
    train_paths = index.loc[index["split"] == "train", "path"]
    lowest = min(scan_anatomy(read_scan(p)).soft_tissue_fraction for p in train_paths)
    fitted = card.parse_slice_range()
    assert fitted.images == len(train_paths) and fitted.lowest_seen == pytest.approx(lowest, 1e-3)
    assert fitted.min_soft_tissue_fraction == pytest.approx(max(0.0, lowest - RANGE_MARGIN), 1e-3)
    report = json.loads((path / runs.REPORT_FILE).read_text())
    assert report["threshold"] == card.threshold
    # The referral band is chosen on the val split's predictions, as the threshold is
    from hemo.evaluate import predict_index
    from hemo.referral import choose_band

    rows, probs, _ = predict_index(model, card, index, "val")
    try:
        expected = choose_band(rows["label_any"], probs[:, 0], card.threshold, 0.6)
    except DatasetError:
        assert card.referral is None
    else:
        band = card.parse_referral()
        assert (band.low, band.high) == pytest.approx((expected.low, expected.high), abs=1e-4)
        assert band.chosen_on == f"val split ({int((index['split'] == 'val').sum())} images)"
    with pytest.raises(TrainingError, match="already finished"):
        train(resolve_config({"data": str(phantom_dir)}, overrides))


def test_extra_train_rows_join_training_only(tmp_path: Path, phantom_dir: Path) -> None:
    """extra_train adds another dataset's train split (or a seeded sample of it) to training;
    a missing label column or an empty dataset is refused with the dataset's name."""
    from hemo.datasets import load_index
    from hemo.errors import DatasetError
    from hemo.train import extra_train_rows

    base = {"data": str(phantom_dir), "extra_train": str(phantom_dir)}
    extra_index = load_index(phantom_dir)
    rows = extra_train_rows(resolve_config(base), ("any",))
    assert len(rows) == int((extra_index["split"] == "train").sum())
    assert set(rows["split"]) == {"train"}
    assert set(rows["path"]) <= set(extra_index.loc[extra_index["split"] == "train", "path"])
    some = resolve_config(base, {"extra_train_rows": 3, "seed": 5})
    first, again = extra_train_rows(some, ("any",)), extra_train_rows(some, ("any",))
    assert len(first) == 3 and list(first["path"]) == list(again["path"])
    assert extra_train_rows(resolve_config({"data": "d"}), ("any",)) is None
    no_labels = extra_index.drop(columns=["label_any"])
    no_labels.to_parquet(tmp_path / "index.parquet", index=False)
    with pytest.raises(DatasetError, match=r"index.parquet: not a hemo index.*label_any"):
        extra_train_rows(resolve_config(base | {"extra_train": str(tmp_path)}), ("any",))
    with pytest.raises(ConfigError, match="extra_train_rows must be an integer >= 0"):
        resolve_config(base, {"extra_train_rows": -1})


@pytest.mark.slow
def test_run_with_extra_train_trains_on_both_and_says_so_in_the_card(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-epoch run with extra_train sees main + extra training images; validation and the
    card's metrics stay on the main data; the card records the extra data."""
    from hemo.model import load_model
    from hemo.train import train

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    overrides = parse_overrides(TINY) | {"epochs": 1, "name": "extra", "labels": "any"}
    overrides |= {"extra_train": str(phantom_dir), "extra_train_rows": 5, "batch_size": 1}
    path = train(resolve_config({"data": str(phantom_dir)}, overrides))
    index = pd.read_parquet(phantom_dir / "index.parquet")
    n_train = int((index["split"] == "train").sum())
    status = json.loads((path / runs.STATUS_FILE).read_text())
    assert status["steps"] == n_train + 5  # batch size 1: one step per training image
    _, card = load_model(path / runs.MODEL_FILE)
    extra = card.training["extra_train"]
    assert extra["images"] == 5 and 0 <= extra["positives_any"] <= 5
    assert card.training["images"]["train"] == n_train


def test_run_with_lesions_trains_on_display_input_and_says_so_in_the_card(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """augment.lesion on display input with the label any trains and is recorded in the card;
    on HU input the run is refused, naming the key."""
    from hemo.model import load_model
    from hemo.train import train

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    overrides = parse_overrides(TINY) | {"epochs": 1, "name": "lesion", "labels": "any"}
    overrides |= {"augment.lesion": 0.5, "input.mode": "display", "input.channels": 1}
    path = train(resolve_config({"data": str(phantom_dir)}, overrides))
    _, card = load_model(path / runs.MODEL_FILE)
    assert card.training["lesion"] == 0.5
    assert card.input_spec.mode == "display"
    hu = overrides | {"input.mode": "hu", "input.channels": 3, "name": "lesion_hu"}
    with pytest.raises(ConfigError, match="augment.lesion"):
        train(resolve_config({"data": str(phantom_dir)}, hu))


@pytest.mark.parametrize(
    ("align", "level", "black"),
    [(False, 0.0, False), (True, 0.0, False), (False, 0.45, False), (False, 0.0, True)],
    ids=["centre-line", "aligned-midline", "brain-level", "black-background"],
)
def test_run_with_the_asymmetry_channel_records_it_and_predicts(
    tmp_path: Path,
    phantom_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    align: bool,
    level: float,
    black: bool,
) -> None:
    """input.asymmetry (with or without input.align_midline, input.brain_level or
    input.black_background) trains a
    2-channel display model whose card says so; the predictor feeds it the same two channels
    (the probability equals the model on to_model_input)."""
    import numpy as np

    from hemo.datasets import load_index
    from hemo.io import read_scan
    from hemo.predict import Predictor
    from hemo.preprocess import to_model_input
    from hemo.train import train

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    overrides = parse_overrides(TINY) | {"epochs": 1, "name": "asym", "labels": "any"}
    overrides |= {"input.mode": "display", "input.channels": 2, "input.asymmetry": True}
    overrides |= {"input.crop_head": True, "input.align_midline": align}
    overrides |= {"input.brain_level": level, "input.black_background": black}
    path = train(resolve_config({"data": str(phantom_dir)}, overrides))
    with Predictor(path / runs.MODEL_FILE) as predictor:
        spec = predictor.card.input_spec
        assert spec.asymmetry and spec.input_shape[-1] == 2
        assert spec.align_midline is align and spec.brain_level == level
        assert spec.black_background is black
        scan_path = str(load_index(phantom_dir)["path"].iloc[0])
        (result,) = predictor.predict([scan_path])
        x = to_model_input(read_scan(scan_path), spec)
        expected = float(np.asarray(predictor.forward(x[None]))[0, 0])
    assert result.probability == pytest.approx(expected, abs=1e-5)


def test_same_seed_trains_the_same_weights(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of one config on one machine give bit-identical weights (augmentation, shuffle
    and initialisation all follow the seed); another seed gives other weights. Comparisons of
    recipes in docs/MODELS.md rest on this."""
    import numpy as np

    from hemo.model import load_model
    from hemo.train import train

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    overrides = parse_overrides(TINY) | {"epochs": 1, "labels": "any", "augment.strength": 2.0}
    weights = []
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        path = train(
            resolve_config({"data": str(phantom_dir)}, overrides | {"name": name, "seed": seed})
        )
        model, _ = load_model(path / runs.MODEL_FILE)
        weights.append(model.get_weights())
    first, again, other = weights
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_ema_config_is_checked_and_changes_the_final_weights(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ema must lie in [0, 1) and needs Keras fit; a run with it ends on the averaged weights,
    not the last step's (same seed, other weights) and records it in the card's config."""
    import numpy as np

    from hemo.model import load_model
    from hemo.train import _optimizer, plan_phases, train

    with pytest.raises(ConfigError, match=r"ema must be a number in \[0, 1\), got 1"):
        resolve_config({"data": "d"}, {"ema": 1})
    with pytest.raises(ConfigError, match="the best checkpoint holds one epoch's raw weights"):
        resolve_config({"data": "d"}, {"ema": 0.9})
    last = {"data": "d", "checkpoint": "last"}
    with pytest.raises(ConfigError, match="ema swaps the averaged weights in at the end of Keras"):
        resolve_config({**last, "strategy": "multiworker"}, {"ema": 0.9})
    config = resolve_config(last, {"ema": 0.9})
    optimizer = _optimizer(config, plan_phases(config)[0], steps=3)
    assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.9)
    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    overrides = parse_overrides(TINY) | {"epochs": 2, "labels": "any", "checkpoint": "last"}
    weights = []
    for name, ema in (("plain", 0.0), ("averaged", 0.9)):
        path = train(
            resolve_config({"data": str(phantom_dir)}, overrides | {"name": name, "ema": ema})
        )
        model, card = load_model(path / runs.MODEL_FILE)
        weights.append(model.get_weights())
        assert card.training["config"]["ema"] == ema
    assert not all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))


def test_sam_step_applies_the_gradient_taken_at_the_perturbed_weights() -> None:
    """sharpness_aware: one fit step moves the weights by the optimizer's step of the gradient
    taken at w + rho * g / ||g|| (computed here by hand), not of the gradient at w, and puts
    the weights back before applying it."""
    import keras
    import numpy as np
    import tensorflow as tf

    from hemo.train import sharpness_aware

    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    x = np.random.default_rng(0).random((8, 3)).astype("float32")
    y = np.array([[0], [1], [1], [0], [1], [0], [0], [1]], dtype="float32")
    start = [v.numpy() for v in model.trainable_weights]

    def gradient_at(values):
        for variable, value in zip(model.trainable_weights, values, strict=True):
            variable.assign(value)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, model(x)))
        return [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]

    rho, lr = 0.3, 0.5
    g = gradient_at(start)
    loss_at_start = float(np.mean(keras.losses.binary_crossentropy(y, model(x))))
    norm = np.sqrt(sum(float((a**2).sum()) for a in g))
    sharp = gradient_at([w + rho * a / norm for w, a in zip(start, g, strict=True)])
    for variable, value in zip(model.trainable_weights, start, strict=True):
        variable.assign(value)
    trainer = sharpness_aware(model, rho)
    trainer.compile(optimizer=keras.optimizers.SGD(lr), loss="binary_crossentropy")
    history = trainer.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    after = [v.numpy() for v in model.trainable_weights]
    for w, w0, a, b in zip(after, start, sharp, g, strict=True):
        np.testing.assert_allclose(w, w0 - lr * a, atol=1e-6)
        assert np.abs(w - (w0 - lr * b)).max() > 1e-3  # not the plain step
    assert history.history["loss"][0] == pytest.approx(loss_at_start, abs=1e-5)  # first pass
    with pytest.raises(ValueError, match="rho must be > 0"):
        sharpness_aware(model, 0.0)


def test_sam_config_is_checked_and_a_run_trains_with_it(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sam must be >= 0 and needs Keras fit; a run with it (backup, checkpoints, EMA) writes a
    plain model whose weights differ from the same seed's without it."""
    import numpy as np

    from hemo.model import load_model
    from hemo.train import train

    with pytest.raises(ConfigError, match="sam is the radius of the weight perturbation"):
        resolve_config({"data": "d"}, {"sam": -0.1})
    with pytest.raises(ConfigError, match="sam replaces Keras fit's training step"):
        resolve_config({"data": "d", "strategy": "multiworker"}, {"sam": 0.05})
    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    overrides = parse_overrides(TINY) | {"epochs": 2, "labels": "any", "checkpoint": "last"}
    weights = []
    for name, sam in (("plain", 0.0), ("sam", 0.05)):
        config = {"name": name, "sam": sam, "ema": 0.9}
        path = train(resolve_config({"data": str(phantom_dir)}, overrides | config))
        model, card = load_model(path / runs.MODEL_FILE)
        assert type(model).__name__ == "Functional"
        weights.append(model.get_weights())
        assert card.training["config"]["sam"] == sam
    assert not all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))
    # The best-epoch checkpoint of the wrapper loads back into the model the card describes
    best = overrides | {"name": "sam_best", "sam": 0.05, "checkpoint": "best"}
    path = train(resolve_config({"data": str(phantom_dir)}, best))
    assert (path / runs.CHECKPOINT_DIR / runs.BEST_CHECKPOINT).is_file()
    assert load_model(path / runs.MODEL_FILE)[1].training["config"]["checkpoint"] == "best"


def test_cam_layer_that_is_not_a_spatial_layer_is_refused_before_training(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cam_layer must name a 4-D layer of the built model; the message lists the choices."""
    from hemo.train import train

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    overrides = parse_overrides(TINY) | {"epochs": 1, "name": "badlayer", "cam_layer": "logits"}
    with pytest.raises(ConfigError) as info:
        train(resolve_config({"data": str(phantom_dir)}, overrides))
    message = str(info.value)
    assert message.startswith("cam_layer 'logits' is not a spatial layer")
    # the deepest few are named, not every layer (a DenseNet has over 150)
    named = message.split("(the deepest: ")[1].rstrip(")").split(", ")
    assert len(named) == 8 and named[-1] == "compact_features" and "compact_s1_c1" in named
    assert not (tmp_path / "badlayer" / runs.MODEL_FILE).exists()


@pytest.mark.slow
def test_killed_run_resumes_from_backup(tmp_path: Path, phantom_dir: Path) -> None:
    """kill -9 after the first epoch's backup; the rerun continues at the next epoch."""
    command = _cli(phantom_dir, "resume", 4)
    path = tmp_path / "resume"
    backup = path / runs.BACKUP_DIR / "train" / "training_metadata.json"
    _kill_once(command, tmp_path, backup, "the first epoch's backup")
    done = json.loads(backup.read_text())["epoch"]
    assert 1 <= done < 4
    assert runs.read_run("resume", tmp_path).state == "failed"
    _rerun(command, tmp_path)
    epochs = _raw_epochs(path)
    assert epochs.count(0) == 1, f"rerun started over: {epochs}"
    assert sorted(set(epochs)) == [0, 1, 2, 3]
    assert runs.read_run("resume", tmp_path).state == "finished"


def test_kill_while_the_backup_is_written_resumes_from_the_previous_copy(
    tmp_path: Path, phantom_dir: Path
) -> None:
    """kill -9 can land while the backup's weights are being overwritten: the file is then
    unreadable. The rerun restores the previous epoch's copy and goes on instead of failing."""
    command = _cli(phantom_dir, "torn", 5)
    backup = tmp_path / "torn" / runs.BACKUP_DIR / "train"
    previous = backup / "latest.weights.h5.bkp"  # written from the second epoch's backup on
    latest = backup / "latest.weights.h5"
    _kill_once(command, tmp_path, previous, "the second epoch's backup")
    if not _readable_h5(previous):
        # The kill landed while the copy itself was written (Keras copies weights and epoch,
        # then saves): the latest pair was not touched yet, so it is the whole previous copy
        # this test needs
        shutil.copyfile(latest, previous)
        metadata = backup / "training_metadata.json"
        shutil.copyfile(metadata, metadata.with_name(metadata.name + ".bkp"))
    latest.write_bytes(b"\x89HDF\r\n\x1a\n torn by a kill")
    _rerun(command, tmp_path)
    epochs = _raw_epochs(tmp_path / "torn")
    assert epochs.count(0) == 1, f"rerun started over: {epochs}"
    assert sorted(set(epochs)) == [0, 1, 2, 3, 4]
    assert runs.read_run("torn", tmp_path).state == "finished"


def test_stop_mid_epoch_keeps_whole_epochs_and_resumes_only_with_the_same_settings(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM one batch into the second epoch: no history row and no backup for that part of
    an epoch; a rerun with other settings is refused by name and leaves the run stopped; the
    same settings resume at the second epoch, whose status then names the real epoch."""
    import keras

    import hemo.train as train_module

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    real_callbacks = train_module._callbacks

    class SignalInSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(
        train_module,
        "_callbacks",
        lambda *args, **kwargs: [SignalInSecondEpoch(), *real_callbacks(*args, **kwargs)],
    )
    overrides = parse_overrides(TINY) | {"epochs": 3, "batch_size": 2, "name": "midway"}
    config = resolve_config({"data": str(phantom_dir)}, overrides)
    path = train_module.train(config)
    run = runs.read_run("midway", tmp_path)
    assert run.state == "stopped" and "SIGTERM" in run.status["message"]
    assert run.status["steps"] > 1, "the signal must land before the epoch's last batch"
    assert _raw_epochs(path) == [0]
    backup = path / runs.BACKUP_DIR / "train" / "training_metadata.json"
    assert json.loads(backup.read_text())["epoch"] == 1
    monkeypatch.setattr(train_module, "_callbacks", real_callbacks)
    other = resolve_config({"data": str(phantom_dir)}, overrides | {"learning_rate": 0.01})
    with pytest.raises(TrainingError, match=r"differs in learning_rate\); .*another --name"):
        train_module.train(other)
    assert runs.read_run("midway", tmp_path).state == "stopped"
    train_module.train(config)
    assert _raw_epochs(path) == [0, 1, 2]
    run = runs.read_run("midway", tmp_path)
    assert run.state == "finished" and run.status["epoch"] == 3


def test_a_stop_after_the_last_epoch_finishes_the_run_and_reaches_the_caller(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while the finished model is evaluated: the run is finished (model and report
    written, status says when the signal came) and train() then raises KeyboardInterrupt, so
    a caller such as hemo crossval stops instead of starting its next fold."""
    import hemo.train as train_module

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    real_finish = train_module._finish

    def finish_under_a_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(train_module, "_finish", finish_under_a_signal)
    overrides = parse_overrides(TINY) | {"epochs": 1, "batch_size": 4, "name": "late"}
    config = resolve_config({"data": str(phantom_dir)}, overrides)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config)
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back
    run = runs.read_run("late", tmp_path)
    assert run.state == "finished"
    assert "SIGTERM arrived after the last epoch" in run.status["message"]
    assert (tmp_path / "late" / "model.keras").is_file()
    monkeypatch.setattr(train_module, "_finish", real_finish)
    calm = resolve_config({"data": str(phantom_dir)}, overrides | {"name": "calm"})
    assert train_module.train(calm) == tmp_path / "calm"  # no signal: returns as before


def test_early_stopping_says_so_in_the_finished_status(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run ended by early stopping says after which epoch and why, not only "finished"."""
    from hemo.train import train

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path)
    overrides = parse_overrides(TINY) | {
        "epochs": 8,
        "early_stopping_patience": 1,
        "learning_rate": 1e-12,  # nothing moves: val AUC never improves on the first epoch
        "name": "early",
    }
    train(resolve_config({"data": str(phantom_dir)}, overrides))
    run = runs.read_run("early", tmp_path)
    assert run.state == "finished"
    assert run.status["message"] == (
        "finished: early stopping after epoch 2 of 8 (val_auc had not improved for 1 epoch(s))"
    )
    assert len(run.history) == 2


def test_heartbeat_refreshes_a_live_status_and_keeps_its_fields(tmp_path: Path) -> None:
    """Between the training's own writes the heartbeat restamps ``updated`` and changes nothing
    else; it stops with its context."""
    runs.write_status(tmp_path, state=runs.RUNNING, epoch=4, phase="train")
    first = runs.read_json(tmp_path / runs.STATUS_FILE)
    with runs.Heartbeat(tmp_path, interval_s=0.05):
        _wait_for(
            lambda: runs.read_json(tmp_path / runs.STATUS_FILE)["updated"] > first["updated"],
            5,
            "a heartbeat",
        )
    after = runs.read_json(tmp_path / runs.STATUS_FILE)
    assert {k: v for k, v in after.items() if k != "updated"} == {
        k: v for k, v in first.items() if k != "updated"
    }
    time.sleep(0.2)
    assert runs.read_json(tmp_path / runs.STATUS_FILE)["updated"] == after["updated"]


@pytest.mark.slow
def test_sigterm_stops_cleanly(tmp_path: Path, phantom_dir: Path) -> None:
    """SIGTERM during training ends the run at the end of the batch with state 'stopped'."""
    path = tmp_path / "stop"
    process = subprocess.Popen(
        _cli(phantom_dir, "stop", 50, "--batch-size", "2"),
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(
            lambda: (runs.read_json(path / runs.STATUS_FILE) or {}).get("step"),
            RUN_TIMEOUT_S,
            "a training step",
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=RUN_TIMEOUT_S) == 1
    finally:
        process.kill()
    run = runs.read_run("stop", tmp_path)
    assert run.state == "stopped"
    assert "SIGTERM" in run.status["message"]
    assert len(run.history) < 50


def test_portable_path_writes_paths_relative_to_the_project_where_it_can(tmp_path: Path) -> None:
    """Cards name paths inside or beside the project relative to it, as readers resolve them
    (from the current folder, then the project); a spelling relative to the folder a command
    ran in, which would be lost elsewhere, is replaced."""
    from hemo.config import PROJECT_DIR, portable_path

    assert portable_path(PROJECT_DIR / "data" / "processed" / "x") == "data/processed/x"
    assert portable_path(PROJECT_DIR / "runs" / ".." / "models" / "m.keras") == "models/m.keras"
    shared = PROJECT_DIR.parent / "shared" / "data" / "head_ct"
    assert portable_path(shared, "../shared/data/head_ct") == "../shared/data/head_ct"
    assert portable_path(shared, "head_ct") == "../shared/data/head_ct"  # ran in data/
    assert portable_path(shared) == "../shared/data/head_ct"
    outside = Path("/") / "hemo-nowhere" / "kbad"  # not beside the project: resolved
    assert portable_path(outside, "kbad") == str(outside)
    assert portable_path(tmp_path / "d", str(tmp_path / "d")) == str(tmp_path / "d")


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("card_name", ["headct_real.json", "phantom_rsna3.json"])
def test_shipped_cards_name_no_absolute_path(card_name: str) -> None:
    """A shipped card must not carry the folders of the machine that trained it."""
    from hemo.config import MODELS_DIR

    card = json.loads((MODELS_DIR / card_name).read_text())
    absolute = [s for s in _strings(card) if s.startswith("/") or " /" in s]
    assert absolute == []


def test_best_checkpoint_is_written_aside_then_moved_into_place(tmp_path: Path) -> None:
    """The best checkpoint is always whole: Keras writes a partial file that replaces the real
    one only once complete, and a partial file left by a killed write is cleared first."""
    import keras
    import numpy as np

    from hemo.train import PARTIAL_PREFIX, best_checkpoint

    target = tmp_path / runs.BEST_CHECKPOINT
    partial = tmp_path / f"{PARTIAL_PREFIX}{runs.BEST_CHECKPOINT}"
    partial.write_bytes(b"torn by a kill")
    target.write_bytes(b"an earlier run's best")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    callback = best_checkpoint(target, None)
    assert not partial.exists()
    x = np.random.default_rng(0).random((16, 2), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype("float32")
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[callback])
    assert not partial.exists()
    clone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    clone.load_weights(target)  # a whole Keras weights file, no longer the bytes written above
    assert clone.get_weights()[0].shape == (2, 1)


def test_hu_input_is_refused_for_a_dataset_of_images(head_ct_dir: Path, tmp_path: Path) -> None:
    """HU input on PNG images is refused before training, naming the first file and the fix;
    display input on them, HU input on DICOM, and unreadable files are let through."""
    from dicom_factory import ct_bytes

    from hemo.preprocess import InputSpec
    from hemo.train import check_input_fits

    pngs = sorted((head_ct_dir / "head_ct").glob("*.png"))[:20]
    with pytest.raises(ConfigError, match=r"holds PNG images \(.*000\.png.*--input\.mode display"):
        check_input_fits(InputSpec(size=32), pngs)
    check_input_fits(InputSpec(size=32, mode="display", channels=1), pngs)
    dicom = tmp_path / "slice.dcm"
    dicom.write_bytes(ct_bytes())
    check_input_fits(InputSpec(size=32), [dicom, *pngs])
    check_input_fits(InputSpec(size=32), [tmp_path / "missing.dcm"])


def test_train_refuses_hu_input_on_the_kaggle_pngs(
    head_ct_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hemo train with the default HU input on the Kaggle folder fails before its first epoch
    with that one message (not a TensorFlow traceback from inside the data pipeline)."""
    from hemo.train import train

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path / "runs")
    config = resolve_config({"data": str(head_ct_dir), "name": "hu_on_png", "epochs": 1})
    with pytest.raises(ConfigError, match="holds PNG images"):
        train({**config, "image_size": 32})


def test_an_unreadable_training_image_is_left_out_and_named(
    head_ct_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A PNG damaged inside its pixel data (its header and end intact, so indexing passes it)
    is left out of training and named in the run's status and card, as is an empty one the
    index itself could not read (which evaluation then names as in no metric); the other
    images train (it used to end the run in TensorFlow tracebacks, an abort or a hang)."""
    from hemo.cli import main

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path / "runs")
    root = tmp_path / "kaggle"
    (root / "head_ct").mkdir(parents=True)
    labels = pd.read_csv(head_ct_dir / "labels.csv")
    labels = labels[labels["id"].isin([*range(8), *range(100, 108)])]
    for i in labels["id"]:
        shutil.copy(head_ct_dir / "head_ct" / f"{i:03d}.png", root / "head_ct")
    labels.to_csv(root / "labels.csv", index=False)
    damaged = root / "head_ct" / "003.png"
    data = bytearray(damaged.read_bytes())
    data[100:4000] = bytes(3900)
    damaged.write_bytes(bytes(data))
    (root / "head_ct" / "005.png").write_bytes(b"")  # so empty that indexing leaves it out
    argv = ["train", "--data", str(root), "--name", "damaged", "--epochs", "1", *TINY]
    assert main([*argv, "--input.mode", "display", "--input.channels", "1"]) == 0
    status = json.loads((tmp_path / "runs" / "damaged" / runs.STATUS_FILE).read_text())
    assert status["state"] == runs.FINISHED
    assert "2 unreadable image(s) left out: 003.png, 005.png" in status["message"]
    card = json.loads((tmp_path / "runs" / "damaged" / "model.json").read_text())
    assert card["training"]["left_out"] == {"count": 2, "files": ["003.png", "005.png"]}
    # Evaluation says that the file the index could not read is in no metric
    model = tmp_path / "runs" / "damaged" / "model.keras"
    capsys.readouterr()  # what training printed
    assert main(["evaluate", "--model", str(model), "--data", str(root), "--split", "all",
                 "--json"]) in (0, 1)  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    (note,) = [n for n in report["notes"] if "when it was indexed" in n]
    assert note.startswith("1 file(s) of the dataset could not be read when it was indexed")
    assert note.endswith("first: 005.png")  # the name only: a folder may name a patient
    # The record is the run's own: repaired, the images count again in the next run
    shutil.copy(head_ct_dir / "head_ct" / "003.png", damaged)
    shutil.copy(head_ct_dir / "head_ct" / "005.png", root / "head_ct" / "005.png")
    again = ["train", "--data", str(root), "--name", "repaired", "--epochs", "1", *TINY]
    assert main([*again, "--input.mode", "display", "--input.channels", "1"]) == 0
    card = json.loads((tmp_path / "runs" / "repaired" / "model.json").read_text())
    assert card["training"]["left_out"] == {"count": 0, "files": []}


def test_export_never_replaces_a_model_of_other_data(tmp_path: Path, phantom_dir: Path) -> None:
    """An export path holding a model trained on other data is refused before training (a
    config used as a template, e.g. configs/phantom.toml exporting to models/phantom_rsna3, with
    one's own --data); rerunning the recipe on its own data, or a new path, goes through."""
    from hemo.train import check_export

    target = tmp_path / "models" / "shipped"
    target.parent.mkdir()
    target.with_suffix(".keras").write_bytes(b"a model")
    target.with_suffix(".json").write_text(json.dumps({"training": {"data": str(phantom_dir)}}))
    with pytest.raises(ConfigError, match=r"already holds a model trained on .*give --export"):
        check_export(target, tmp_path / "mine")
    assert check_export(target, phantom_dir) == target
    assert check_export(tmp_path / "models" / "new", tmp_path / "mine") == tmp_path / "models/new"
