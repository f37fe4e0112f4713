"""NIfTI CT volumes: read as axial slices in HU, laid out and placed as the DICOM slices are.

The volumes are made from real CQ500 slices the way DICOM-to-NIfTI converters do (voxel (i, j, k)
= column i, row j of slice k; the LPS affine of PS3.3 C.7.6.2.1.1 turned to RAS), then stored in
other array layouts too (nibabel's closest canonical, the slice axis first), so reading them back
must undo each layout: every slice must come back equal to its DICOM slice, HU and geometry.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
from dicom_factory import nifti_volume

from hemo import config
from hemo.cli import main
from hemo.dicom import CTSlice, read_dicom
from hemo.errors import InputError, LimitError
from hemo.io import iter_scans, read_scan
from hemo.nifti import read_nifti

#: Consecutive CQ500 slices (by position) made into a volume.
FIRST, COUNT = 120, 5


@pytest.fixture(scope="module")
def dicom_slices(cq500_dir: Path) -> list[CTSlice]:
    slices = [read_dicom(p) for p in sorted(cq500_dir.glob("*.dcm"))]
    slices.sort(key=lambda s: s.slice_z_mm)
    return slices[FIRST : FIRST + COUNT]


def _bytes(image: nibabel.Nifti1Image, gz: bool = False) -> bytes:
    raw = image.to_bytes()
    return gzip.compress(raw) if gz else raw


@pytest.fixture(scope="module")
def layouts(dicom_slices: list[CTSlice]) -> dict[str, bytes]:
    data, affine = nifti_volume(dicom_slices)
    plain = nibabel.Nifti1Image(data, affine)
    canonical = nibabel.as_closest_canonical(plain)
    slices_first = nibabel.Nifti1Image(
        np.ascontiguousarray(data.transpose(2, 0, 1)), affine[:, [2, 0, 1, 3]]
    )
    scaled = nibabel.Nifti1Image((data.astype(np.int32) + 1024).astype(np.uint16), affine)
    scaled.header.set_slope_inter(1.0, -1024.0)
    nifti2 = nibabel.Nifti2Image(data, affine)
    return {
        "converter.nii": _bytes(plain),
        "canonical.nii.gz": _bytes(canonical, gz=True),
        "slices_first.nii": _bytes(slices_first),
        "scaled.nii": _bytes(scaled),
        "nifti2.nii": nifti2.to_bytes(),
    }


@pytest.mark.parametrize(
    "name", ["converter.nii", "canonical.nii.gz", "slices_first.nii", "scaled.nii", "nifti2.nii"]
)
def test_every_layout_reads_back_as_the_dicom_slices(
    name: str, layouts: dict[str, bytes], dicom_slices: list[CTSlice]
) -> None:
    slices = list(read_nifti(layouts[name], name))
    assert [s.frame for s in slices] == list(range(1, COUNT + 1))
    for got, want in zip(slices, dicom_slices, strict=True):
        np.testing.assert_array_equal(got.hu, np.round(want.hu))
        assert got.position_mm == pytest.approx(want.position_mm, abs=1e-3)
        assert got.orientation == pytest.approx(want.orientation, abs=1e-6)
        assert got.pixel_spacing_mm == pytest.approx(want.pixel_spacing_mm, abs=1e-6)
        assert got.slice_z_mm == pytest.approx(want.slice_z_mm, abs=1e-3)
        assert got.series_uid == f"nifti:{name}" and got.source == name
        assert not got.hu.flags.writeable
    assert slices[0].metadata["format"] == ("NIfTI-2" if name == "nifti2.nii" else "NIfTI-1")
    # the canonical layout stores the slices in the same order; none is reversed along z here
    assert [s.metadata["nifti_slice_index"] for s in slices] == list(range(COUNT))


def test_free_text_header_fields_never_reach_the_metadata(layouts: dict[str, bytes]) -> None:
    image = nibabel.Nifti1Image.from_bytes(layouts["converter.nii"])
    image.header["descrip"] = b"Patient: DOE^JOHN 1970-01-01"
    image.header["aux_file"] = b"MRN123456"
    (first, *_) = read_nifti(image.to_bytes(), "named.nii")
    text = json.dumps(first.metadata)
    assert "DOE" not in text and "MRN" not in text and "descrip" not in text


def test_iter_scans_read_scan_and_folders(layouts: dict[str, bytes], tmp_path: Path) -> None:
    results = list(iter_scans([("upload.nii.gz", layouts["canonical.nii.gz"])]))
    assert [r.scan.frame for r in results] == list(range(1, COUNT + 1))  # type: ignore[union-attr]
    with pytest.raises(InputError, match=rf"is a NIfTI volume of {COUNT} slices, not one scan"):
        read_scan(layouts["converter.nii"], "vol.nii")
    (tmp_path / "vol.nii.gz").write_bytes(layouts["canonical.nii.gz"])
    (tmp_path / "labels.csv.gz").write_bytes(gzip.compress(b"id,label\n1,0\n"))
    found = list(iter_scans([tmp_path]))
    assert {r.name for r in found} == {str(tmp_path / "vol.nii.gz")} and all(r.ok for r in found)
    bad = list(iter_scans([("table.gz", gzip.compress(b"id,label\n1,0\n"))]))
    assert not bad[0].ok and "not a NIfTI-1 or NIfTI-2 volume" in str(bad[0].error)


def test_refusals_name_the_file_and_the_problem(layouts: dict[str, bytes]) -> None:
    data, affine = _volume_from(layouts["converter.nii"])
    scaled = nibabel.Nifti1Image((data - data.min()) / np.ptp(data).astype(np.float32), affine)
    with pytest.raises(InputError, match=r"^unit.nii: its values do not look like Hounsfield"):
        read_nifti(scaled.to_bytes(), "unit.nii")
    four_d = nibabel.Nifti1Image(np.stack([data, data], axis=-1), affine)
    with pytest.raises(InputError, match=r"shape \(512, 512, 5, 2\): hemo reads one 3-D"):
        read_nifti(four_d.to_bytes(), "4d.nii")
    pair = bytearray(layouts["converter.nii"])
    pair[344:348] = b"ni1\x00"
    with pytest.raises(InputError, match=r"a \.hdr/\.img pair"):
        read_nifti(bytes(pair), "pair.hdr")
    with pytest.raises(
        InputError,
        match=r"^cut.nii: the NIfTI header declares \(512, 512, 5\) "
        r"voxels of 2 bytes from byte 352 \(2621792 bytes\), but the file holds 2000",
    ):
        read_nifti(layouts["converter.nii"][:2000], "cut.nii")


def test_size_limits(layouts: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "MAX_VOLUME_BYTES", 1024 * 1024)
    with pytest.raises(LimitError, match=r"decompresses to more than 1048576 bytes"):
        read_nifti(layouts["canonical.nii.gz"], "big.nii.gz")
    monkeypatch.setattr(config, "MAX_SLICES_PER_SERIES", COUNT - 1)
    with pytest.raises(LimitError, match=rf"has {COUNT} axial slices, more than the limit"):
        read_nifti(layouts["converter.nii"], "long.nii")
    monkeypatch.setattr(config, "MAX_SLICES_PER_SERIES", COUNT)
    monkeypatch.setattr(config, "MAX_PIXELS_PER_FILE", COUNT - 1)
    with pytest.raises(LimitError, match=r"voxels, more than the limit of .* for one file"):
        read_nifti(layouts["converter.nii"], "big.nii")


def _volume_from(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    image = nibabel.Nifti1Image.from_bytes(data)
    return np.asarray(image.dataobj), image.affine


def test_predict_inspect_and_the_app(
    layouts: dict[str, bytes],
    dicom_slices: list[CTSlice],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Shipped model: the volume's slices score as the DICOM slices do, pooled as one study;
    inspect counts the slices; the Predict page's decoding makes one series of them."""
    from hemo import dashboard
    from hemo.config import MODELS_DIR
    from hemo.predict import Predictor

    path = tmp_path / "head.nii.gz"
    path.write_bytes(layouts["canonical.nii.gz"])
    with Predictor(MODELS_DIR / "headct_real.keras") as predictor:
        volume = predictor.run([path])
        single = predictor.predict([s.source for s in dicom_slices])
    assert [p.frame for p in volume.results] == list(range(1, COUNT + 1))
    for got, want in zip(volume.results, single, strict=True):
        assert got.probability == pytest.approx(want.probability, abs=1e-5)
    (study,) = volume.studies
    assert study.n_slices == COUNT and study.series_uid == f"nifti:{path}"
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == COUNT and report["metadata"]["format"] == "NIfTI-1"
    assert report["kind"] == "nifti"
    decoded = dashboard.decode([("head.nii.gz", path.read_bytes())])
    assert not decoded.errors and len(decoded.series) == 1
    assert len(decoded.series[0].slices) == COUNT
    assert dashboard.series_name(decoded.series[0]) == "head.nii.gz"


