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


def test_index_unknown_folder_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unrecognised folder exits 2 with one 'hemo: error:' line and nothing on stdout."""
    assert main(["index", str(tmp_path), "--json"]) == EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
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


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_index_unwritable_out_fails_before_indexing(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out that is a folder, or lies under a file, exits 2 naming it, before any indexing."""
    (tmp_path / "file").write_text("x")
    out = {"folder": tmp_path / "taken", "under_file": tmp_path / "file" / "x.parquet"}[where]
    (tmp_path / "taken").mkdir()
    empty = tmp_path / "empty"  # an unknown layout: indexing first would fail with that message
    empty.mkdir()
    assert main(["index", str(empty), "--out", str(out)]) == EXIT_ERROR
    line = _one_error_line(capsys.readouterr())
    assert line.startswith(f"hemo: error: {out}: ")
    assert ("is a folder" if where == "folder" else "is a file, not a folder") in line
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
