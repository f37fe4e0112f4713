"""Tests of ``hemo evaluate``: JSON report, text table, --cam with and without masks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from tiny_models import tiny_model_path

from hemo import config
from hemo.cli import EXIT_ERROR, main


@pytest.fixture(scope="module")
def phantom_index(tmp_path_factory) -> Path:
    """index.parquet of a small phantom dataset (HU DICOM series with lesion masks)."""
    from hemo.phantom import write_demo_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_demo_dataset(root, n_studies=6, seed=0, slices_per_study=4, size=64)
    return root / "index.parquet"


def test_json_report_on_real_pngs(capsys, head_ct_dir):
    """--json prints the full report of the 20 test PNGs and exits 0."""
    model = tiny_model_path("display")
    code = main(["evaluate", "--model", str(model), "--data", str(head_ct_dir), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (data["n"], data["positives"], data["split"], data["cam"]) == (21, 11, "test", None)
    assert data["model"] == model.stem and data["data"] == str(head_ct_dir)
    assert data["notice"].startswith("Research tool, not a medical device")
    assert sum(sum(row) for row in data["confusion"]["matrix"]) == 21
    assert len(data["roc"]["x"]) == len(data["roc"]["y"]) >= 2
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        low, high = data["ci95"][key]
        assert low <= data[key] <= high


def test_text_table(capsys, head_ct_dir):
    """Without --json a table with every headline metric and the confusion matrix is printed."""
    model = tiny_model_path("display")
    assert main(["evaluate", "--model", str(model), "--data", str(head_ct_dir)]) == 0
    out = capsys.readouterr().out
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc", "ece", "truth 1"):
        assert key in out
    assert re.search(r"95 % CI \(stratified bootstrap\): accuracy \d\.\d{3}-\d\.\d{3}", out)


def test_unreadable_image_is_counted_noted_and_exits_1(capsys, tmp_path, phantom_index):
    """A truncated slice in the evaluated split: the others are evaluated, the JSON counts and
    notes the failure naming the file, and the exit status is 1 (some inputs failed)."""
    import pandas as pd

    index = pd.read_parquet(phantom_index)
    root = phantom_index.parent
    victim = root / index["path"].iloc[0]
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    broken = copy / victim.relative_to(root)
    broken.write_bytes(broken.read_bytes()[:5000])
    model = tiny_model_path("hu", tuple(config.RSNA_LABELS))
    argv = ["evaluate", "--model", str(model), "--data", str(copy), "--split", "all", "--json"]
    code = main(argv)
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (data["n"], data["n_failed"]) == (len(index) - 1, 1)
    assert broken.name in data["failed"][0]
    assert any(note.startswith("1 image(s) could not be read") for note in data["notes"])


def test_cam_without_masks_is_refused(capsys, head_ct_dir):
    """--cam on a dataset without masks: exit 2 and a message saying masks are needed."""
    model = tiny_model_path("display")
    code = main(["evaluate", "--model", str(model), "--data", str(head_ct_dir), "--cam", "gradcam"])
    assert code == EXIT_ERROR
    assert "--cam needs lesion masks" in capsys.readouterr().err


def test_phantoms_with_cam_study_level_and_rsna(capsys, phantom_index):
    """A six-label HU model on phantoms: study-level results, RSNA loss and Grad-CAM scores."""
    model = tiny_model_path("hu", config.RSNA_LABELS)
    argv = ["evaluate", "--model", str(model), "--data", str(phantom_index), "--split", "val"]
    code = main([*argv, "--cam", "gradcam", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["rsna_log_loss"] > 0 and set(data["per_label"]) == set(config.RSNA_LABELS)
    assert data["study_max"]["n"] == data["n_studies"] >= 1
    assert data["cam"]["method"] == "gradcam" and data["cam"]["n_slices"] >= 1
    code = main([*argv, "--cam", "nosuchcam"])
    assert code == EXIT_ERROR and "unknown CAM method 'nosuchcam'" in capsys.readouterr().err


def test_shipped_model_on_its_own_training_images_is_flagged_in_sample(capsys, head_ct_dir):
    """The shipped real-scan model was trained on all 140 Kaggle images: evaluating it there
    prints (and puts in the JSON notes) that the figures are in-sample."""
    model = Path(__file__).parents[1] / "models" / "headct_real.keras"
    code = main(["evaluate", "--model", str(model), "--data", str(head_ct_dir), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["n"] == 21
    assert any("not held out: it was trained on every image" in n for n in data["notes"])
    assert data["training_lookalikes"] is None  # the folder says it all; images not compared


def test_copies_of_training_images_in_another_folder_are_flagged(
    capsys, head_ct_dir: Path, tmp_path: Path
) -> None:
    """Resized copies of the shipped model's training images in another folder are named as
    not held out (notes and ``training_lookalikes``); turned copies and unseen heads are not."""
    import cv2

    for image_id, folder, turn in (
        ("005", "hemorrhage", False),
        ("010", "hemorrhage", True),
        ("100", "normal", False),
        ("101", "normal", True),
    ):
        image = cv2.imread(str(head_ct_dir / "head_ct" / f"{image_id}.png"))
        if turn:
            image = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
        else:
            image = cv2.resize(image, None, fx=0.8, fy=0.8)
        (tmp_path / folder).mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / folder / f"{image_id}.png"), image)
    model = Path(__file__).parents[1] / "models" / "headct_real.keras"
    argv = ["evaluate", "--model", str(model), "--data", str(tmp_path), "--split", "all"]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    found = data["training_lookalikes"]
    assert (found["images"], found["of"], found["threshold"]) == (2, 4, 0.93)
    pairs = {(Path(e["image"]).name, Path(e["training_image"]).name) for e in found["examples"]}
    assert pairs == {("005.png", "005.png"), ("100.png", "100.png")}
    assert all(e["similarity"] > 0.99 for e in found["examples"])
    assert any(n.startswith("2 of the 4 evaluated images look like images") for n in data["notes"])
    assert main(argv) == 0
    assert "not held out" in capsys.readouterr().out


def test_training_sets_with_patient_ids_are_not_compared_by_pixels(phantom_index: Path) -> None:
    """A model trained on phantoms (patient ids; synthetic heads all alike) gets no look-alike
    verdict on other phantoms, nor a reference set for the Predict page."""
    import dataclasses

    from hemo.datasets import load_index
    from hemo.evaluate import training_lookalikes, training_reference
    from hemo.model import read_card

    card = read_card(tiny_model_path("hu"))
    card = dataclasses.replace(
        card, training={"data": str(phantom_index.parent), "images": {"train": 24}}
    )
    index_df = load_index(phantom_index)
    assert training_lookalikes(card, index_df, "all") is None
    assert training_reference(card) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--model", "/nonexistent/m.keras", "--data", "/nonexistent/d", "--json"],
        ["predict", "--model", "/nonexistent/m.keras", "x.png", "--json"],
        ["index", "/nonexistent/d", "--json"],
    ],
)
def test_a_fatal_error_with_json_is_a_json_document_too(capsys, argv):
    """With --json, an error that stops the command (exit 2) is also one JSON object on stdout,
    {"error": ...}, beside the one-line error on stderr (stdout used to be empty)."""
    assert main(argv) == EXIT_ERROR
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"error": captured.err.strip().removeprefix("hemo: error: ")}
    assert "/nonexistent/" in json.loads(captured.out)["error"]
