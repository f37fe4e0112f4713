"""hemo.series: grouping and ordering, on the real CQ500 series and synthetic slices."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from dicom_factory import ct_bytes

from hemo import config
from hemo.dicom import pseudonymize_uid, read_dicom
from hemo.errors import LimitError, SeriesError
from hemo.series import group_series

CQ500_SLICES = 238
CQ500_TABLE_STEP_MM = 0.625
CQ500_TILT_DEG = 8.5
#: CT000237 is absent from CQ500-CT-0: one step between instances 236 and 238 is doubled.
CQ500_MISSING_INSTANCE = 237


def test_cq500_series_decodes_and_orders(cq500_dir):
    """All 238 JPEG-lossless slices decode and order by position, 0.625 mm apart."""
    slices = [read_dicom(p) for p in sorted(cq500_dir.glob("*.dcm"))]
    assert len(slices) == CQ500_SLICES
    assert all(s.hu.shape == (512, 512) and s.hu.min() >= config.HU_FLOOR for s in slices)
    (series,) = group_series(slices[::-1])
    z = np.array(series.z_mm)
    assert np.all(np.diff(z) > 0)
    table_steps = np.diff([s.position_mm[2] for s in series.slices])
    assert np.allclose(np.delete(table_steps, np.argmax(table_steps)), CQ500_TABLE_STEP_MM)
    assert table_steps.max() == pytest.approx(2 * CQ500_TABLE_STEP_MM)
    numbers = [s.instance_number for s in series.slices]
    assert numbers == sorted(numbers) and CQ500_MISSING_INSTANCE not in numbers
    # the gantry is tilted, so planes are 0.625 * cos(8.5 deg) apart along their normal
    expected = CQ500_TABLE_STEP_MM * math.cos(math.radians(CQ500_TILT_DEG))
    assert series.slice_spacing_mm == pytest.approx(expected, abs=1e-3)


def _slice(z, instance=1, series="1.2.3", **kw):
    return read_dicom(
        ct_bytes(z_mm=z, instance=instance, series_uid=series, **kw), name=f"{series}:{z}"
    )


def test_groups_and_orders_synthetic():
    """Two series are separated and each is ordered by z whatever the input order."""
    slices = [_slice(z, series=uid) for uid in ("1.2.9", "1.2.3") for z in (5.0, -5.0, 0.0)]
    series = group_series(slices)
    # Series are told apart (and named) by their UIDs' keyed pseudonyms, never the UIDs
    assert sorted(s.series_uid for s in series) == sorted(map(pseudonymize_uid, ("1.2.3", "1.2.9")))
    assert all(s.series_uid.startswith("2.25.") for s in series)
    assert all(s.z_mm == (-5.0, 0.0, 5.0) for s in series)


def test_duplicate_position_refused():
    """Two slices at one position are refused, naming the series and the position."""
    label = re.escape(pseudonymize_uid("1.2.3"))
    with pytest.raises(
        SeriesError, match=rf"series {label}: two slices at the same position z = 2\.500 mm"
    ):
        group_series([_slice(2.5, 1), _slice(0.0, 2), _slice(2.5, 3)])


def test_instance_number_fallback():
    """Without positions the instance number orders the series."""
    slices = [_slice(0.0, n, ImagePositionPatient=None) for n in (3, 1, 2)]
    (series,) = group_series(slices)
    assert [s.instance_number for s in series.slices] == [1, 2, 3]


def test_slice_limit(monkeypatch):
    """More slices than MAX_SLICES_PER_SERIES is a LimitError."""
    monkeypatch.setattr(config, "MAX_SLICES_PER_SERIES", 2)
    with pytest.raises(LimitError, match=r"has 3 slices, more than the limit of 2"):
        group_series([_slice(z) for z in (0.0, 1.0, 2.0)])


def test_position_gaps_fall_back_to_instance_order_and_duplicates_are_refused():
    """Positions on some slices only: instance order (not a crash comparing None with a z);
    two slices without positions sharing an instance number are refused, named."""
    mixed = [_slice(9.0, 2), _slice(0.0, 1, ImagePositionPatient=None)]
    (series,) = group_series(mixed)
    assert [s.instance_number for s in series.slices] == [1, 2]
    twins = [_slice(0.0, 1, ImagePositionPatient=None) for _ in range(2)]
    with pytest.raises(SeriesError, match=r"share \(0020,0013\) Instance Number 1"):
        group_series(twins)


def test_no_position_or_instance_orders_by_name_and_keeps_the_study():
    """Neither positions nor instance numbers: ordered by name; the series' study is the first
    slice that has one (the first may lack it); the slice limit itself is allowed."""
    slices = [
        read_dicom(ct_bytes(instance=None, ImagePositionPatient=None, study_uid=""), name=name)
        for name in ("b.dcm", "a.dcm")
    ]
    slices.append(read_dicom(ct_bytes(instance=None, ImagePositionPatient=None), name="c.dcm"))
    (series,) = group_series(slices)
    assert [s.source for s in series.slices] == ["a.dcm", "b.dcm", "c.dcm"]
    assert series.study_uid is not None and series.study_uid.startswith("2.25.")


def test_series_without_uid_is_listed_last_and_the_limit_is_inclusive(monkeypatch):
    monkeypatch.setattr(config, "MAX_SLICES_PER_SERIES", 2)
    slices = [_slice(0.0, series=""), _slice(1.0, series="1.2.3"), _slice(2.0, series="1.2.3")]
    out = group_series(slices)
    assert [s.series_uid is None for s in out] == [False, True] and len(out[0].slices) == 2


def test_coverage_note_finds_gaps_and_sparse_slices_not_one_missing_thin_slice():
    """A series with slices missing between its first and last, or only every few slices of
    a thin series, is said to look incomplete; a regular series, a mixed 3 mm / 10 mm
    protocol, one missing 0.6 or 2.5 mm slice, unknown positions or two slices are not."""
    from hemo.series import coverage_note

    assert coverage_note([0.0, 5.0, 10.0, 15.0, 20.0], [5.0] * 5) is None
    gap = coverage_note([64.0, 68.0, 71.0, 86.0, 90.0])
    assert gap == (
        "the series looks incomplete: 1 gap(s) in the slice positions (the largest 15.0 mm "
        "where the slices are 4.0 mm apart). The verdict covers only the slices given."
    )
    thin = [k * 0.625 for k in range(40) if k != 17]  # one thin slice missing
    assert coverage_note(thin, [0.625] * len(thin)) is None
    # 3 mm slices at the skull base, 10 mm above: each step is judged by its slices' thickness
    mixed = [0.0, 3.0, 6.0, 9.0, 12.0, 22.0, 32.0, 42.0, 52.0]
    assert coverage_note(mixed, [3.0] * 5 + [10.0] * 4) is None
    # One missing 2.5 mm slice (a 5.0 mm step, on the limit) is none, rounding or not; two are
    assert coverage_note([0.0, 2.5, 5.0, 10.0001, 12.5, 15.0], [2.5] * 6) is None
    assert "1 gap(s)" in coverage_note([0.0, 2.5, 5.0, 12.5, 15.0, 17.5], [2.5] * 6)
    sparse = coverage_note([0.0, 3.75, 7.5, 11.25], [0.625] * 4)
    assert "slices 3.8 mm apart but 0.625 mm thick (only some slices" in sparse
    assert coverage_note([0.0, None, 10.0]) is None and coverage_note([0.0, 30.0]) is None


def test_a_series_knows_its_coverage():
    """Series.coverage_note reads its own slices' positions and thickness."""
    (series,) = group_series([_slice(z) for z in (0.0, 2.5, 5.0, 20.0)])
    assert series.coverage_note.startswith("the series looks incomplete: 1 gap(s)")
