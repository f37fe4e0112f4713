"""Tests for hemo.crossval and ``hemo crossval``: folds, report shape, OOF threshold, export."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from hemo import runs
from hemo.crossval import (
    SUMMARY_METRICS,
    assign_folds,
    check_seeds,
    crossval,
    final_index,
    fold_config,
    fold_index,
    train_final,
)
from hemo.errors import ConfigError, DatasetError, TrainingError
from hemo.train import resolve_config

N_PER_CLASS = 4
IMAGE_SIDE = 48
TINY = {
    "image_size": 32,
    "epochs": 1,
    "batch_size": 4,
    "input": {"mode": "display", "channels": 1, "crop_head": True},
    "augment": {"strength": 0.0},
    "lr_schedule": "constant",
}


def _head(i: int, positive: bool) -> np.ndarray:
    """A gray disc with its own texture (no two alike), positives with a bright blob."""
    texture = np.random.default_rng(i).normal(0, 45, (IMAGE_SIDE, IMAGE_SIDE))
    disc = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    cv2.circle(disc, (24, 24), 18, 1, -1)
    img = np.where(disc > 0, np.clip(110 + texture, 20, 200), 0).astype(np.uint8)
    if positive:
        cv2.circle(img, (20 + i, 22), 5, 230, -1)
    return img


def _kaggle_folder(root: Path, copies: dict[int, int] | None = None) -> Path:
    """A tiny Kaggle head-CT layout; ``copies`` maps a new id to an image it is a resized copy
    of (the same picture at another size, as the real set has)."""
    images = root / "head_ct"
    images.mkdir(parents=True)
    rows = []
    for i in range(2 * N_PER_CLASS):
        positive = int(i < N_PER_CLASS)
        cv2.imwrite(str(images / f"{i:03d}.png"), _head(i, bool(positive)))
        rows.append({"id": i, " hemorrhage": positive})
    for new, old in (copies or {}).items():
        original = cv2.imread(str(images / f"{old:03d}.png"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(images / f"{new:03d}.png"), cv2.resize(original, (60, 60)))
        rows.append({"id": new, " hemorrhage": int(old < N_PER_CLASS)})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture
def tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny dataset and a private runs folder."""
    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path / "runs")
    return _kaggle_folder(tmp_path / "data")


def test_assign_folds_stratified_and_seeded() -> None:
    """Every fold holds both classes in equal share, and the same seed gives the same folds."""
    df = pd.DataFrame(
        {"label_any": [1] * 10 + [0] * 10, "patient_id": [f"p{i}" for i in range(20)]}
    )
    folds = assign_folds(df, 5, seed=3)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    for k in range(5):
        assert df["label_any"][folds == k].tolist().count(1) == 2
    assert np.array_equal(folds, assign_folds(df, 5, seed=3))


def test_assign_folds_keeps_patients_together() -> None:
    """Images of one patient never straddle two folds."""
    df = pd.DataFrame(
        {"label_any": [1, 1, 0, 0] * 4, "patient_id": [f"p{i // 2}" for i in range(16)]}
    )
    folds = assign_folds(df, 2)
    for _, group in pd.Series(folds).groupby(df["patient_id"]):
        assert group.nunique() == 1


def test_assign_folds_errors() -> None:
    """Too few folds or too few cases per class are refused with a message."""
    df = pd.DataFrame({"label_any": [1, 0, 0]})
    with pytest.raises(ConfigError, match="at least 2"):
        assign_folds(df, 1)
    with pytest.raises(DatasetError, match="one case per fold"):
        assign_folds(df, 2)


def test_assign_folds_keeps_given_groups_together_and_refuses_one_class_folds() -> None:
    """Given groups never straddle folds; groups that leave a fold one class are refused."""
    df = pd.DataFrame({"label_any": [1] * 6 + [0] * 6})
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    folds = assign_folds(df, 3, groups=groups)
    for g in range(6):
        assert len(set(folds[groups == g])) == 1
    with pytest.raises(DatasetError, match="fold 1 of 2 holds only label|fold 0 of 2 holds only"):
        assign_folds(df, 2, groups=np.array([0] * 6 + [1] * 6))
    with pytest.raises(DatasetError, match="from 2 group\\(s\\) of images"):
        assign_folds(df, 3, groups=np.array([0] * 6 + [1] * 6))


