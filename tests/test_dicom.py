"""hemo.dicom: HU, geometry, PHI-free metadata and every refusal, on real and synthetic files."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import PHI, ct_bytes, ct_dataset, to_bytes
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from hemo import config, dicom
from hemo.dicom import phi_free_metadata, read_dicom, read_dicom_header
from hemo.errors import DicomError, InputError, LimitError

#: CT_small.dcm stored values are 128..2191 with intercept -1024 (computed once with pydicom).
CT_SMALL_HU_RANGE = (-896.0, 1167.0)


def _testfile(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"pydicom test file {name} missing (pydicom-data must be installed)")
    return Path(path)


def test_ct_small_known_hu_range(ct_small):
    """pydicom's CT_small.dcm reads to its known HU range as read-only float32."""
    s = read_dicom(ct_small)
    assert s.hu.dtype == np.float32 and s.hu.shape == (128, 128)
    assert (float(s.hu.min()), float(s.hu.max())) == CT_SMALL_HU_RANGE
    assert not s.hu.flags.writeable
    assert s.modality == "CT" and s.pixel_spacing_mm == (0.661468, 0.661468)


def test_cq500_uncompressed_and_j2k_identical(cq500_uncompressed):
    """693_UNCR.dcm and its JPEG 2000 lossless copy give identical HU."""
    a = read_dicom(cq500_uncompressed)
    b = read_dicom(_testfile("693_J2KR.dcm"))
    assert b.metadata["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.90"
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.hu.min() >= config.HU_FLOOR and a.hu.max() > 1000


def test_rle_ct_matches_uncompressed(ct_small):
    """An RLE Lossless CT (CT_small re-encoded in memory) decodes to the same HU."""
    ds = pydicom.dcmread(ct_small)
    ds.compress(RLELossless)
    np.testing.assert_array_equal(read_dicom(to_bytes(ds)).hu, read_dicom(ct_small).hu)


@pytest.mark.parametrize(
    ("name", "modality"),
    [("MR_small_RLE.dcm", "MR"), ("US1_J2KR.dcm", "US"), ("RG1_J2KR.dcm", "CR")],
)
def test_compressed_non_ct_refused_by_modality(name, modality):
    """Real RLE/JPEG 2000 files of other modalities are refused naming (0008,0060)."""
    with pytest.raises(
        DicomError, match=rf"\(0008,0060\) Modality is '{modality}': hemo reads CT only"
    ):
        read_dicom(_testfile(name))


def test_source_kinds_agree(tmp_path):
    """Path with and without extension, bytes and BytesIO give the same HU; the stream is restored."""
    data = ct_bytes()
    (tmp_path / "slice").write_bytes(data)
    stream = io.BytesIO(data)
    stream.seek(7)
    reads = [read_dicom(tmp_path / "slice"), read_dicom(data), read_dicom(stream, name="up.dcm")]
    assert stream.tell() == 7
    for s in reads[1:]:
        np.testing.assert_array_equal(s.hu, reads[0].hu)
    assert reads[1].source == "<bytes>" and reads[2].source == "up.dcm"


def test_headerless_dicom_read_by_force():
    """A dataset without preamble/DICM is read when it holds image data."""
    s = read_dicom(ct_bytes(preamble=False), name="bare")
    assert s.hu.shape == (64, 64) and float(s.hu.max()) == 40.0


@pytest.mark.parametrize("payload", [b"hello, this is text\n" * 20, bytes(range(256)) * 4])
def test_non_dicom_refused(payload):
    """Text or random bytes are not taken for a headerless DICOM."""
    with pytest.raises(DicomError, match="not a DICOM file: no 'DICM' marker at byte 128"):
        read_dicom(payload, name="notes.dcm")


def test_empty_refused():
    """Empty input is refused with InputError."""
    with pytest.raises(InputError, match=r"x\.dcm: file is empty \(0 bytes\)"):
        read_dicom(b"", name="x.dcm")


def test_padding_floor_and_range_limit():
    """Pixel Padding Value (and its range limit) and HU below HU_FLOOR become air."""
    hu = np.full((32, 32), 40, dtype=np.int16)
    hu[0, :4] = [-2000 - 1024, -3024, -1500, -1024]
    s = read_dicom(ct_bytes(hu, PixelPaddingValue=-3024 - 0))
    assert s.hu[0, :4].tolist() == [config.HU_AIR, config.HU_AIR, config.HU_AIR, -1024.0]
    hu2 = np.full((32, 32), 40, dtype=np.int16)
    hu2[0, :3] = [-900, -950, -800]  # stored 124, 74, 224
    s2 = read_dicom(ct_bytes(hu2, PixelPaddingValue=70, PixelPaddingRangeLimit=130))
    assert s2.hu[0, :3].tolist() == [config.HU_AIR, config.HU_AIR, -800.0]
    assert s2.hu[1, 0] == 40.0


def test_rsna_12bit_fault_corrected():
    """The RSNA-2019 fault (12-bit stored unsigned, intercept > -100) gives the true HU."""
    true_hu = np.array([[-1000, -1, 0, 40], [80, 1000, 2000, 3000]], dtype=np.int64)
    true_hu = np.tile(true_hu, (8, 4))
    stored = (true_hu % 4096).astype(np.uint16)  # signed 12-bit written as unsigned
    ds = ct_dataset(np.zeros((16, 16)), intercept=0.0)
    ds.Rows, ds.Columns = stored.shape
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    ds.PixelData = stored.tobytes()
    assert dicom.has_rsna_12bit_fault(ds)
    s = read_dicom(to_bytes(ds))
    np.testing.assert_array_equal(s.hu, true_hu.astype(np.float32))
    assert s.metadata["rsna_12bit_fault_corrected"] is True
    assert s.metadata["RescaleIntercept"] == 0.0


def test_rsna_rule_not_applied_to_sane_intercept():
    """A 12-bit unsigned CT with intercept -1024 is left alone."""
    ds = ct_dataset(np.zeros((16, 16)), intercept=-1024.0)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    ds.PixelData = np.full((16, 16), 1064, dtype=np.uint16).tobytes()
    s = read_dicom(to_bytes(ds))
    assert not dicom.has_rsna_12bit_fault(ds) and float(s.hu[0, 0]) == 40.0


def test_rsna_rule_needs_slope_one_and_a_stated_intercept(tmp_path: Path):
    """Real 12-bit unsigned files outside the fault: MR2_UNCR (slope 3.77, relabelled CT)
    keeps pydicom's rescale; a file with no rescale at all is read as stored, not shifted."""
    ds = pydicom.dcmread(_testfile("MR2_UNCR.dcm"))
    ds.Modality = "CT"
    assert (ds.BitsStored, ds.PixelRepresentation, round(float(ds.RescaleSlope), 3)) == (
        12,
        0,
        3.774,
    )
    assert not dicom.has_rsna_12bit_fault(ds)
    ds.save_as(tmp_path / "mr2.dcm")
    s = read_dicom(tmp_path / "mr2.dcm")
    expected = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    np.testing.assert_allclose(s.hu, np.maximum(expected, config.HU_FLOOR), rtol=1e-6)
    assert s.metadata["rsna_12bit_fault_corrected"] is False
    stored = np.full((16, 16), 40, dtype=np.uint16)
    bare = ct_dataset(np.zeros((16, 16)), intercept=0.0)
    bare.BitsStored, bare.HighBit, bare.PixelRepresentation = 12, 11, 0
    bare.PixelData = stored.tobytes()
    del bare.RescaleIntercept, bare.RescaleSlope
    assert not dicom.has_rsna_12bit_fault(bare)
    assert float(read_dicom(to_bytes(bare)).hu[0, 0]) == 40.0


def test_frames_of_a_faulty_multiframe_file_are_corrected_alike(tmp_path: Path):
    """A real multi-frame file (emri_small, 10 frames of 12-bit unsigned, relabelled CT): with
    no rescale every frame is its stored values (frame 2 on was 1000 HU low once frame 1's
    correction wrote into the shared dataset); with the fault's rescale every frame is
    corrected the same way."""
    ds = pydicom.dcmread(_testfile("emri_small.dcm"))
    ds.Modality = "CT"
    ds.save_as(tmp_path / "plain.dcm")
    stored = ds.pixel_array.astype(np.int64)
    frames = list(dicom.read_dicom_frames(tmp_path / "plain.dcm"))
    assert len(frames) == 10
    for frame, raw in zip(frames, stored, strict=True):
        np.testing.assert_array_equal(frame.hu, np.maximum(raw, config.HU_FLOOR))
        assert frame.metadata["rsna_12bit_fault_corrected"] is False
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.save_as(tmp_path / "fault.dcm")
    frames = list(dicom.read_dicom_frames(tmp_path / "fault.dcm"))
    for frame, raw in zip(frames, stored, strict=True):
        corrected = dicom.correct_rsna_12bit(raw) + dicom.RSNA_FAULT_INTERCEPT
        np.testing.assert_array_equal(frame.hu, np.maximum(corrected, config.HU_FLOOR))
        assert frame.metadata["rsna_12bit_fault_corrected"] is True


def test_a_long_modality_lut_is_applied(tmp_path: Path):
    """A Modality LUT Sequence over the header size cap (mlut_18: 4096 entries, 8 KB,
    relabelled CT) is applied as pydicom applies it, not ignored with a rescale warning."""
    ds = pydicom.dcmread(_testfile("mlut_18.dcm"))
    ds.Modality = "CT"
    ds.save_as(tmp_path / "mlut.dcm")
    s = read_dicom(tmp_path / "mlut.dcm")
    expected = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    np.testing.assert_array_equal(s.hu, expected)
    assert s.metadata["rescale_assumed"] is False


def test_a_decoder_failure_keeps_every_decoders_reason(tmp_path: Path):
    """JPEG Extended 12-bit (JPGExtended, relabelled CT) that no installed decoder reads: the
    message names each decoder's reason (pydicom lists them on separate lines), on one line."""
    ds = pydicom.dcmread(_testfile("JPGExtended.dcm"))
    ds.Modality = "CT"
    ds.save_as(tmp_path / "jpgext.dcm")
    with pytest.raises(DicomError) as caught:
        read_dicom(tmp_path / "jpgext.dcm")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "jpgext.dcm"))
    assert "gdcm: GDCM does not support 'JPEG Extended'" in message
    assert "pillow: Pillow does not support 'JPEG Extended'" in message


