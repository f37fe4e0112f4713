"""``hemo demo-data``: the written layout, the --json summary, errors, and no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hemo.cli import EXIT_ERROR, main
from hemo.commands.demo_data import MAX_SIZE_PX
from hemo.config import RSNA_LABELS


def test_demo_data_json_summary(tmp_path: Path, capsys) -> None:
    """--json prints only the summary (out, studies, slices, positives, splits) on stdout."""
    out = tmp_path / "demo"
    status = main(
        [
            "demo-data",
            "--out",
            str(out),
            "--n",
            "6",
            "--seed",
            "2",
            "--slices-per-study",
            "2",
            "--size",
            "96",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0
    summary = json.loads(captured.out)
    assert summary["out"] == str(out.resolve())
    assert (summary["studies"], summary["slices"], summary["seed"]) == (6, 12, 2)
    assert set(summary["positives"]) == set(RSNA_LABELS)
    assert summary["positive_studies"] == 3
    assert sum(summary["splits"].values()) == 12
    assert all(summary["split_studies"][s] >= 1 for s in ("train", "val", "test"))
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == 12 and int(index["label_any"].sum()) == summary["positives"]["any"]
    assert (out / "stage_2_train.csv").is_file()
    assert "phantoms" in captured.err  # the progress bar goes to stderr


def test_demo_data_bad_option_is_one_line_error(tmp_path: Path, capsys) -> None:
    """An out-of-range option exits 2 with one 'hemo: error:' line and no traceback, and
    leaves no folder behind."""
    status = main(["demo-data", "--out", str(tmp_path / "x"), "--n", "0"])
    err = capsys.readouterr().err
    assert status == 2
    assert "hemo: error: --n must be at least 1 study" in err and "Traceback" not in err
    argv = ["demo-data", "--out", str(tmp_path / "y"), "--skull-base", "0.8", "--vertex", "0.5"]
    assert main(argv) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_demo_data_does_not_import_tensorflow(tmp_path: Path) -> None:
    """The command runs without loading TensorFlow."""
    code = (
        "import sys; from hemo.cli import main; "
        f"main(['demo-data', '--out', {str(tmp_path)!r}, '--n', '1', '--slices-per-study', '1', '--size', '64']); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False False"


def _one_error_line(err: str) -> str:
    """The single 'hemo: error:' line of stderr (and no traceback)."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("hemo: error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("file", "--out is a file; give a folder"),
        ("under_file", "cannot create the output folder"),
        ("proc_child", "cannot create the output folder"),
        ("proc", "cannot write the dataset there"),
    ],
)
def test_demo_data_unwritable_out_is_one_line_error(
    where: str, reason: str, tmp_path: Path, capsys
) -> None:
    """An --out that is a file, under a file, or in /proc exits 2 with one line naming a path."""
    (tmp_path / "file").write_text("x")
    out = {
        "file": tmp_path / "file",
        "under_file": tmp_path / "file" / "demo",
        "proc_child": Path("/proc") / f"hemo-{tmp_path.name}",
        "proc": Path("/proc"),
    }[where]
    status = main(["demo-data", "--out", str(out), "--n", "1", "--slices-per-study", "1"])
    line = _one_error_line(capsys.readouterr().err)
    assert status == EXIT_ERROR
    assert line.startswith(f"hemo: error: {out}") and reason in line


def test_demo_data_size_is_capped(tmp_path: Path, capsys) -> None:
    """--size above MAX_SIZE_PX exits 2 at once, before the output folder is made."""
    out = tmp_path / "demo"
    status = main(["demo-data", "--out", str(out), "--n", "1", "--size", str(MAX_SIZE_PX + 1)])
    line = _one_error_line(capsys.readouterr().err)
    assert status == EXIT_ERROR
    assert line == f"hemo: error: --size must be at most {MAX_SIZE_PX} px, got {MAX_SIZE_PX + 1}"
    assert not out.exists()
