"""Multi-frame DICOM: one slice per frame, with each frame's own geometry and rescale.

Real files: pydicom's ``eCT_Supplemental.dcm`` (an Enhanced CT of two frames whose rescale,
spacing, orientation and window sit in the Shared Functional Groups Sequence and whose
positions sit in the Per-frame one), and Enhanced CT files built in memory from real CQ500
slices, so every frame can be checked against the single-frame slice it came from.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import STORED_SHIFT, enhanced_ct, to_bytes
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless

from hemo import config
from hemo.cli import main
from hemo.dicom import CTSlice, read_dicom, read_dicom_frames
from hemo.errors import DicomError, LimitError
from hemo.io import iter_scans
from hemo.series import group_series

#: CQ500 slices (file order is not anatomical order) made into frames.
CQ500_SLICES = ("CT000100.dcm", "CT000101.dcm", "CT000102.dcm", "CT000103.dcm")
#: The frame (0-based) whose stored values are shifted and whose intercept compensates.
SHIFTED_FRAME = 2


@pytest.fixture(scope="module")
def cq500_slices(cq500_dir: Path) -> list[Path]:
    return [cq500_dir / name for name in CQ500_SLICES]


@pytest.fixture(scope="module")
def enhanced_file(cq500_slices: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("multiframe") / "enhanced_ct.dcm"
    path.write_bytes(to_bytes(enhanced_ct(cq500_slices, shift_frame=SHIFTED_FRAME)))
    return path


def _frames(source: object, name: str | None = None) -> list[CTSlice]:
    out = list(read_dicom_frames(source, name))  # type: ignore[arg-type]
    assert all(isinstance(f, CTSlice) for f in out), out
    return out  # type: ignore[return-value]


def test_each_frame_reads_as_the_real_slice_it_was_made_from(
    enhanced_file: Path, cq500_slices: list[Path]
) -> None:
    """HU (one frame with shifted stored values and its own intercept), position and spacing."""
    frames = _frames(enhanced_file)
    assert [f.frame for f in frames] == [1, 2, 3, 4]
    for frame, original in zip(frames, map(read_dicom, cq500_slices), strict=True):
        np.testing.assert_array_equal(frame.hu, original.hu)
        assert frame.slice_z_mm == pytest.approx(original.slice_z_mm)
        assert frame.position_mm == pytest.approx(original.position_mm)
        assert frame.pixel_spacing_mm == pytest.approx(original.pixel_spacing_mm)
        assert frame.default_window is not None and frame.default_window.center_hu == 40
        assert frame.source == str(enhanced_file) and frame.label.endswith(f"(frame {frame.frame})")
        assert not frame.hu.flags.writeable
        assert frame.metadata["rescale_assumed"] is False
    assert frames[SHIFTED_FRAME].metadata["RescaleIntercept"] == pytest.approx(
        float(pydicom.dcmread(cq500_slices[SHIFTED_FRAME]).RescaleIntercept) - STORED_SHIFT
    )


def test_read_dicom_refuses_several_frames_and_names_the_way(enhanced_file: Path) -> None:
    with pytest.raises(
        DicomError,
        match=r"Number of Frames is 4: the file holds 4 slices.*"
        r"read_dicom_frames",
    ):
        read_dicom(enhanced_file)


def _gdcm_jpeg_lossless(data: bytes, tmp: Path) -> bytes:
    """``data`` re-encoded as JPEG Lossless (process 14, SV1) by GDCM, the CQ500 files' syntax."""
    import gdcm

    src, dst = tmp / "plain.dcm", tmp / "jpeg_lossless.dcm"
    src.write_bytes(data)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return dst.read_bytes()


@pytest.mark.parametrize("syntax", ["rle", "jpeg2000", "jpeg_lossless"])
def test_compressed_frames_decode_one_by_one(
    syntax: str, cq500_slices: list[Path], tmp_path: Path
) -> None:
    """One fragment per frame, through each decoder hemo uses (pydicom RLE, pylibjpeg's
    OpenJPEG, GDCM): the per-frame path gives the HU of the uncompressed frames."""
    # GDCM's re-encoding writes one rescale for every frame, so its file has no shifted frame
    shift = None if syntax == "jpeg_lossless" else SHIFTED_FRAME
    plain = to_bytes(enhanced_ct(cq500_slices, shift_frame=shift))
    if syntax == "jpeg_lossless":
        data = _gdcm_jpeg_lossless(plain, tmp_path)
    else:
        ds = enhanced_ct(cq500_slices, shift_frame=shift)
        ds.compress(RLELossless if syntax == "rle" else JPEG2000Lossless)
        data = to_bytes(ds)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID.is_compressed
    for a, b in zip(_frames(data, f"{syntax}.dcm"), _frames(plain, "raw.dcm"), strict=True):
        np.testing.assert_array_equal(a.hu, b.hu)


