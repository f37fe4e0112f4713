"""``hemo index``: exit codes, JSON shape, text output and --out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hemo.cli import EXIT_ERROR, EXIT_PARTIAL, main
from hemo.datasets import load_index


def test_index_json_shape_on_kaggle_sample(
    head_ct_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints only the documented object: root, layout, total, labels, splits, problems."""
    assert main(["index", str(head_ct_dir), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload) == {"root", "layout", "total", "labels", "splits", "problems"}
    assert payload["layout"] == "kaggle_head_ct"
    assert payload["total"] == 140
    assert payload["labels"]["label_any"] == {"positive": 70, "negative": 70, "unknown": 0}
    assert set(payload["splits"]) == {"train", "val", "test"}
    assert all(set(s) == {"total", "positive"} for s in payload["splits"].values())
    assert sum(s["positive"] for s in payload["splits"].values()) == 70
    assert payload["problems"] == []


def test_index_text_output_and_out_file(
    head_ct_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text mode prints layout, total and splits; --out writes a loadable index."""
    out = tmp_path / "idx" / "head.parquet"
    assert main(["index", str(head_ct_dir), "--out", str(out), "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert "layout: kaggle_head_ct" in text and "total:  140" in text and "train" in text
    assert len(load_index(out)) == 140


def test_index_exits_1_and_lists_unreadable_files(
    head_ct_dir: Path, cq500_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder with an unreadable DICOM indexes the rest, lists it, and exits 1."""
    (tmp_path / "positive").mkdir()
    (tmp_path / "negative").mkdir()
    shutil.copy(head_ct_dir / "head_ct" / "000.png", tmp_path / "positive")
    shutil.copy(cq500_dir / "CT000001.dcm", tmp_path / "negative")
    (tmp_path / "negative" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 20)
    assert main(["index", str(tmp_path), "--json", "--workers", "1"]) == EXIT_PARTIAL
    payload = json.loads(capsys.readouterr().out)
    assert payload["total"] == 2
    unreadable = [p for p in payload["problems"] if p["kind"] == "unreadable"]
    assert [Path(p["path"]).name for p in unreadable] == ["broken.dcm"]


def test_index_leaves_out_cut_short_images_and_fake_pngs(
    head_ct_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated real PNG and a text file named .png in class folders are listed as
    unreadable, left out of the counts, and make the exit status 1; whole images are kept."""
    pngs = sorted((head_ct_dir / "head_ct").glob("*.png"))
    for folder, picks in (("Hemorrhage", pngs[:3]), ("NORMAL", pngs[-3:])):
        (tmp_path / folder).mkdir()
        for png in picks:
            shutil.copy(png, tmp_path / folder)
    (tmp_path / "Hemorrhage" / "broken.png").write_bytes(pngs[3].read_bytes()[:500])
    (tmp_path / "NORMAL" / "notes.png").write_text("not an image\n")
    assert main(["index", str(tmp_path), "--json"]) == EXIT_PARTIAL
    payload = json.loads(capsys.readouterr().out)
    assert payload["total"] == 6 and payload["labels"]["label_any"]["positive"] == 3
    unreadable = {Path(p["path"]).name: p["reason"] for p in payload["problems"]}
    assert set(unreadable) == {"broken.png", "notes.png"}
    assert "truncated" in unreadable["broken.png"]
    assert all(p["kind"] == "unreadable" for p in payload["problems"])


def test_kaggle_layout_lists_a_fake_png_and_exits_1(
    head_ct_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Kaggle layout (images found by name, no sniffing) too: a labelled id whose file is
    text, or empty, is an unreadable problem, left out, exit 1 (it was indexed, exit 0)."""
    root = tmp_path / "kg"
    shutil.copytree(head_ct_dir, root)
    (root / "head_ct" / "003.png").write_text("garbage")
    (root / "head_ct" / "104.png").write_bytes(b"")
    assert main(["index", str(root), "--json", "--out", str(tmp_path / "i.parquet")]) == 1
    payload = json.loads(capsys.readouterr().out)
    reasons = {Path(p["path"]).name: p["reason"] for p in payload["problems"]}
    assert payload["total"] == 138 and set(reasons) == {"003.png", "104.png"}
    assert "bytes are not a PNG, JPEG, TIFF or DICOM" in reasons["003.png"]
    assert reasons["104.png"] == "the file is empty"


def test_index_lists_a_manifest_file_once_and_drops_conflicting_rows(
    head_ct_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file listed twice alike is indexed once (and said so); listed with two labels it is
    left out, naming what differs; a bad label is quoted as written."""
    pngs = sorted((head_ct_dir / "head_ct").glob("*.png"))
    lines = ["path,label_any,patient_id"]
    lines += [f"{p},{1 if i < 4 else 0},p{i}" for i, p in enumerate(pngs[:8])]
    lines += [f"{pngs[0]},1,p0", f"{pngs[1]},0,p1", f"{pngs[2]},2,p2"]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    assert main(["index", str(tmp_path), "--json", "--seed", "1"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["total"] == 7  # 8 files, 001 left out for its two labels
    problems = {(p["kind"], Path(p["path"]).name): p["reason"] for p in payload["problems"]}
    assert problems[("duplicate", pngs[0].name)] == "listed 2 times; indexed once"
    assert (
        problems[("bad_label", pngs[1].name)] == "listed 2 times with different label_any; left out"
    )
    bad = next(
        reason for (kind, _), reason in problems.items() if kind == "bad_label" and "must" in reason
    )
    assert bad == "label_any must be 0 or 1, got 2"


def test_index_warns_when_the_folders_own_index_has_other_splits(
    phantom_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The folder's index.parquet is what everything reads: a re-split that differs says so."""
    copy = tmp_path / "data"
    shutil.copytree(phantom_dir, copy)
    saved = load_index(copy / "index.parquet")
    for seed in range(20):
        caplog.clear()
        assert main(["index", str(copy), "--seed", str(seed)]) == 0
        warned = [r.message for r in caplog.records if "its splits differ" in r.message]
        printed = load_index(copy / "index.parquet")
        assert printed["split"].tolist() == saved["split"].tolist()  # never rewritten here
        if warned:
            assert str(copy / "index.parquet") in warned[0]
            return
    raise AssertionError("no seed gave other splits than the saved index")


def test_index_of_one_patient_warns_that_val_and_test_are_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """One study (one patient) all lands in train: the index says val and test are empty and
    why; a dataset of several patients says nothing."""
    from hemo.phantom import write_demo_dataset

    write_demo_dataset(tmp_path / "one", n_studies=1, seed=0, slices_per_study=3, size=64)
    assert main(["index", str(tmp_path / "one"), "--json"]) == 0
    (warning,) = [r.getMessage() for r in caplog.records if "split by patient" in r.getMessage()]
    assert warning.startswith(f"{tmp_path / 'one'}: no 'val' or 'test' images: the 3 images")
    assert "from 1 patient(s)" in warning
    assert json.loads(capsys.readouterr().out)["splits"]["val"]["total"] == 0
    caplog.clear()
    write_demo_dataset(tmp_path / "many", n_studies=12, seed=0, slices_per_study=1, size=64)
    assert main(["index", str(tmp_path / "many"), "--json"]) == 0
    assert not [r for r in caplog.records if "split by patient" in r.getMessage()]


def test_index_unknown_folder_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unrecognised folder exits 2 with one 'hemo: error:' line, and on stdout (--json) only
    the same message as a JSON object."""
    (tmp_path / "notes.txt").write_text("not a dataset")
    assert main(["index", str(tmp_path), "--json"]) == EXIT_ERROR
    captured = capsys.readouterr()
    assert set(json.loads(captured.out)) == {"error"}
    errors = [line for line in captured.err.splitlines() if line.startswith("hemo: error:")]
    assert len(errors) == 1 and "unknown dataset layout" in errors[0]
    assert "Traceback" not in captured.err


def test_index_layout_option_overrides_detection(
    head_ct_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--layout forces an adapter; a wrong one fails with that adapter's message."""
    assert main(["index", str(head_ct_dir), "--layout", "cq500"]) == EXIT_ERROR
    assert "no reads.csv" in capsys.readouterr().err


def _one_error_line(captured: pytest.CaptureResult[str]) -> str:
    """The single 'hemo: error:' line of a failed command (no traceback on stderr)."""
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("hemo: error:")]
    assert len(errors) == 1, captured.err
    return errors[0]


@pytest.mark.parametrize("where", ["folder", "under_file", "csv_name"])
def test_index_unwritable_out_fails_before_indexing(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out that is a folder, lies under a file or is not named .parquet (Parquet bytes in a
    .csv would then be read as a label table) exits 2 naming it, before any indexing."""
    (tmp_path / "file").write_text("x")
    out = {
        "folder": tmp_path / "taken",
        "under_file": tmp_path / "file" / "x.parquet",
        "csv_name": tmp_path / "index.csv",
    }[where]
    (tmp_path / "taken").mkdir()
    empty = tmp_path / "empty"  # an unknown layout: indexing first would fail with that message
    empty.mkdir()
    assert main(["index", str(empty), "--out", str(out)]) == EXIT_ERROR
    line = _one_error_line(capsys.readouterr())
    assert line.startswith(f"hemo: error: {out}: ")
    assert {
        "folder": "is a folder",
        "under_file": "is a file, not a folder",
        "csv_name": "an index is a Parquet file: name it FILE.parquet",
    }[where] in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "taken"]


def test_index_write_failure_is_one_line_and_leaves_no_temp_file(
    phantom_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --out whose folder exists but takes no files (/proc) exits 2 naming the path."""
    out = Path("/proc") / f"hemo-{tmp_path.name}.parquet"
    assert main(["index", str(phantom_dir), "--out", str(out)]) == EXIT_ERROR
    line = _one_error_line(capsys.readouterr())
    assert line.startswith(f"hemo: error: {out}: cannot write the index there: ")
    assert not out.with_name(out.name + ".tmp").exists()


def test_save_index_into_a_folder_is_refused(phantom_dir: Path, tmp_path: Path) -> None:
    """save_index refuses a folder as its file and leaves no temporary file behind."""
    from hemo.datasets import save_index
    from hemo.errors import DatasetError

    frame = load_index(phantom_dir)
    with pytest.raises(DatasetError, match="is a folder; give the FILE.parquet"):
        save_index(frame, tmp_path)
    assert not (tmp_path.parent / f"{tmp_path.name}.tmp").exists()


def test_a_nifti_volume_in_a_class_folder_is_named_not_indexed(
    head_ct_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A NIfTI volume (raw .nii, whose magic sits at byte 344, or .nii.gz) beside images in a
    class folder is reported as a volume to convert, not as an unknown file; the images are
    indexed."""
    import gzip

    import nibabel as nib
    import numpy as np

    for folder in ("hemorrhage", "normal"):
        (tmp_path / folder).mkdir()
        shutil.copy(head_ct_dir / "head_ct" / "000.png", tmp_path / folder / "a.png")
    volume = nib.Nifti1Image(np.zeros((8, 8, 3), np.int16), np.eye(4))
    nib.save(volume, tmp_path / "hemorrhage" / "head.nii")
    raw = (tmp_path / "hemorrhage" / "head.nii").read_bytes()
    (tmp_path / "normal" / "head.nii.gz").write_bytes(gzip.compress(raw))
    assert main(["index", str(tmp_path), "--json", "--out", str(tmp_path / "i.parquet")]) == 0
    payload = json.loads(capsys.readouterr().out)
    volumes = {Path(p["path"]).name: p for p in payload["problems"]}
    assert payload["total"] == 2 and set(volumes) == {"head.nii", "head.nii.gz"}
    assert all("a NIfTI volume" in p["reason"] and "hemo convert" in p["reason"]
               for p in volumes.values())  # fmt: skip
