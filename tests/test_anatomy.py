"""Tests of hemo.anatomy: where a slice lies in the head, and the range a model was trained on."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from hemo.anatomy import (
    MIN_RELATIVE_HEAD_AREA,
    RANGE_MARGIN,
    SliceAnatomy,
    SliceRange,
    deciding_slices,
    fit_slice_range,
    scan_anatomy,
    slice_anatomy,
)
from hemo.config import MODELS_DIR
from hemo.errors import InputError, ModelError
from hemo.io import read_scan

#: Side of the drawn test head, its outer radius and the skull's thickness (pixels).
SIDE_PX, HEAD_RADIUS_PX, SKULL_PX = 200, 80, 10
#: The lowest and highest part of the real series (mm from its ends) that must be out of range,
#: and the middle share of it that must be in range.
END_MM = 15.0
MIDDLE_SHARE = (0.45, 0.60)


def _drawn_head() -> np.ndarray:
    """A gray disk (brain, 0.5) in a white ring (skull, 1.0) with a dark hole (air, 0.0)."""
    yy, xx = np.mgrid[:SIDE_PX, :SIDE_PX]
    r = np.hypot(yy - SIDE_PX / 2, xx - SIDE_PX / 2)
    gray = np.zeros((SIDE_PX, SIDE_PX), dtype=np.float32)
    gray[r < HEAD_RADIUS_PX] = 1.0
    gray[r < HEAD_RADIUS_PX - SKULL_PX] = 0.5
    gray[r < 10] = 0.0
    return gray


def test_slice_anatomy_of_a_drawn_head():
    """The soft-tissue share counts brain over the filled head section, bone and air not."""
    gray = _drawn_head()
    before = gray.copy()
    anatomy = slice_anatomy(gray)
    np.testing.assert_array_equal(gray, before)  # input not modified
    head = np.pi * HEAD_RADIUS_PX**2
    brain = np.pi * ((HEAD_RADIUS_PX - SKULL_PX) ** 2 - 10**2)
    assert anatomy.head_area_px == pytest.approx(head, rel=0.03)
    assert anatomy.soft_tissue_fraction == pytest.approx(brain / head, abs=0.02)


def test_slice_anatomy_degenerate_inputs():
    """No head gives zeros; a non-2-D input is refused with its shape."""
    assert slice_anatomy(np.zeros((8, 8), dtype=np.float32)) == SliceAnatomy(0.0, 0)
    with pytest.raises(InputError, match=r"non-empty \(H, W\) image, got shape \(2, 3, 4\)"):
        slice_anatomy(np.zeros((2, 3, 4)))


def test_range_reasons_name_the_rule():
    """The soft-tissue rule applies to every slice, the area rule only within a series."""
    rng = SliceRange(0.5, MIN_RELATIVE_HEAD_AREA, 0.53, 10)
    assert rng.reason(SliceAnatomy(0.3, 1000)).startswith("soft tissue is 30.0% of the head")
    assert rng.reason(SliceAnatomy(0.8, 100)) is None  # alone: no series to compare with
    assert "10.0% of the series' largest" in rng.reason(SliceAnatomy(0.8, 100), 1000)
    reasons = rng.reasons([SliceAnatomy(0.8, 1000), SliceAnatomy(0.8, 300), SliceAnatomy(0.4, 900)])
    assert reasons[0] is None and "30.0% of the series" in reasons[1] and "40.0%" in reasons[2]
    # A fraction just under the minimum reads under it (both read "56%" before)
    close = SliceRange(0.5567, MIN_RELATIVE_HEAD_AREA, 0.5867, 140).reason(SliceAnatomy(0.555, 9))
    assert "55.5% of the head section, under the 55.7% minimum" in close
    closer = SliceRange(0.55549, MIN_RELATIVE_HEAD_AREA, 0.58, 10).reason(SliceAnatomy(0.55541, 9))
    assert "55.54% of the head section, under the 55.55% minimum" in closer  # a decimal more


def test_range_round_trip_and_malformed_cards():
    """to_dict/from_dict round-trip; a malformed range is a ModelError naming the problem."""
    rng = SliceRange(0.5567, MIN_RELATIVE_HEAD_AREA, 0.5867, 140)
    assert SliceRange.from_dict(rng.to_dict()) == rng
    with pytest.raises(ModelError, match="slice_range is malformed"):
        SliceRange.from_dict({"min_soft_tissue_fraction": 0.5})
    with pytest.raises(ModelError, match="slice_range values out of range"):
        SliceRange.from_dict({**rng.to_dict(), "min_soft_tissue_fraction": 1.5})


def test_card_with_a_malformed_range_fails_to_load():
    """A card whose slice_range is broken is refused when read, not at the first series."""
    from hemo.model import ModelCard
    from hemo.preprocess import InputSpec

    card = ModelCard("m", "compact", InputSpec(), ("any",), slice_range={"images": 1})
    with pytest.raises(ModelError, match="slice_range is malformed"):
        ModelCard.from_json(card.to_json())
    assert ModelCard.from_json(card.__class__("m", "compact", InputSpec(), ("any",)).to_json())


def test_fit_on_real_images_leaves_out_a_corrupt_file(head_ct_dir, tmp_path, caplog):
    """The range is the lowest soft-tissue share of the readable images less the margin; a
    corrupt file is logged by name and left out."""
    pngs = sorted((head_ct_dir / "head_ct").glob("*.png"))[:6]
    broken = tmp_path / "broken.png"
    broken.write_bytes(pngs[0].read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="hemo.anatomy"):
        fitted = fit_slice_range([*pngs, broken])
    lowest = min(scan_anatomy(read_scan(p)).soft_tissue_fraction for p in pngs)
    assert fitted.images == len(pngs) and fitted.lowest_seen == pytest.approx(lowest)
    assert fitted.min_soft_tissue_fraction == pytest.approx(lowest - RANGE_MARGIN)
    assert "broken.png" in caplog.text
    assert fit_slice_range([broken]) is None
    sampled = fit_slice_range(pngs, max_images=3)
    assert sampled.images == 3 and sampled.lowest_seen >= lowest
    assert fit_slice_range(pngs, max_images=3) == sampled  # the sample is seeded


@pytest.fixture(scope="module")
def shipped_range() -> SliceRange:
    """The slice range in the shipped real-scan model's card."""
    from hemo.model import read_card

    fitted = read_card(MODELS_DIR / "headct_real.keras").parse_slice_range()
    assert fitted is not None, "models/headct_real.json has no slice_range"
    return fitted