def test_monochrome1_hu_not_inverted():
    """MONOCHROME1 is presentation only: HU equal the MONOCHROME2 reading."""
    m2 = read_dicom(ct_bytes())
    m1 = read_dicom(ct_bytes(PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_array_equal(m1.hu, m2.hu)
    assert m1.metadata["PhotometricInterpretation"] == "MONOCHROME1"


def test_multivalued_window_takes_first():
    """Several Window Center/Width values: the first is the default, all are kept."""
    s = read_dicom(ct_bytes(WindowCenter=[40, 300], WindowWidth=[80, 1500]))
    assert (s.default_window.center_hu, s.default_window.width_hu) == (40.0, 80.0)
    assert s.metadata["WindowCenter"] == [40.0, 300.0]
    assert s.metadata["WindowWidth"] == [80.0, 1500.0]


def test_zero_window_width_ignored_with_warning(caplog):
    """A Window Width of 0 is logged with the rule and the default window dropped."""
    with caplog.at_level(logging.WARNING, logger="hemo.dicom"):
        s = read_dicom(ct_bytes(WindowWidth=0), name="w.dcm")
    assert s.default_window is None
    assert "(0028,1051) Window Width must be greater than 0, got 0" in caplog.text


def test_missing_rescale_is_identity_with_warning(caplog):
    """A CT without rescale tags reads stored values as HU and warns."""
    with caplog.at_level(logging.WARNING, logger="hemo.dicom"):
        s = read_dicom(ct_bytes(intercept=None, slope=None))
    assert float(s.hu.max()) == 40.0 and s.metadata["rescale_assumed"] is True
    assert "(0028,1052) Rescale Intercept missing, taken as 0" in caplog.text


def test_zero_slope_refused():
    """A Rescale Slope of 0 is refused."""
    with pytest.raises(
        DicomError, match=r"\(0028,1053\) Rescale Slope is 0: must be a finite non-zero"
    ):
        read_dicom(ct_bytes(RescaleSlope=0))


def test_multiframe_is_not_one_slice():
    """read_dicom reads one slice: a file of three frames is refused, naming the frame reader
    (tests/test_multiframe.py reads them)."""
    ds = ct_dataset()
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3
    with pytest.raises(
        DicomError,
        match=r"\(0028,0008\) Number of Frames is 3: the file holds 3 slices, not one; read it "
        "with hemo.dicom.read_dicom_frames",
    ):
        read_dicom(to_bytes(ds))


def test_rgb_refused():
    """Samples per Pixel 3 is refused."""
    ds = ct_dataset()
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.PixelData = ds.PixelData * 3
    with pytest.raises(DicomError, match=r"\(0028,0002\) Samples per Pixel is 3: colour DICOM"):
        read_dicom(to_bytes(ds))


def test_no_pixel_data_refused():
    """A DICOM without Pixel Data is refused."""
    ds = ct_dataset()
    del ds.PixelData
    with pytest.raises(DicomError, match=r"\(7FE0,0010\) Pixel Data is missing"):
        read_dicom(to_bytes(ds))


def test_short_pixel_data_refused():
    """Pixel data shorter than Rows x Columns x Bits Allocated / 8 is refused with the numbers."""
    ds = ct_dataset()
    ds.Rows = 128
    with pytest.raises(
        DicomError, match=r"Pixel Data is 8192 bytes, shorter than .* = 16384 bytes"
    ):
        read_dicom(to_bytes(ds))


def test_huge_declared_size_refused_before_decoding(monkeypatch):
    """Rows x Columns over the limit is a LimitError raised before decoding."""
    ds = ct_dataset()
    ds.Rows = ds.Columns = 65535
    monkeypatch.setattr(
        pydicom.Dataset, "pixel_array", property(lambda self: pytest.fail("decoded"))
    )
    with pytest.raises(LimitError, match=r"65535 x 65535 = 4294836225 pixels, more than the limit"):
        read_dicom(to_bytes(ds))


def test_file_over_byte_limit_refused(monkeypatch, tmp_path):
    """A file over MAX_FILE_BYTES is refused before it is read."""
    monkeypatch.setattr(config, "MAX_FILE_BYTES", 1000)
    (tmp_path / "big.dcm").write_bytes(ct_bytes())
    with pytest.raises(
        LimitError, match=r"big\.dcm: file is \d+ bytes, more than the limit of 1000"
    ):
        read_dicom(tmp_path / "big.dcm")


def test_missing_decoder_named(monkeypatch):
    """A compressed transfer syntax without an installed decoder names the syntax and the fix."""

    class Unavailable:
        is_available = False
        missing_dependencies = ["gdcm - requires gdcm>=3.0.10"]

    monkeypatch.setattr(dicom, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(
        DicomError,
        match=r"Transfer Syntax UID is 1\.2\.840\.10008\.1\.2\.4\.90 \(JPEG 2000 Image Compression "
        r"\(Lossless Only\)\): no decoder for it is installed; install one of: gdcm",
    ):
        read_dicom(_testfile("693_J2KR.dcm"))


def test_corrupt_compressed_data_wrapped():
    """Garbage inside a JPEG 2000 stream becomes a DicomError keeping the decoder's error."""
    ds = pydicom.dcmread(_testfile("693_J2KR.dcm"))
    garbage = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + garbage])
    with pytest.raises(DicomError, match=r"cannot decode \(7FE0,0010\) Pixel Data") as info:
        read_dicom(to_bytes(ds), name="bad.dcm")
    assert info.value.__cause__ is not None and "bad.dcm" in str(info.value)


def test_phi_never_leaves(tmp_path):
    """Names, IDs, dates and institution never appear in the slice, its metadata or the header."""
    data = ct_bytes(**PHI)
    s = read_dicom(data, name="phi.dcm")
    h = read_dicom_header(data, name="phi.dcm")
    text = " ".join([repr(s), json.dumps(dict(s.metadata)), repr(h), json.dumps(dict(h.metadata))])
    for value in PHI.values():
        assert value not in text
    secret = dicom.patient_key_secret()
    keyed = hmac.new(secret, PHI["PatientID"].encode(), hashlib.sha256).hexdigest()[:16]
    assert s.patient_key == h.patient_key == keyed
    assert keyed != hashlib.sha256(PHI["PatientID"].encode()).hexdigest()[:16]
    keys = set(phi_free_metadata(pydicom.dcmread(io.BytesIO(data))))
    assert keys.isdisjoint({"PatientName", "PatientID", "StudyDate", "InstitutionName"})


def test_header_without_pixels(ct_small):
    """The header carries geometry, UIDs and the default window without decoding pixels."""
    h = read_dicom_header(ct_small)
    assert (h.rows, h.columns, h.modality) == (128, 128, "CT")
    assert h.slice_z_mm == pytest.approx(-75.699997)
    assert h.transfer_syntax == "1.2.840.10008.1.2.1" and h.series_uid


def test_header_reports_other_modalities():
    """read_dicom_header does not refuse an MR (the index decides)."""
    assert read_dicom_header(_testfile("MR_small_RLE.dcm")).modality == "MR"


def test_slice_z_projects_on_normal():
    """slice_z_mm is the position along the normal of a tilted plane."""
    tilt = np.deg2rad(10.0)
    orient = [1, 0, 0, 0, float(np.cos(tilt)), float(-np.sin(tilt))]
    s = read_dicom(ct_bytes(ImageOrientationPatient=orient, ImagePositionPatient=[0, 0, 10.0]))
    assert s.slice_z_mm == pytest.approx(10.0 * np.cos(tilt))


def _pydicom_hu(ds: pydicom.Dataset) -> np.ndarray:
    """HU the reference way: pydicom's pixel_array and apply_modality_lut, then hemo's rules."""
    from pydicom.pixels import apply_modality_lut

    stored = ds.pixel_array
    hu = apply_modality_lut(stored, ds).astype(np.float32)
    if "PixelPaddingValue" in ds:
        hu[stored == ds.PixelPaddingValue] = config.HU_AIR
    hu[hu < config.HU_FLOOR] = config.HU_AIR
    return hu


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("693_UNCR.dcm (14 of 16 bits stored, padding)", None),
        ("integer rescale, in-place float32 path", {"intercept": -1024.0, "slope": 2.0}),
        ("fractional rescale, apply_modality_lut path", {"intercept": -1024.5, "slope": 0.5}),
        ("12 of 16 bits stored, unsigned", {"BitsStored": 12, "PixelRepresentation": 0}),
        ("12 of 16 bits stored, junk in the unused bits", {"BitsStored": 12, "junk": True}),
    ],
)
def test_fast_hu_path_matches_pydicom(name, kwargs, cq500_uncompressed):
    """In-place pixels and float32 rescale give bit for bit pydicom's pixel_array + modality LUT."""
    if kwargs is None:
        data = cq500_uncompressed.read_bytes()
    else:
        hu = np.random.default_rng(0).integers(-1100, 1500, (48, 40)).astype(np.int16)
        hu[0, :3] = -3000
        intercept, slope = kwargs.pop("intercept", -1024.0), kwargs.pop("slope", 1.0)
        if "BitsStored" in kwargs:
            hu = np.clip(hu, -1024, 2000)
            intercept = -1024.0
        junk = kwargs.pop("junk", False)
        ds = ct_dataset(hu, intercept=intercept, slope=slope, **kwargs)
        if junk:  # PS3.5 8.1.1: bits above Bits Stored carry no meaning and must be ignored
            ds.PixelData = (np.frombuffer(ds.PixelData, np.uint16) | 0xF000).tobytes()
        data = to_bytes(ds)
    reference = _pydicom_hu(pydicom.dcmread(io.BytesIO(data)))
    np.testing.assert_array_equal(read_dicom(data).hu, reference)