def test_a_corrupt_frame_is_reported_and_the_others_are_read(cq500_slices: list[Path]) -> None:
    ds = enhanced_ct(cq500_slices)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    from pydicom.encaps import encapsulate, generate_frames

    fragments = list(generate_frames(ds.PixelData, number_of_frames=len(cq500_slices)))
    fragments[1] = fragments[1][:64]  # frame 2 cut short
    ds.PixelData = encapsulate(fragments)
    results = list(read_dicom_frames(to_bytes(ds), "cut.dcm"))
    assert isinstance(results[1], DicomError)
    assert "cut.dcm (frame 2)" in str(results[1]) and "cannot decode" in str(results[1])
    good = [r for k, r in enumerate(results) if k != 1]
    assert all(isinstance(r, CTSlice) for r in good)
    assert [r.frame for r in good] == [1, 3, 4]  # type: ignore[union-attr]


def test_frames_without_functional_groups_have_no_position_and_order_by_frame(
    cq500_slices: list[Path],
) -> None:
    """A plain multi-frame CT: top-level rescale for all; its one position is not each frame's."""
    frames = _frames(to_bytes(enhanced_ct(cq500_slices, functional_groups=False)), "plain.dcm")
    for frame, original in zip(frames, map(read_dicom, cq500_slices), strict=True):
        np.testing.assert_array_equal(frame.hu, original.hu)
        assert frame.position_mm is None and frame.slice_z_mm is None
    (series,) = group_series(reversed(frames))
    assert [s.frame for s in series.slices] == [1, 2, 3, 4]


def test_real_enhanced_ct_from_pydicom() -> None:
    """eCT_Supplemental: shared rescale (-1024), per-frame positions, shared window."""
    path = get_testdata_file("eCT_Supplemental.dcm", download=False)
    stored = pydicom.dcmread(path).pixel_array.astype(np.float32)
    frames = _frames(path)
    assert [f.frame for f in frames] == [1, 2]
    for frame in frames:
        expected = stored[frame.frame - 1] - 1024.0
        expected[expected < config.HU_FLOOR] = config.HU_AIR
        np.testing.assert_array_equal(frame.hu, expected)
        assert frame.slice_thickness_mm == 10.0
        assert frame.default_window is not None
        assert (frame.default_window.center_hu, frame.default_window.width_hu) == (49.0, 102.0)
    assert [f.position_mm[2] for f in frames] == [-159.0, -149.0]  # type: ignore[index]
    (series,) = group_series(frames)
    assert len(series) == 2


def test_iter_scans_gives_one_result_per_frame(enhanced_file: Path) -> None:
    results = list(iter_scans([enhanced_file]))
    assert [r.name for r in results] == [str(enhanced_file)] * 4
    assert [r.scan.frame for r in results] == [1, 2, 3, 4]  # type: ignore[union-attr]
    uploaded = list(iter_scans([("upload.dcm", enhanced_file.read_bytes())]))
    assert [r.scan.frame for r in uploaded] == [1, 2, 3, 4]  # type: ignore[union-attr]


def test_frame_limit_is_checked_before_decoding(
    enhanced_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "MAX_SLICES_PER_SERIES", 3)
    with pytest.raises(LimitError, match="Number of Frames is 4, more than the limit of 3"):
        read_dicom_frames(enhanced_file)


def test_pixels_per_file_limit_is_checked_before_decoding(
    enhanced_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few frames of large slices (40 x 4096 x 4096 in 40 KB of JPEG 2000 decoded to 2.7 GB)
    are bounded by the file's pixel total, here lowered to three of these four frames."""
    monkeypatch.setattr(config, "MAX_PIXELS_PER_FILE", 3 * 512 * 512)
    with pytest.raises(LimitError, match=r"4 x 512 x 512 = 1048576 pixels, more than the limit"):
        read_dicom_frames(enhanced_file)


def test_truncated_multiframe_pixel_data_names_the_frames(cq500_slices: list[Path]) -> None:
    ds = enhanced_ct(cq500_slices)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) * 3 // 4]
    with pytest.raises(
        DicomError, match=r"x \(0028,0008\) Number of Frames = 512 x 512 x 16 / 8 x 4"
    ):
        read_dicom_frames(to_bytes(ds), "short.dcm")


