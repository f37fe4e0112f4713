"""Tests of ``hemo predict``: JSON shape, exit codes, no PHI, stdout carrying only JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import tiny_model_path

from hemo.cli import EXIT_ERROR, EXIT_PARTIAL, main
from hemo.config import NOTICE

RESULT_KEYS = {
    "uncertain",
    "path",
    "probability",
    "probabilities",
    "positive",
    "threshold",
    "study_uid",
    "series_uid",
    "slice_z_mm",
}
#: Seconds a CLI subprocess may take (TensorFlow import included).
SUBPROCESS_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def model_path() -> Path:
    """A tiny display-grayscale model saved with its card."""
    return tiny_model_path("display")


def _run_json(capsys, argv: list[str]) -> tuple[int, dict]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_json_shape_and_exit_zero(capsys, model_path, ct_small, head_ct_dir):
    """All inputs good: exit 0, one entry per file with the documented keys."""
    png = head_ct_dir / "head_ct" / "000.png"
    code, data = _run_json(
        capsys, ["predict", "--model", str(model_path), str(png), str(ct_small), "--json"]
    )
    assert code == 0
    assert set(data) == {"notice", "model", "threshold", "referral", "note", "results", "studies"}
    assert data["notice"] == NOTICE
    assert data["model"] == model_path.stem and data["threshold"] == 0.5
    assert data["note"] is None  # a model whose card names no synthetic training set
    assert data["referral"] is None  # the tiny model's card has no band: nothing is flagged
    assert [r["path"] for r in data["results"]] == [str(png), str(ct_small)]
    for entry in data["results"]:
        assert RESULT_KEYS <= set(entry)
        assert entry["positive"] == (entry["probability"] >= entry["threshold"])
        assert entry["uncertain"] is None
    assert data["results"][1]["series_uid"] is not None
    (study,) = data["studies"]
    assert study["n_slices"] == 1 and study["slice_sources"] == [str(ct_small)]


def test_a_failed_input_gives_exit_one_and_an_error_entry(
    capsys, model_path, tmp_path, head_ct_dir
):
    """One bad file: exit 1, an {path, error} entry, the good file still predicted."""
    bad = tmp_path / "empty.dcm"
    bad.write_bytes(b"")
    png = head_ct_dir / "head_ct" / "001.png"
    code, data = _run_json(
        capsys, ["predict", "--model", str(model_path), str(bad), str(png), "--json"]
    )
    assert code == EXIT_PARTIAL
    assert data["results"][0] == {"path": str(bad), "error": f"{bad}: file is empty (0 bytes)"}
    assert data["results"][1]["path"] == str(png) and "probability" in data["results"][1]


def test_bad_model_exits_two_with_one_line(capsys, tmp_path, head_ct_dir):
    """A pickle as --model: exit 2, one 'hemo: error:' line, and on stdout (--json) only the
    same message as a JSON object."""
    pickle_path = tmp_path / "model.pkl"
    pickle_path.write_bytes(b"\x80\x04K\x01.")
    code = main(["predict", "--model", str(pickle_path), str(head_ct_dir / "head_ct"), "--json"])
    captured = capsys.readouterr()
    assert code == EXIT_ERROR and "pickle" in json.loads(captured.out)["error"]
    assert captured.err.strip().startswith("hemo: error:") and "pickle" in captured.err


@pytest.mark.parametrize("command", ["predict", "explain", "evaluate"])
def test_a_missing_model_is_one_line_before_tensorflow_starts(command, tmp_path):
    """A mistyped --model: stderr is the one error line (TensorFlow, which prints its own
    start-up lines on stderr, is not even imported), exit 2."""
    missing = tmp_path / "nope.keras"
    argv = {
        "predict": ["predict", "--model", str(missing), "x.png"],
        "explain": ["explain", "--model", str(missing), "x.png"],
        "evaluate": ["evaluate", "--model", str(missing), "--data", str(tmp_path)],
    }[command]
    probe = (
        "import sys; from hemo.cli import main; code = main(sys.argv[1:]); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        cwd=tmp_path,
    )
    assert done.returncode == EXIT_ERROR, done.stderr
    assert done.stderr.splitlines() == [f"hemo: error: {missing}: model file not found"]


def test_model_folder_exits_two_saying_it_is_a_folder(capsys, tmp_path, head_ct_dir):
    """A folder as --model: exit 2, one line naming it and what --model expects."""
    code = main(["predict", "--model", str(tmp_path), str(head_ct_dir / "head_ct" / "002.png")])
    captured = capsys.readouterr()
    assert code == EXIT_ERROR and captured.out == ""
    errors = [line for line in captured.err.splitlines() if line.startswith("hemo: error:")]
    assert "Traceback" not in captured.err and errors == [
        f"hemo: error: {tmp_path}: is a folder, not a model; "
        "give the NAME.keras file (its card NAME.json beside it)"
    ]


def test_text_output_is_a_table(capsys, model_path, head_ct_dir):
    """Without --json the output is a readable table with a verdict per input."""
    png = head_ct_dir / "head_ct" / "002.png"
    assert main(["predict", "--model", str(model_path), str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Research tool, not a medical device: never use it to diagnose")
    assert "P(any)" in out and str(png) in out
    assert "negative" in out or "POSITIVE" in out


def test_subprocess_stdout_is_only_json_without_phi(model_path, tmp_path, cq500_uncompressed):
    """The real console script: stdout parses as JSON, carries no patient data, exit 1 on a bad zip member."""
    import zipfile

    import pydicom

    ds = pydicom.dcmread(cq500_uncompressed)
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PHI-ID-12345"
    ds.PatientBirthDate = "19700101"
    ds.InstitutionName = "Secret General Hospital"
    tagged = tmp_path / "tagged.dcm"
    ds.save_as(tagged)
    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tagged, "good.dcm")
        zf.writestr("bad.dcm", b"garbage" * 20)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hemo",
            "predict",
            "--model",
            str(model_path),
            str(archive),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env=env,
    )
    assert proc.returncode == EXIT_PARTIAL, proc.stderr
    data = json.loads(proc.stdout)
    paths = [r["path"] for r in data["results"]]
    assert paths == [f"{archive}/bad.dcm", f"{archive}/good.dcm"]
    assert "error" in data["results"][0] and "probability" in data["results"][1]
    for secret in ("Doe", "PHI-ID-12345", "19700101", "Secret General"):
        assert secret not in proc.stdout and secret not in proc.stderr


def test_training_lookalikes_name_the_training_image(
    capsys, tmp_path, head_ct_dir, cq500_uncompressed, model_path, caplog
):
    """``--training-lookalikes``: a resized Kaggle image given to the shipped model (trained on
    all of them) names its training twin; a CQ500 slice it never saw gets null; without the
    flag the key is absent; a model whose training folder is not here says so."""
    import cv2

    image = cv2.imread(str(head_ct_dir / "head_ct" / "004.png"))
    copy = tmp_path / "copy.png"
    cv2.imwrite(str(copy), cv2.resize(image, None, fx=0.7, fy=0.7))
    shipped = Path(__file__).parents[1] / "models" / "headct_real.keras"
    argv = ["predict", "--model", str(shipped), str(copy), str(cq500_uncompressed), "--json"]
    code, data = _run_json(capsys, [*argv, "--training-lookalikes"])
    assert code == 0
    seen, unseen = data["results"]
    assert Path(seen["training_lookalike"]["image"]).name in {"004.png", "057.png"}
    assert seen["training_lookalike"]["similarity"] > 0.97
    assert unseen["training_lookalike"] is None
    _, plain = _run_json(capsys, argv)
    assert all("training_lookalike" not in r for r in plain["results"])
    assert main(argv[:-1] + ["--training-lookalikes"]) == 0
    assert "[looks like training image 0" in capsys.readouterr().out
    code, tiny = _run_json(
        capsys,
        ["predict", "--model", str(model_path), str(copy), "--json", "--training-lookalikes"],
    )
    assert tiny["results"][0]["training_lookalike"] is None
    assert "is not on this machine" in caplog.text


def test_names_with_control_characters_cannot_drive_the_terminal(model_path, head_ct_dir, tmp_path):
    """The console script on a file named with an escape sequence and a newline (a forged
    "hemo: error:" line): the text table and the log show it escaped; --json keeps the name."""
    from hemo.cli import printable

    name = "x\x1b[31mRED\x1b]0;TITLE\x07\nhemo: error: forged\u202e.dcm"
    bad = tmp_path / name
    bad.write_bytes(b"not a scan at all")
    good = sorted((head_ct_dir / "head_ct").glob("*.png"))[0]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "hemo", "predict", "--model", str(model_path)]
    done = subprocess.run(
        [*command, str(good), str(bad)], capture_output=True, env=env, timeout=300, check=False
    )
    assert done.returncode == EXIT_PARTIAL
    out, err = done.stdout.decode(), done.stderr.decode()
    for text in (out, err):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert not any(line.startswith("hemo: error: forged") for line in text.splitlines())
    assert "\\x1b[31mRED" in out and "\\nhemo: error: forged\\u202e.dcm" in out
    assert "ERROR hemo.commands.predict: " in err and "\\x1b[31mRED" in err
    done = subprocess.run(
        [*command, str(bad), "--json"], capture_output=True, env=env, timeout=300, check=False
    )
    assert json.loads(done.stdout)["results"][0]["path"] == str(bad)
    assert printable("tab\there") == "tab\\there" and printable("é ü 中") == "é ü 中"


def test_a_phantom_only_model_says_its_calls_are_not_findings(capsys, cq500_uncompressed):
    """The shipped phantom model on a real slice: the JSON's note and the table's note line say
    it never saw a real scan (as the Predict page does); the real-scan model has no note."""
    from hemo.config import MODELS_DIR

    argv = ["predict", "--model", str(MODELS_DIR / "phantom_rsna3.keras"), str(cq500_uncompressed)]
    code, data = _run_json(capsys, [*argv, "--json"])
    assert code == 0 and "never seen a real scan" in data["note"]
    assert main(argv) == 0
    assert "\nnote: phantom_rsna3 was trained and tested on synthetic phantoms only" in (
        capsys.readouterr().out
    )
    real = ["predict", "--model", str(MODELS_DIR / "headct_real.keras"), str(cq500_uncompressed)]
    assert _run_json(capsys, [*real, "--json"])[1]["note"] is None


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--json", "--model", "m.keras"],  # no INPUT
        ["inspect", "--json", "a.dcm", "--no-such-flag"],
        ["evaluate", "--json", "--model", "m.keras", "--data", "d", "--split", "bogus"],
        ["crossval", "--json", "--config", "c.toml", "--seeds", "a,b"],
        ["index", "--json"],
    ],
    ids=["missing-input", "unknown-flag", "bad-choice", "bad-type", "missing-dir"],
)
def test_a_usage_error_with_json_still_puts_json_on_stdout(argv, capsys):
    """argparse's usage errors (exit status 2, the usage message on stderr) also give a --json
    reader ``{"error": ...}`` on stdout naming the command and the fault, never empty stdout."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    captured = capsys.readouterr()
    assert stop.value.code == EXIT_ERROR and "usage:" in captured.err
    error = json.loads(captured.out)["error"]
    # argparse names the subcommand, or (unrecognized arguments) the top-level parser
    assert error.startswith(("hemo: ", f"hemo {argv[0]}: ")) and " --help)" in error
    assert "--no-such-flag" in error or argv[0] in error
    with pytest.raises(SystemExit):
        main([token for token in argv if token != "--json"])
    assert capsys.readouterr().out == ""  # without --json, nothing on stdout as before
