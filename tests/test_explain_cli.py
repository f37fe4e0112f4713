"""Tests of ``hemo explain``: overlays written as reported, errors per input, options checked."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from tiny_models import TINY_SIZE, tiny_model_path

from hemo.cli import EXIT_ERROR, EXIT_PARTIAL, main
from hemo.commands.explain import METHOD_CHOICES, overlay_name
from hemo.config import RSNA_LABELS


@pytest.fixture(scope="module")
def model_path() -> Path:
    return tiny_model_path("hu", tuple(RSNA_LABELS))


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three phantom DICOM slices."""
    from hemo.phantom import write_demo_dataset

    root = tmp_path_factory.mktemp("phantom")
    write_demo_dataset(root, n_studies=1, seed=3, slices_per_study=3, size=64)
    return sorted((root / "stage_2_train").glob("*.dcm"))


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict]:
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_method_choices_match_registry() -> None:
    """The parser offers exactly the registered methods."""
    from hemo.cam import METHODS

    assert METHOD_CHOICES == tuple(sorted(METHODS))


@pytest.mark.parametrize("method", METHOD_CHOICES)
def test_writes_the_overlays_it_reports(
    method: str, model_path: Path, dicoms: list[Path], tmp_path: Path, capsys
) -> None:
    """Each input gets an entry whose overlay PNG exists at the model-input size."""
    out = tmp_path / "out"
    argv = ["explain", "--model", str(model_path), *map(str, dicoms), "--out", str(out)]
    code, data = run_json(capsys, [*argv, "--method", method, "--json"])
    assert code == 0
    assert data["method"] == method and data["layer"] == "compact_features"
    assert data["notice"].startswith("Research tool, not a medical device")
    assert [entry["path"] for entry in data["results"]] == [str(p) for p in dicoms]
    for entry, dicom in zip(data["results"], dicoms, strict=True):
        assert Path(entry["overlay"]) == out / f"{dicom.stem}_{method}.png"
        picture = cv2.imread(entry["overlay"], cv2.IMREAD_UNCHANGED)
        assert picture.shape == (TINY_SIZE, TINY_SIZE, 3) and picture.dtype == np.uint8
        with Image.open(entry["overlay"]) as png:  # the file alone says it is no diagnosis
            assert png.text == {"Disclaimer": data["notice"]}
        assert 0.0 <= entry["probability"] <= 1.0
        if entry["flat"]:
            assert entry["peak"] is None
        else:
            assert 0 <= entry["peak"]["row"] < TINY_SIZE and 0 <= entry["peak"]["col"] < TINY_SIZE
        assert isinstance(entry["flat"], bool) and entry["seconds"] >= 0.0
        assert entry["outside_range"] is None or isinstance(entry["outside_range"], str)
        assert entry["label"] == "any" and isinstance(entry["positive"], bool)
        assert entry["uncertain"] is None  # no referral band in the tiny model's card
    assert data["referral"] is None and 0.0 <= data["threshold"] <= 1.0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{d.stem}_{method}.png" for d in dicoms)


def test_default_out_is_documented_and_used(
    model_path: Path,
    dicoms: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    """--help names the default folder, ./explanations/, and a run without --out writes there."""
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    assert "./explanations/ in the current folder" in " ".join(capsys.readouterr().out.split())
    monkeypatch.chdir(tmp_path)
    code, data = run_json(capsys, ["explain", "--model", str(model_path), str(dicoms[0]), "--json"])
    assert code == 0
    assert Path(data["results"][0]["overlay"]).parent.resolve() == tmp_path / "explanations"


def test_bad_input_gives_error_entry(
    model_path: Path, dicoms: list[Path], tmp_path: Path, capsys
) -> None:
    """A broken file and a PNG for an HU model fail alone; the good slice is explained; exit 1."""
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"this is not a scan")
    png = tmp_path / "photo.png"
    cv2.imwrite(str(png), np.full((40, 40), 128, np.uint8))
    out = tmp_path / "out"
    argv = ["explain", "--model", str(model_path), str(bad), str(dicoms[0]), str(png)]
    code, data = run_json(capsys, [*argv, "--out", str(out), "--label", "subdural", "--json"])
    assert code == EXIT_PARTIAL
    broken, good, photo = data["results"]
    assert broken["path"] == str(bad) and "error" in broken
    assert photo["path"] == str(png) and "model expects HU windows" in photo["error"]
    assert good["label"] == "subdural" and Path(good["overlay"]).is_file()
    assert good["positive"] is None  # the card's threshold applies to `any` only
    assert [p.name for p in out.iterdir()] == [f"{dicoms[0].stem}_gradcam.png"]