def test_a_header_without_orientation_is_read_and_flagged(
    layouts: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    image = nibabel.Nifti1Image.from_bytes(layouts["converter.nii"])
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    with caplog.at_level("WARNING", logger="hemo.nifti"):
        slices = list(read_nifti(image.to_bytes(), "bare.nii"))
    assert len(slices) == COUNT and all(s.metadata["orientation_assumed"] for s in slices)
    assert "bare.nii: neither qform nor sform" in caplog.text
    (first, *_) = read_nifti(layouts["converter.nii"], "oriented.nii")
    assert first.metadata["orientation_assumed"] is False


def test_slice_index_follows_the_file_when_stored_top_down(dicom_slices: list[CTSlice]) -> None:
    """A volume stored superior -> inferior: frames still go up, the array index goes down."""
    data, affine = nifti_volume(dicom_slices)
    flipped = affine.copy()
    flipped[:3, 2] = -affine[:3, 2]
    flipped[:3, 3] = affine[:3, 3] + affine[:3, 2] * (COUNT - 1)
    image = nibabel.Nifti1Image(np.ascontiguousarray(data[..., ::-1]), flipped)
    slices = list(read_nifti(image.to_bytes(), "top_down.nii"))
    assert [s.frame for s in slices] == list(range(1, COUNT + 1))
    assert [s.metadata["nifti_slice_index"] for s in slices] == list(range(COUNT - 1, -1, -1))
    for got, want in zip(slices, dicom_slices, strict=True):
        np.testing.assert_array_equal(got.hu, np.round(want.hu))
        assert got.slice_z_mm == pytest.approx(want.slice_z_mm, abs=1e-3)


def test_gunzip_refuses_a_bomb_by_its_trailer_and_by_counting(monkeypatch) -> None:
    """A gzip stream whose trailer states more than the limit is refused before inflating
    anything; one whose trailer lies is refused once the output passes the limit, in chunks
    (one call for the whole limit held about twice it)."""
    import gzip
    import zlib

    from hemo.nifti import gunzip

    bomb = gzip.compress(bytes(3 * 1024 * 1024))
    with monkeypatch.context() as mp:
        mp.setattr(zlib, "decompressobj", lambda *a: pytest.fail("inflated"))
        with pytest.raises(LimitError, match="decompresses to more than 1048576 bytes"):
            gunzip(bomb, "b.nii.gz", limit=1024 * 1024)
    liar = bomb[:-4] + (10).to_bytes(4, "little")
    with pytest.raises(LimitError, match="decompresses to more than 1048576 bytes"):
        gunzip(liar, "b.nii.gz", limit=1024 * 1024)
    assert gunzip(bomb, "b.nii.gz", limit=3 * 1024 * 1024) == bytes(3 * 1024 * 1024)
    with pytest.raises(InputError, match="not a readable gzip stream"):
        gunzip(bomb[:10] + b"\x00" * 50, "cut.nii.gz")