@pytest.fixture(scope="module")
def real_series(cq500_dir: Path) -> list:
    """The real CQ500-CT-0 series, in anatomical order, as (z_mm, anatomy) pairs."""
    slices = [read_scan(p) for p in sorted(cq500_dir.glob("*.dcm"))]
    return sorted((s.slice_z_mm, scan_anatomy(s)) for s in slices)


def test_real_series_ends_fall_outside_the_shipped_range(real_series, shipped_range):
    """On the real CQ500 series the shipped model's range leaves out the skull base and the
    vertex and keeps the middle of the head."""
    z = np.array([zz for zz, _ in real_series])
    out = np.array([r is not None for r in shipped_range.reasons([a for _, a in real_series])])
    low, high = z.min(), z.max()
    assert out[z <= low + END_MM].all() and out[z >= high - END_MM].all()
    middle = (z >= low + MIDDLE_SHARE[0] * (high - low)) & (
        z <= low + MIDDLE_SHARE[1] * (high - low)
    )
    assert middle.sum() > 10 and not out[middle].any()


def test_real_images_are_inside_the_shipped_range(head_ct_dir, cq500_uncompressed, shipped_range):
    """Every Kaggle image the model was trained on, and the real bleed slice, are in range."""
    pngs = sorted((head_ct_dir / "head_ct").glob("*.png"))
    assert len(pngs) == shipped_range.images
    for path in [*pngs, cq500_uncompressed]:
        assert shipped_range.reason(scan_anatomy(read_scan(path))) is None, path.name


@pytest.mark.parametrize("model", ["headct_real", "phantom_rsna3"])
def test_demo_phantom_series_are_inside_both_shipped_ranges(model, phantom_dir):
    """The app's own phantoms (every slice of every study, series rule included) are inside the
    range of both shipped models, so the demo never greys out a slice."""
    from hemo.datasets import load_index
    from hemo.model import read_card

    fitted = read_card(MODELS_DIR / f"{model}.keras").parse_slice_range()
    assert fitted is not None, f"models/{model}.json has no slice_range"
    index = load_index(phantom_dir)
    for _, study in index.sort_values("slice_z").groupby("study_uid"):
        anatomies = [scan_anatomy(read_scan(p)) for p in study["path"]]
        assert fitted.reasons(anatomies) == [None] * len(anatomies)


def test_deciding_slices_pool_the_range_else_every_slice() -> None:
    """In-range slices decide (the highest, the first on a tie); with none in range every slice
    is pooled; a length mismatch or no slice is refused."""
    assert deciding_slices([0.9, 0.2, 0.4, 0.4], ["base", None, None, None]) == ([1, 2, 3], 2)
    assert deciding_slices([0.9, 0.2], ["base", "vertex"]) == ([0, 1], 0)
    assert deciding_slices([0.3, 0.7], [None, None]) == ([0, 1], 1)
    nan = float("nan")  # a model's failure never decides, unless nothing else can
    assert deciding_slices([nan, 0.9, 0.2], [None] * 3) == ([0, 1, 2], 1)
    assert deciding_slices([nan, nan], [None] * 2) == ([0, 1], 0)
    with pytest.raises(ValueError, match="one range flag per slice probability, got 1 for 2"):
        deciding_slices([0.3, 0.7], [None])
    with pytest.raises(ValueError, match="got 0 for 0"):
        deciding_slices([], [])