def test_fold_groups_joins_lookalikes_with_patients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A resized copy joins its original's group, and rows of one patient join theirs; a set
    where every row has a patient id is not read at all; 0 turns the check off; above the
    limit the folds fall back to patients with a warning."""
    from hemo.crossval import fold_groups

    root = _kaggle_folder(tmp_path / "d", copies={8: 2})
    paths = [str(root / "head_ct" / f"{i:03d}.png") for i in range(9)]
    df = pd.DataFrame({"path": paths, "patient_id": [None] * 5 + ["p", "p", None, None]})
    groups, summary, pairs = fold_groups(df, 0.93)
    assert groups[2] == groups[8] and groups[5] == groups[6]
    assert len(set(groups.tolist())) == 7
    assert summary == {
        "threshold": 0.93,
        "groups": 7,
        "images_grouped": 4,
        "multi_groups": 2,
        "pairs": 1,
        "unreadable": 0,
    }
    assert pairs[["path_a", "path_b"]].values.tolist() == [[paths[2], paths[8]]]
    assert pairs["similarity"].iloc[0] > 0.97
    assert fold_groups(df, 0) == (None, None, None)
    everyone = df.assign(path="/nonexistent.png", patient_id=[f"p{i}" for i in range(9)])
    assert fold_groups(everyone, 0.93) == (None, None, None)
    with pytest.raises(ConfigError, match="must be in \\(0, 1\\]"):
        fold_groups(df, 1.5)
    import hemo.lookalike

    monkeypatch.setattr(hemo.lookalike, "MAX_IMAGES", 8)
    assert fold_groups(df, 0.93) == (None, None, None)
    assert "9 images: too many for the look-alike check (at most 8)" in caplog.text


def test_fold_and_final_index_splits() -> None:
    """A fold holds out exactly its rows as val; the final index trains on every row."""
    df = pd.DataFrame({"label_any": [1, 0, 1, 0], "path": list("abcd")})
    folds = np.array([0, 0, 1, 1])
    out = fold_index(df, folds, 1)
    assert out["split"].tolist() == ["train", "train", "val", "val"]
    assert "split" not in df.columns
    final = final_index(df)
    assert (final["split"] == "train").sum() == 4


def test_fold_config_never_selects_on_held_out() -> None:
    """Fold runs keep last-epoch weights, effectively disable early stopping, never export."""
    config = resolve_config({"data": "x", "epochs": 7, "export": "models/phantom_rsna3"})
    out = fold_config(config, "r-cv0", Path("/tmp/i.parquet"))
    assert out["export"] == "", "a fold run must never overwrite the config's export"
    assert out["checkpoint"] == "last"
    assert out["early_stopping_patience"] > out["epochs"]
    assert config["checkpoint"] == "best"


def test_train_rejects_unknown_checkpoint() -> None:
    """The trainer's checkpoint option accepts only best or last."""
    with pytest.raises(ConfigError, match="checkpoint must be one of"):
        resolve_config({"data": "x", "checkpoint": "middle"})


