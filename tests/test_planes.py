"""Localizers and reformats: outside every model's range, left out of a series' verdict.

Built from the real CQ500-CT-0 series: a sagittal reformat (one column of every slice, stacked)
and a localizer (the series' HU averaged front to back, a projection like a scout), each saved
as a DICOM of the same study beside real axial slices.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import to_bytes

from hemo.anatomy import MAX_AXIAL_TILT_DEG, outside_reasons, plane_reason
from hemo.config import MODELS_DIR
from hemo.dicom import read_dicom
from hemo.io import read_scan

#: Every k-th slice of the 238 goes into the reformat and the localizer.
STRIDE = 4
#: Axial slices predicted beside them (from the middle of the head).
AXIAL = ("CT000100.dcm", "CT000110.dcm", "CT000120.dcm")
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def _ordered(cq500_dir: Path) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(p) for p in sorted(cq500_dir.glob("*.dcm"))[::STRIDE]]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _derived(template: pydicom.Dataset, hu: np.ndarray, orientation: list[float], **tags) -> bytes:
    """``template``'s study and series with new pixels (stored = HU + 1024, uncompressed)."""
    ds = template.copy()
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    stored = np.clip(np.round(hu + 1024), 0, 4095).astype(np.uint16)
    ds.Rows, ds.Columns = stored.shape
    ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 0, 16, 12, 11
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.ImageOrientationPatient = orientation
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    return to_bytes(ds)