def test_predict_reads_every_frame_like_the_slices(
    enhanced_file: Path, cq500_slices: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped model: same probabilities for frames as for the slice files; one study."""
    from hemo.config import MODELS_DIR
    from hemo.predict import Predictor

    model = MODELS_DIR / "headct_real.keras"
    with Predictor(model) as predictor:
        framed = predictor.run([enhanced_file])
        single = predictor.predict([str(p) for p in cq500_slices])
    assert [p.frame for p in framed.results] == [1, 2, 3, 4]
    by_z = {round(p.slice_z_mm, 3): p.probability for p in single}
    for p in framed.results:
        assert p.source == str(enhanced_file)
        assert p.probability == pytest.approx(by_z[round(p.slice_z_mm, 3)], abs=1e-5)
    (study,) = framed.studies
    assert study.n_slices == 4 and sorted(study.slice_frames) == [1, 2, 3, 4]
    assert study.most_suspicious_frame == study.slice_frames[study.most_suspicious_index]
    assert main(["predict", "--model", str(model), str(enhanced_file), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["frame"] for r in data["results"]] == [1, 2, 3, 4]
    assert data["studies"][0]["slice_frames"] == list(study.slice_frames)


def test_explain_writes_one_overlay_per_frame(
    enhanced_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hemo.config import MODELS_DIR

    model = MODELS_DIR / "headct_real.keras"
    out = tmp_path / "cams"
    assert (
        main(["explain", "--model", str(model), str(enhanced_file), "--out", str(out), "--json"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert [r["frame"] for r in data["results"]] == [1, 2, 3, 4]
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"enhanced_ct_frame000{k}_gradcam.png" for k in (1, 2, 3, 4)]


def test_inspect_describes_every_frame(
    enhanced_file: Path, cq500_slices: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(enhanced_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 4 and report["frame_errors"] == []
    originals = [read_dicom(p) for p in cq500_slices]
    assert report["frame_z_mm"] == pytest.approx([s.slice_z_mm for s in originals])
    hu = np.concatenate([s.hu.ravel() for s in originals])
    assert report["hu"]["min"] == float(hu.min()) and report["hu"]["max"] == float(hu.max())
    assert report["hu"]["mean"] == pytest.approx(float(hu.mean(dtype=np.float64)))
    assert "PatientID" not in json.dumps(report)


def test_dashboard_upload_of_a_multiframe_file_is_one_series(enhanced_file: Path) -> None:
    from hemo import dashboard

    decoded = dashboard.decode([("upload.dcm", enhanced_file.read_bytes())])
    assert not decoded.errors and not decoded.singles
    (series,) = decoded.series
    assert len(series.slices) == 4 and dashboard.series_name(series) == "upload.dcm"
    z = [s.slice_z_mm for s in series.slices]
    assert z == sorted(z)


def test_a_missing_rescale_is_assumed_for_every_frame_and_logged_once(
    cq500_slices: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Frames without functional groups or a top-level rescale: identity for each, one warning."""
    ds = enhanced_ct(cq500_slices, functional_groups=False)
    del ds.RescaleIntercept, ds.RescaleSlope
    stored = [pydicom.dcmread(p).pixel_array.astype(np.float32) for p in cq500_slices]
    with caplog.at_level("WARNING", logger="hemo.dicom"):
        frames = _frames(to_bytes(ds), "norescale.dcm")
    assert [f.metadata["rescale_assumed"] for f in frames] == [True] * len(frames)
    for frame, values in zip(frames, stored, strict=True):
        expected = values.copy()
        expected[expected < config.HU_FLOOR] = config.HU_AIR
        np.testing.assert_array_equal(frame.hu, expected)
    assert caplog.text.count("stored values are read as HU") == 1


def test_inspect_text_sums_up_a_long_frame_list(
    cq500_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nine frames: the text output gives the first and last position and the count."""
    paths = sorted(cq500_dir.glob("*.dcm"), key=lambda p: read_dicom(p).slice_z_mm)[100:109]
    path = tmp_path / "nine.dcm"
    path.write_bytes(to_bytes(enhanced_ct(paths)))
    assert main(["inspect", str(path)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "frame_z_mm" in x]
    first, last = (read_dicom(p).slice_z_mm for p in (paths[0], paths[-1]))
    assert line.strip() == f"frame_z_mm: {first:.6g} .. {last:.6g} (9 values; --json lists them)"