def test_fast_value_decoding_matches_pydicom(cq500_uncompressed, ct_small):
    """The whitelist decoded from raw elements equals pydicom's own conversion of each element."""
    for path in (cq500_uncompressed, ct_small, _testfile("693_J2KR.dcm")):
        ds = pydicom.dcmread(path)
        expected = {
            keyword: dicom._plain(ds[keyword].value)
            for keyword in dicom.METADATA_KEYWORDS
            if keyword in ds and ds[keyword].value not in (None, "")
        }
        expected["TransferSyntaxUID"] = str(ds.file_meta.TransferSyntaxUID)
        assert phi_free_metadata(pydicom.dcmread(path)) == expected


def test_pseudonym_secret_from_env_file_and_race(tmp_path, monkeypatch):
    """The key comes from $HEMO_PATIENT_KEY_SECRET, else a 0600 file created once and reused."""
    dicom.patient_key_secret.cache_clear()
    monkeypatch.setenv(config.PATIENT_KEY_SECRET_ENV, "site-secret")
    try:
        assert (
            dicom.pseudonymize("MRN1")
            == hmac.new(b"site-secret", b"MRN1", hashlib.sha256).hexdigest()[:16]
        )
        dicom.patient_key_secret.cache_clear()
        monkeypatch.delenv(config.PATIENT_KEY_SECRET_ENV)
        path = tmp_path / "cfg" / "patient_key.secret"
        monkeypatch.setattr(config, "PATIENT_KEY_SECRET_FILE", path)
        first = dicom.pseudonymize("MRN1")
        assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_bytes()) == 32
        dicom.patient_key_secret.cache_clear()
        assert dicom.pseudonymize("MRN1") == first != dicom.pseudonymize("MRN2")
        assert [p.name for p in path.parent.iterdir()] == ["patient_key.secret"]
    finally:
        dicom.patient_key_secret.cache_clear()