@pytest.fixture(scope="module")
def derived(cq500_dir: Path) -> dict[str, bytes]:
    """A sagittal reformat and a localizer of the real series, and real axial slices."""
    stack = _ordered(cq500_dir)
    volume = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                       for ds in stack])  # fmt: skip
    sagittal = volume[::-1, :, volume.shape[2] // 2]  # (z top->bottom, y)
    localizer = volume[::-1].mean(axis=1)  # front-to-back projection (z, x)
    template = stack[len(stack) // 2]
    return {
        "sagittal": _derived(template, sagittal, SAGITTAL, InstanceNumber=900),
        "localizer": _derived(
            template,
            localizer,
            CORONAL,
            InstanceNumber=901,
            ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        ),
        **{name: (cq500_dir / name).read_bytes() for name in AXIAL},
    }


def test_axial_slices_and_images_are_in_plane(cq500_dir: Path, head_ct_dir: Path) -> None:
    assert plane_reason(read_dicom(cq500_dir / AXIAL[0])) is None
    assert plane_reason(read_scan(head_ct_dir / "head_ct" / "000.png")) is None


def test_reformats_and_localizers_are_named(derived: dict[str, bytes]) -> None:
    sagittal = read_dicom(derived["sagittal"], "sag.dcm")
    reason = plane_reason(sagittal)
    assert reason is not None and "not an axial slice: its plane is 90 degrees" in reason
    localizer = plane_reason(read_dicom(derived["localizer"], "scout.dcm"))
    assert localizer is not None and "localizer (scout)" in localizer and "LOCALIZER" in localizer


@pytest.mark.parametrize(("tilt", "outside"), [(20.0, False), (44.0, False), (46.0, True)])
def test_gantry_tilt_is_axial_up_to_the_limit(cq500_dir: Path, tilt: float, outside: bool) -> None:
    """A plane tilted about the left-right axis by ``tilt`` degrees (gantry tilt up to 30)."""
    axial = read_dicom(cq500_dir / AXIAL[0])
    rad = np.radians(tilt)
    tilted = dataclasses.replace(axial, orientation=(1.0, 0.0, 0.0, 0.0, np.cos(rad), -np.sin(rad)))
    assert (plane_reason(tilted) is not None) is outside
    assert MAX_AXIAL_TILT_DEG == 45.0


def test_predictor_leaves_them_out_of_the_series_verdict(derived: dict[str, bytes]) -> None:
    """Shipped real-scan model: the two are marked, counted out, and the verdict is the axial
    slices' own; alone, each is still marked."""
    from hemo.predict import Predictor

    with Predictor(MODELS_DIR / "headct_real.keras") as predictor:
        batch = predictor.run(list(derived.items()))
        alone = predictor.run([("sag.dcm", derived["sagittal"])])
    by_name = {r.source: r for r in batch.results}
    assert "90 degrees" in by_name["sagittal"].outside_range
    assert "localizer" in by_name["localizer"].outside_range
    (study,) = batch.studies
    assert study.n_slices == len(derived) and study.slices_in_range == len(AXIAL)
    axial_p = [by_name[name].probability for name in AXIAL if by_name[name].outside_range is None]
    assert study.probability == pytest.approx(max(axial_p))
    marked = {by_name["sagittal"].index, by_name["localizer"].index}
    assert marked <= set(study.outside_range_indices)
    assert "90 degrees" in alone.results[0].outside_range


def test_dashboard_series_marks_them_too(derived: dict[str, bytes]) -> None:
    from hemo import dashboard
    from hemo.predict import Predictor

    decoded = dashboard.decode(list(derived.items()))
    (series,) = decoded.series
    with Predictor(MODELS_DIR / "headct_real.keras") as predictor:
        result = dashboard.predict_series(predictor, series)
    reasons = {
        s.source: p.outside_range for s, p in zip(series.slices, result.predictions, strict=True)
    }
    assert "localizer" in reasons["localizer"] and "90 degrees" in reasons["sagittal"]
    assert result.study["slices_in_range"] == len(AXIAL)


def test_area_rule_compares_axial_sections_only() -> None:
    """A localizer's large area does not push real axial slices under the area rule."""
    from hemo.anatomy import SliceAnatomy, SliceRange

    slice_range = SliceRange(
        min_soft_tissue_fraction=0.5, min_relative_head_area=0.4, lowest_seen=0.55, images=10
    )
    anatomies = [SliceAnatomy(0.8, 1000), SliceAnatomy(0.8, 900), SliceAnatomy(0.9, 5000)]
    planes = [None, None, "a localizer"]
    assert outside_reasons(planes, slice_range, anatomies) == [None, None, "a localizer"]
    assert outside_reasons(planes) == planes
    only_range = outside_reasons([None] * 3, slice_range, anatomies)
    assert only_range[0] is not None and "head section is 20.0%" in only_range[0]


def test_a_series_with_no_slice_in_range_gets_no_verdict_from_the_cli(
    derived: dict[str, bytes], tmp_path: Path, capsys
) -> None:
    """``hemo predict`` on a series of a reformat and a localizer only: no study verdict in the
    table (as on the Predict page), each slice "none", and the JSON note says why ``positive``
    is not a finding."""
    import json

    from hemo.cli import main

    folder = tmp_path / "series"
    folder.mkdir()
    for name in ("sagittal", "localizer"):
        (folder / f"{name}.dcm").write_bytes(derived[name])
    argv = ["predict", "--model", str(MODELS_DIR / "headct_real.keras"), str(folder)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "series of 2 slice(s): no verdict, no slice is in the model's range" in out
    rows = [line for line in out.splitlines() if line.strip().endswith("range]")]
    assert len(rows) == 2 and all("  none  [outside the model's range]" in r for r in rows)
    assert "POSITIVE" not in out and "refer]" not in out
    assert main([*argv, "--json"]) == 0
    (study,) = json.loads(capsys.readouterr().out)["studies"]
    assert study["slices_in_range"] == 0 and "are not a finding" in study["note"]


def test_plane_reason_reads_padded_image_types_and_flipped_normals(cq500_dir: Path) -> None:
    """An Image Type written ``localizer `` (lower case, padded) is a scout; an axial slice whose
    normal points the other way (rows read bottom-up) is still axial."""
    axial = read_dicom(cq500_dir / AXIAL[0])
    scout = dataclasses.replace(axial, metadata={**axial.metadata, "ImageType": ["localizer "]})
    assert "localizer" in plane_reason(scout)
    flipped = dataclasses.replace(axial, orientation=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    assert plane_reason(flipped) is None
