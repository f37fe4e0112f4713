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
    crossval,
    final_index,
    fold_config,
    fold_index,
    train_final,
)
from hemo.errors import ConfigError, DatasetError
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


def _kaggle_folder(root: Path) -> Path:
    """A tiny Kaggle head-CT layout: gray discs, positives with a bright blob."""
    images = root / "head_ct"
    images.mkdir(parents=True)
    rows = []
    for i in range(2 * N_PER_CLASS):
        positive = int(i < N_PER_CLASS)
        img = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.uint8)
        cv2.circle(img, (24, 24), 18, 110, -1)
        if positive:
            cv2.circle(img, (20 + i, 22), 5, 230, -1)
        cv2.imwrite(str(images / f"{i:03d}.png"), img)
        rows.append({"id": i, " hemorrhage": positive})
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
    """Fold runs keep last-epoch weights and effectively disable early stopping."""
    config = resolve_config({"data": "x", "epochs": 7})
    out = fold_config(config, "r-cv0", Path("/tmp/i.parquet"))
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
    written = train_final(config, report, tmp_path / "models" / "tiny_real")
    card = json.loads(written.with_suffix(".json").read_text())
    assert card["threshold"] == pytest.approx(report.threshold)
    assert card["metrics"]["folds"] == 2
    assert card["training"]["images"] == {"train": 2 * N_PER_CLASS}


def test_crossval_cli_json(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``hemo crossval --json`` prints only the report JSON on stdout."""
    from hemo.cli import main

    config_file = tmp_path / "tiny.toml"
    config_file.write_text(
        f'name = "tinycli"\ndata = "{tiny_data}"\nimage_size = 32\nepochs = 1\nbatch_size = 4\n'
        '[input]\nmode = "display"\nchannels = 1\n[augment]\nstrength = 0.0\n'
    )
    status = main(["crossval", "--config", str(config_file), "--folds", "2", "--json"])
    assert status == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_folds"] == 2
    assert len(payload["folds"]) == 2
    assert {"mean", "std"} <= set(payload["summary"]["roc_auc"])