def test_crossval_report_and_export(tiny_data: Path, tmp_path: Path) -> None:
    """Two tiny folds give per-fold metrics, OOF for every image, a threshold and a model card."""
    config = resolve_config({**TINY, "data": str(tiny_data), "name": "tinycv"})
    report = crossval(config, n_folds=2)
    assert len(report.folds) == 2
    assert len(report.oof) == 2 * N_PER_CLASS
    assert sorted(report.oof["fold"].unique().tolist()) == [0, 1]
    assert report.oof["probability"].between(0, 1).all()
    assert 0.0 <= report.threshold <= 1.0
    assert set(report.summary) == set(SUMMARY_METRICS)
    assert all(f.n_test == N_PER_CLASS for f in report.folds)
    saved = json.loads((runs.run_dir("tinycv-crossval") / "crossval.json").read_text())
    assert saved["threshold"] == pytest.approx(report.threshold)
    for name in ("accuracy", "roc_auc"):  # pooled bootstrap intervals hold the pooled figure
        low, high = saved["pooled"]["ci95"][name]
        assert low <= saved["pooled"][name] <= high
    # The referral band, chosen on the same OOF predictions (or why none could be)
    assert report.referral is not None
    assert ("band" in report.referral) != ("error" in report.referral)
    assert saved["referral"] == json.loads(json.dumps(report.referral))
    written = train_final(config, report, tmp_path / "models" / "tiny_real")
    card = json.loads(written.with_suffix(".json").read_text())
    assert card["threshold"] == pytest.approx(report.threshold)
    assert card["referral"] == report.band()
    assert card["metrics"]["referral"] == saved["referral"]
    assert card["metrics"]["folds"] == 2
    assert card["metrics"]["fold_groups"] == report.lookalike
    assert card["training"]["images"] == {"train": 2 * N_PER_CLASS}


