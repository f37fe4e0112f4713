"""hemo inspect: PHI-free JSON and text reports, errors as one line, no TensorFlow import."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from dicom_factory import PHI, ct_bytes

from hemo.cli import EXIT_ERROR, main


def test_json_dicom_report_without_phi(tmp_path, capsys):
    """--json prints HU statistics and metadata, and none of the patient data."""
    path = tmp_path / "phi"
    path.write_bytes(ct_bytes(**PHI))
    assert main(["inspect", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert (
        report["kind"] == "dicom" and report["hu"]["min"] == -1000.0 and report["hu"]["max"] == 40.0
    )
    assert set(report["hu"]) == {"min", "max", "mean", "p1", "p99"}
    assert report["metadata"]["Modality"] == "CT"
    for value in PHI.values():
        assert value not in out


def test_json_image_report(tmp_path, capsys):
    """An image reports kind, shape, bit depth and intensity statistics."""
    path = tmp_path / "scan.dcm"
    path.write_bytes(cv2.imencode(".png", np.full((20, 30, 3), 255, dtype=np.uint8))[1].tobytes())
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "png" and report["original_shape"] == [20, 30, 3]
    assert report["intensity"]["mean"] == pytest.approx(1.0)


def test_text_report(ct_small, capsys):
    """Without --json the report is human-readable text."""
    assert main(["inspect", str(ct_small)]) == 0
    out = capsys.readouterr().out
    assert "hu: min -896, max 1167" in out and "PixelSpacing: [0.661468, 0.661468]" in out


def test_bad_file_one_line_and_json_error(tmp_path, capsys):
    """A bad file exits 2 with one error line; with --json stdout carries the error."""
    path = tmp_path / "bad.dcm"
    path.write_text("not a scan")
    assert main(["inspect", str(path)]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hemo: error: {path}: not a DICOM, PNG, JPEG")
    assert main(["inspect", str(path), "--json"]) == EXIT_ERROR
    assert "not a DICOM" in json.loads(capsys.readouterr().out)["error"]


def test_folder_says_what_to_use_instead(tmp_path, capsys):
    """A folder exits 2 with one line naming it and the commands that take folders."""
    assert main(["inspect", str(tmp_path)]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"hemo: error: {tmp_path}: is a folder; hemo inspect takes one file "
        "(for a folder use hemo predict or hemo index)"
    ]


def test_inspect_does_not_import_tensorflow(ct_small):
    """hemo inspect runs without importing TensorFlow or Keras."""
    code = (
        "import sys; from hemo.cli import main; rc = main(['inspect', sys.argv[1], '--json']);"
        "assert rc == 0; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ct_small)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_undecodable_single_frame_file_gives_its_own_error(tmp_path, capsys):
    """A one-frame DICOM no decoder reads (real JPGExtended.dcm relabelled CT): one line with
    the decoders' reasons, not "none of its 1 frames could be decoded" around the path twice."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm", download=False))
    ds.Modality = "CT"
    path = tmp_path / "jpgext.dcm"
    ds.save_as(path)
    assert main(["inspect", str(path)]) == EXIT_ERROR
    lines = [line for line in capsys.readouterr().err.splitlines() if "hemo: error" in line]
    assert len(lines) == 1 and lines[0].count(str(path)) == 1
    assert "cannot decode (7FE0,0010) Pixel Data" in lines[0] and "gdcm:" in lines[0]
    assert "frames could be decoded" not in lines[0]