def test_pseudonym_secret_unwritable_falls_back_with_warning(tmp_path, monkeypatch, caplog):
    """A config folder that cannot be written gives a per-process secret and a warning."""
    dicom.patient_key_secret.cache_clear()
    monkeypatch.delenv(config.PATIENT_KEY_SECRET_ENV, raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(config, "PATIENT_KEY_SECRET_FILE", blocker / "hemo" / "secret")
    try:
        with caplog.at_level(logging.WARNING, logger="hemo.dicom"):
            key = dicom.pseudonymize("MRN1")
        assert len(key) == 16 and "using a per-process secret" in caplog.text
    finally:
        dicom.patient_key_secret.cache_clear()


@pytest.mark.parametrize("keep", [2000, 20000, -10])
def test_a_compressed_slice_cut_inside_its_pixel_data_is_called_truncated(
    cq500_dir: Path, keep: int
) -> None:
    """A real JPEG-lossless CQ500 slice cut short inside its pixel data (at 2000 or 20000 bytes,
    or 10 bytes before its end) is named truncated, not "Pixel Data is missing"."""
    data = (cq500_dir / "CT000100.dcm").read_bytes()
    with pytest.raises(DicomError, match="truncated") as caught:
        read_dicom(data[:keep])
    assert "missing" not in str(caught.value)


def test_a_complete_file_whose_only_pixel_data_is_an_icon_is_not_called_truncated() -> None:
    """No top-level Pixel Data but a whole Icon Image Sequence item with its own: the file
    holds no image (it is not cut short)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(io.BytesIO(ct_bytes()))
    del ds.PixelData
    icon = Dataset()
    icon.Rows = icon.Columns = 4
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit, icon.PixelRepresentation, icon.SamplesPerPixel = 7, 0, 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.PixelData = bytes(16)
    ds.IconImageSequence = Sequence([icon])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(DicomError, match="Pixel Data is missing: the file holds no image"):
        read_dicom(out.getvalue())


def test_padding_range_limit_below_the_value_and_blank_patient_id():
    """A Pixel Padding Range Limit below the Pixel Padding Value (DICOM allows either order)
    spans the same range; a blank Patient ID is no patient (every ID-less scan would otherwise
    become one patient and clump in one split)."""
    hu = np.full((32, 32), 40, dtype=np.int16)
    hu[0, :3] = [-900, -950, -800]  # stored 124, 74, 224
    s = read_dicom(ct_bytes(hu, PixelPaddingValue=130, PixelPaddingRangeLimit=70))
    assert s.hu[0, :3].tolist() == [config.HU_AIR, config.HU_AIR, -800.0]
    assert read_dicom(ct_bytes(PatientID="  ")).patient_key is None
    assert read_dicom(ct_bytes(PatientID="P1")).patient_key is not None


def test_header_values_with_control_characters_or_escapes_are_not_shown():
    """``conforms``: printable text within the VR's length only; ``shown`` quotes those and
    names anything else by its size; quoted escapes in a library's message are redacted."""
    assert dicom.conforms("CT", "CS") and dicom.conforms(["ORIGINAL", "AXIAL"], "CS")
    assert not dicom.conforms("ab\ncd", "LO") and not dicom.conforms("A" * 17, "CS")
    assert dicom.shown("CT", "CS") == "'CT'"
    assert dicom.shown("MRN\x001234", "LO") == f"a value of 8 characters ({dicom.NOT_SHOWN})"
    text = dicom._redact_quoted("Invalid value for VR LO: 'MRN\\x001234' and 'ok'")
    assert "MRN" not in text and dicom.NOT_SHOWN in text and "'ok'" in text