def test_crossval_keeps_a_resized_copy_in_its_original_fold(
    tiny_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy of a training image at another size is never in another fold than the original:
    the report, its text and the pairs file say how the folds were grouped; with
    ``lookalike_weights`` the fold runs weigh each group once."""
    import logging

    from hemo.crossval import format_report

    caplog.set_level(logging.INFO, logger="hemo.train")
    data = _kaggle_folder(tiny_data.parent / "with_copy", copies={8: 1, 9: 6})
    config = resolve_config(
        {**TINY, "data": str(data), "name": "tinycopy", "lookalike_weights": True}
    )
    report = crossval(config, n_folds=2)
    fold_of = dict(
        zip(report.oof["path"].map(lambda p: Path(p).stem), report.oof["fold"], strict=True)
    )
    assert fold_of["008"] == fold_of["001"] and fold_of["009"] == fold_of["006"]
    assert report.lookalike["images_grouped"] == 4 and report.lookalike["multi_groups"] == 2
    assert "look-alike images kept in one fold (correlation >= 0.93: 4 images in 2 groups)" in (
        report.measured_on
    )
    assert "look-alike images kept in one fold: 4 images in 2 groups" in format_report(report)
    pairs = pd.read_csv(runs.run_dir("tinycopy-crossval") / "lookalikes.csv")
    assert sorted(Path(p).stem for p in pairs["path_b"]) == ["008", "009"]
    # Each fold trains on 5 images, one pair of copies among them: weights 0.5 * 5/4 and 5/4
    assert "lookalike_weights: sample weights from 0.62 to 1.25 over 5 training images" in (
        caplog.text
    )
    off = crossval({**config, "name": "tinycopyoff"}, n_folds=2, lookalike=0)
    assert off.lookalike is None and "look-alike" not in off.measured_on
    assert not (runs.run_dir("tinycopyoff-crossval") / "lookalikes.csv").exists()


def test_crossval_cli_json(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``hemo crossval --json`` prints only the report JSON on stdout."""
    from hemo.cli import main

    config_file = tmp_path / "tiny.toml"
    config_file.write_text(
        f'name = "tinycli"\ndata = "{tiny_data}"\nimage_size = 32\nepochs = 1\nbatch_size = 4\n'
        'lr_schedule = "constant"\n'
        '[input]\nmode = "display"\nchannels = 1\n[augment]\nstrength = 0.0\n'
    )
    status = main(["crossval", "--config", str(config_file), "--folds", "2", "--json"])
    assert status == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_folds"] == 2
    assert payload["lookalike"]["threshold"] == 0.93
    assert len(payload["folds"]) == 2
    assert {"mean", "std"} <= set(payload["summary"]["roc_auc"])


def test_rerun_reuses_finished_folds_and_refuses_another_recipe(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same command again reuses finished fold runs and retrains only a missing one; the
    same name with another recipe or split is refused, naming what differs."""
    import shutil

    import hemo.train

    config = resolve_config({**TINY, "data": str(tiny_data), "name": "tinyre"})
    first = crossval(config, n_folds=2)
    trained: list[str] = []
    real_train = hemo.train.train

    def counting_train(cfg):
        trained.append(cfg["name"])
        return real_train(cfg)

    monkeypatch.setattr(hemo.train, "train", counting_train)
    again = crossval(config, n_folds=2)
    assert trained == []
    pd.testing.assert_frame_equal(again.oof, first.oof)
    # A run written before a config key existed (absent there, at its default here) is reused
    saved_file = runs.run_dir("tinyre-cv0") / runs.CONFIG_FILE
    saved = json.loads(saved_file.read_text())
    del saved["mask_loss"], saved["augment"]["lesion"]
    saved_file.write_text(json.dumps(saved))
    crossval(config, n_folds=2)
    assert trained == []
    # A runs folder moved elsewhere keeps its finished folds (their data paths name the old place)
    moved = runs.RUNS_DIR.parent / "moved" / "runs"
    shutil.move(runs.RUNS_DIR, moved)
    monkeypatch.setattr(runs, "RUNS_DIR", moved)
    pd.testing.assert_frame_equal(crossval(config, n_folds=2).oof, first.oof)
    assert trained == []
    # The threshold section is crossval's own business: another referral target reuses the runs
    other = resolve_config(
        {**TINY, "data": str(tiny_data), "name": "tinyre", "threshold": {"referral_accuracy": 0}}
    )
    assert crossval(other, n_folds=2).referral is None and trained == []
    # A fold whose run is gone (say, killed before it started) is the only one trained again
    shutil.rmtree(runs.run_dir("tinyre-cv1"))
    crossval(config, n_folds=2)
    assert trained == ["tinyre-cv1"]
    with pytest.raises(TrainingError, match="another config \\(differs in dropout\\)"):
        crossval({**config, "dropout": 0.5}, n_folds=2)
    with pytest.raises(TrainingError, match="another split"):
        crossval(config, n_folds=2, fold_seed=5)


def test_check_seeds_needs_two_distinct() -> None:
    """An ensemble needs at least two different seeds."""
    assert check_seeds([3, 1]) == (3, 1)
    for bad in ([1], [2, 2], []):
        with pytest.raises(ConfigError, match="at least 2 distinct seeds"):
            check_seeds(bad)


def test_crossval_ensemble_cli_reports_and_exports_the_merged_model(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--seeds 0,1`` cross-validates one member per seed on the same folds, reports their
    logit-mean ensemble, and exports one merged model that predicts that mean."""
    from hemo.cli import main
    from hemo.model import load_model, logits_model

    config_file = tmp_path / "tiny.toml"
    config_file.write_text(
        f'name = "tinyens"\ndata = "{tiny_data}"\nimage_size = 32\nepochs = 1\nbatch_size = 4\n'
        'lr_schedule = "constant"\n'
        '[input]\nmode = "display"\nchannels = 1\n[augment]\nstrength = 0.0\n'
    )
    export = tmp_path / "models" / "tiny_ens"
    argv = ["crossval", "--config", str(config_file), "--folds", "2", "--seeds", "0,1"]
    assert main([*argv, "--export", str(export), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [m["seed"] for m in payload["members"]] == [0, 1]
    assert [m["name"] for m in payload["members"]] == ["tinyens_s0", "tinyens_s1"]
    assert payload["folds"][0]["run"] == "tinyens_s0-cv0,tinyens_s1-cv0"
    assert "mean logit of 2 models" in payload["measured_on"]
    assert payload["lookalike"]["images_grouped"] == 0
    # The ensemble's OOF probability is the sigmoid of the members' mean logit
    oof = pd.read_csv(runs.run_dir("tinyens-crossval") / "oof.csv")
    members = oof[["probability_s0", "probability_s1"]].to_numpy()
    mean_logit = np.log(members / (1 - members)).mean(axis=1)
    np.testing.assert_allclose(oof["probability"], 1 / (1 + np.exp(-mean_logit)), rtol=1e-6)
    for seed in (0, 1):
        member = pd.read_csv(runs.run_dir(f"tinyens_s{seed}-crossval") / "oof.csv")
        np.testing.assert_allclose(member["probability"], oof[f"probability_s{seed}"])
    # One merged model: its logits are the mean of the two final members' logits
    model, card = load_model(export.with_suffix(".keras"))
    assert card.training["ensemble"]["seeds"] == [0, 1]
    assert card.training["ensemble"]["runs"] == ["tinyens_s0-final", "tinyens_s1-final"]
    assert card.threshold == pytest.approx(payload["threshold"])
    x = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    finals = [load_model(runs.run_dir(f"tinyens_s{s}-final") / "model.keras")[0] for s in (0, 1)]
    expected = np.mean([np.asarray(logits_model(m)(x)[1]) for m in finals], axis=0)
    np.testing.assert_allclose(np.asarray(logits_model(model)(x)[1]), expected, atol=1e-4)
    # The text report names each member, then the ensemble's table
    assert main([*argv]) == 0
    text = capsys.readouterr().out
    assert "member seed 0: accuracy" in text and "ensemble of 2 (mean logit)" in text


@pytest.mark.parametrize("seeds", ["a,b", "0,,1", "0,1,", "", "0,-1"])
def test_crossval_cli_refuses_bad_seeds(
    seeds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seeds that are not integers, an empty item (a typo is not read as fewer seeds) or a
    negative seed stop argparse with its usage error (exit status 2) naming the text."""
    from hemo.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["crossval", "--config", str(tmp_path / "x.toml"), "--seeds", seeds])
    assert stop.value.code == 2
    assert "--seeds: seeds must be" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--set", "epochs"],
            "hemo: error: --set 'epochs': expected KEY=VALUE, e.g. --set epochs=2",
        ),
        (["--set", "dropout=x"], "hemo: error: dropout must be a number, got 'x'"),
        (
            ["--set", "lr_schedule=plateau"],
            'hemo: error: lr_schedule = "plateau" (train\'s default) lowers the learning rate',
        ),
        (["--export", "/proc/hemo/model"], "hemo: error: /proc/hemo/model: cannot write the "),
    ],
)
def test_crossval_cli_bad_option_fails_before_any_fold(
    extra: list[str],
    message: str,
    tiny_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """--set without =VALUE, a bad value or an unwritable --export: one line, exit 2, no run."""
    from hemo.cli import EXIT_ERROR, main

    config_file = tmp_path / "tiny.toml"
    config_file.write_text(
        f'name = "tinybad"\ndata = "{tiny_data}"\nimage_size = 32\nepochs = 1\n'
        'lr_schedule = "constant"\n'
    )
    assert main(["crossval", "--config", str(config_file), "--folds", "2", *extra]) == EXIT_ERROR
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hemo: error:")]
    assert len(errors) == 1 and errors[0].startswith(message) and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_crossval_cli_refuses_one_fold_before_reading_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--folds 1 is refused first: with a dataset that does not exist, the error is still the
    folds' (it used to come after indexing and look-alike grouping)."""
    from hemo.cli import EXIT_ERROR, main

    config_file = tmp_path / "tiny.toml"
    config_file.write_text(f'data = "{tmp_path / "nowhere"}"\nlr_schedule = "constant"\n')
    assert main(["crossval", "--config", str(config_file), "--folds", "1"]) == EXIT_ERROR
    assert capsys.readouterr().err.strip() == (
        "hemo: error: --folds is 1: cross-validation needs at least 2"
    )


def test_a_fold_run_stopped_by_a_signal_ends_the_crossval_as_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C stops the fold's training cleanly; the cross-validation then ends as interrupted
    (exit 130) saying a rerun resumes, instead of looking for the model the run never wrote."""
    import hemo.train
    from hemo.crossval import _train_to_the_end

    def stopped_train(config):
        path = tmp_path / config["name"]
        path.mkdir()
        runs.write_status(path, state=runs.STOPPED, message="stopped by SIGINT during train")
        return path

    monkeypatch.setattr(hemo.train, "train", stopped_train)
    with pytest.raises(KeyboardInterrupt):
        _train_to_the_end({"name": "cv-cv1"})
    assert "run cv-cv1: stopped by SIGINT during train; run the same command again" in caplog.text


def test_threshold_method_and_misspelt_keys_are_refused_before_any_fold() -> None:
    """A bad threshold method is refused with the choices; a misspelt key lists the keys of its
    own table (``input.crop_head`` for ``input.crop_hed``), tables named with ``.*``."""
    with pytest.raises(ConfigError, match="threshold.method must be one of youden, sensitivity"):
        resolve_config({"data": "x", "threshold": {"method": "f1"}})
    with pytest.raises(ConfigError, match=r"'input.crop_hed'; known keys: .*input\.crop_head"):
        resolve_config({"data": "x", "input": {"crop_hed": True}})
    with pytest.raises(ConfigError, match=r"'thresold'; known keys: .*augment\.\*.*threshold\.\*"):
        resolve_config({"data": "x", "thresold": {"method": "youden"}})


def test_crossval_blends_density_features_out_of_fold_and_exports_the_blend(
    tiny_data: Path, tmp_path: Path
) -> None:
    """density = true: each fold's regression is fitted on the other fold, the OOF probability
    is the blend of the network's and the regression's log-odds, the threshold is chosen on it,
    and the exported card carries the regression fitted on every image."""
    from hemo.crossval import member_config
    from hemo.density import logit_of
    from hemo.model import load_model

    config = resolve_config({**TINY, "data": str(tiny_data), "name": "tinyd", "density": True})
    report = crossval(config, n_folds=2)
    oof = report.oof
    z = 0.5 * logit_of(oof["probability_network"]) + 0.5 * logit_of(oof["probability_density"])
    np.testing.assert_allclose(oof["probability"], 1 / (1 + np.exp(-z)), rtol=1e-5)
    assert "blended with density features" in report.measured_on
    assert report.density is not None and report.density["weight"] == 0.5
    saved = pd.read_csv(runs.run_dir("tinyd-crossval") / "oof.csv")
    assert {"probability_network", "probability_density"} <= set(saved.columns)
    # the fold runs trained the network alone, as without density (reused by a plain rerun)
    fold_config_saved = json.loads((runs.run_dir("tinyd-cv0") / "config.json").read_text())
    assert fold_config_saved["density"] is False
    plain = crossval({**config, "density": False}, n_folds=2)
    np.testing.assert_allclose(plain.oof["probability"], oof["probability_network"], rtol=1e-6)
    assert plain.density is None
    written = train_final(config, report, tmp_path / "models" / "tiny_density")
    _, card = load_model(written)
    assert card.density == report.density and card.threshold == pytest.approx(report.threshold)
    assert card.parse_density() is not None
    assert card.training["config"]["density"] is True  # the card's model is the blend
    # an ensemble blends once, over the members' mean: members are never blended alone
    assert member_config(config, 3)["density"] is False


def test_density_on_data_with_subtypes_is_refused_before_any_fold_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """labels = auto gives a phantom set's models the six RSNA outputs, whose subtype
    probabilities a blend of P(any) would leave behind: refused by crossval and by an ensemble
    before a run folder exists."""
    from hemo.crossval import crossval_ensemble
    from hemo.phantom import write_demo_dataset

    monkeypatch.setattr(runs, "RUNS_DIR", tmp_path / "runs")
    data = tmp_path / "phantoms"
    write_demo_dataset(data, n_studies=4, seed=0, slices_per_study=2, size=64)
    config = resolve_config(
        {**TINY, "data": str(data), "name": "subd", "density": True, "labels": "auto"}
    )
    with pytest.raises(ConfigError, match="six RSNA outputs: set labels"):
        crossval(config, n_folds=2)
    with pytest.raises(ConfigError, match="six RSNA outputs: set labels"):
        crossval_ensemble(config, (0, 1), n_folds=2)
    assert not any(runs.run_dir("subd_s0-cv0").parent.glob("subd*-cv*"))