def test_text_output(model_path: Path, dicoms: list[Path], tmp_path: Path, capsys) -> None:
    """Without --json a table names the overlay files."""
    code = main(["explain", "--model", str(model_path), str(dicoms[0]), "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert code == 0
    assert "gradcam on compact_features" in text and f"{dicoms[0].stem}_gradcam.png" in text


def test_unknown_label_is_an_option_error(
    model_path: Path, dicoms: list[Path], tmp_path: Path, capsys
) -> None:
    """A label the model lacks stops the run with exit 2 and the outputs named."""
    argv = ["explain", "--model", str(model_path), str(dicoms[0]), "--out", str(tmp_path)]
    assert main([*argv, "--label", "bleed"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "--label 'bleed' is not an output of this model; outputs: any, epidural" in err


def test_bad_alpha_and_colormap(
    model_path: Path, dicoms: list[Path], tmp_path: Path, capsys
) -> None:
    """Alpha outside [0, 1] and unknown colormaps are refused."""
    argv = ["explain", "--model", str(model_path), str(dicoms[0]), "--out", str(tmp_path)]
    assert main([*argv, "--alpha", "2"]) == EXIT_ERROR
    assert "--alpha must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert main([*argv, "--colormap", "sepia"]) == EXIT_ERROR
    assert "--colormap 'sepia' is unknown; choose one of" in capsys.readouterr().err


def test_overlay_names_unique() -> None:
    """Same stems from different folders or zips get distinct names."""
    taken: set[str] = set()
    assert overlay_name("a/ID_1.dcm", "gradcam", taken) == "ID_1_gradcam.png"
    assert overlay_name("b/ID_1.dcm", "gradcam", taken) == "ID_1_2_gradcam.png"
    assert overlay_name("s.zip/ID_1", "gradcam", taken) == "ID_1_3_gradcam.png"


def test_overlay_names_of_frames_and_volume_slices() -> None:
    """A frame or a NIfTI slice is named by its number; a .nii.gz loses both suffixes."""
    taken: set[str] = set()
    assert overlay_name("x/enh.dcm", "gradcam", taken, 7) == "enh_frame0007_gradcam.png"
    assert overlay_name("x/head.nii.gz", "hirescam", taken, 12) == "head_frame0012_hirescam.png"
    assert overlay_name("x/head.nii", "hirescam", taken, 12) == "head_frame0012_2_hirescam.png"


def test_shipped_model_flat_map_has_no_peak_and_out_of_range_is_said(
    head_ct_dir: Path, tmp_path: Path, capsys
) -> None:
    """With the shipped headct_real: a black picture is outside the model's range (as hemo
    predict says), and a Kaggle image whose Grad-CAM map is flat has no peak instead of the
    corner (0, 0)."""
    from hemo.config import MODELS_DIR

    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((256, 256), np.uint8))
    kaggle = head_ct_dir / "head_ct" / "100.png"
    argv = ["explain", "--model", str(MODELS_DIR / "headct_real.keras"), str(black), str(kaggle)]
    code, data = run_json(capsys, [*argv, "--out", str(tmp_path / "out"), "--json"])
    assert code == 0
    dark, real = data["results"]
    assert dark["outside_range"].startswith("soft tissue is 0.0%")
    assert real["outside_range"] is None
    assert real["flat"] is True and real["peak"] is None
    assert data["note"] is None  # trained on real scans: nothing to say about every call
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "[outside the model's range]" in text and "note:" not in text
    dark_line = next(line for line in text.splitlines() if "black.png" in line)
    kaggle_line = next(line for line in text.splitlines() if "100.png" in line)
    assert dark_line.split()[2] == "none"  # no call outside the range, as hemo predict says
    assert "hemorrhage" in kaggle_line  # "no hemorrhage" or "hemorrhage", as hemo predict


def test_a_phantom_only_model_says_its_calls_are_not_findings(
    dicoms: list[Path], tmp_path: Path, capsys
) -> None:
    """The shipped phantom model, explained, carries the note hemo predict prints: in the JSON
    and above the table; a subtype explained with --label has no verdict ("-")."""
    from hemo.config import MODELS_DIR

    argv = ["explain", "--model", str(MODELS_DIR / "phantom_rsna3.keras"), str(dicoms[0])]
    code, data = run_json(capsys, [*argv, "--out", str(tmp_path), "--json"])
    assert code == 0 and "never seen a real scan" in data["note"]
    assert main([*argv, "--out", str(tmp_path), "--label", "subdural"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Research tool, not a medical device")  # the table's first line
    assert lines[2].startswith("note: ") and "never seen a real scan" in lines[2]
    assert lines[-1].split()[2] == "-"


def test_an_overlay_that_cannot_be_written_is_named(
    model_path: Path, dicoms: list[Path], tmp_path: Path, capsys
) -> None:
    """A folder where the overlay file should go stops the run naming --out and the file."""
    out = tmp_path / "out"
    (out / f"{dicoms[0].stem}_gradcam.png").mkdir(parents=True)
    assert main(["explain", "--model", str(model_path), str(dicoms[0]), "--out", str(out)]) == (
        EXIT_ERROR
    )
    err = capsys.readouterr().err
    assert f"--out {out}: cannot write {dicoms[0].stem}_gradcam.png" in err
