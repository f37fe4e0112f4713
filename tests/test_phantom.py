"""Synthetic phantoms: anatomy, subtype geometry, DICOM round trip, dataset layout, determinism."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from hemo.config import HU_AIR, RSNA_LABELS, SUBTYPES
from hemo.errors import ConfigError
from hemo.phantom import (
    SliceIdentity,
    make_study,
    mask_bits,
    stored_pixels,
    unpack_mask_bits,
    write_demo_dataset,
    write_dicom,
)

SIZE = 192
SLICES = 4
SEEDS = range(3)
#: Acute blood 50-90 HU, widened by the noise and blur a small mask picks up.
BLOOD_TOLERANT_HU = (45.0, 95.0)
BLOOD_HU = (50.0, 90.0)
KERNEL = np.ones((3, 3), np.uint8)


def _dilate(mask: np.ndarray, px: int = 1) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), KERNEL, iterations=px).astype(bool)


def _erode(mask: np.ndarray, px: int = 1) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), KERNEL, iterations=px).astype(bool)


def _positive_slices(subtype: str, seed: int, size: int = SIZE):
    study = make_study(np.random.default_rng(seed), SLICES, [subtype], size)
    return study, [s for s in study if s.masks[subtype].any()]


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_blood_inside_each_mask_is_acute_blood(subtype: str) -> None:
    """Median HU inside every subtype mask (away from bone) is 50-90 HU up to noise."""
    for seed in SEEDS:
        _, positives = _positive_slices(subtype, seed)
        assert positives, f"{subtype} seed {seed}: no slice shows the bleed"
        for slc in positives:
            core = slc.masks[subtype] & ~_dilate(slc.anatomy["bone"])
            median = float(np.median(slc.hu[core]))
            assert BLOOD_TOLERANT_HU[0] <= median <= BLOOD_TOLERANT_HU[1], (seed, slc.z_mm, median)
            interior = _erode(slc.masks[subtype])
            if interior.sum() >= 10:
                mean = float(slc.hu[interior].mean())
                assert BLOOD_HU[0] <= mean <= BLOOD_HU[1], (seed, slc.z_mm, mean)


@pytest.mark.parametrize("subtype", ["epidural", "subdural"])
def test_extra_axial_bleeds_touch_the_inner_table(subtype: str) -> None:
    """Epidural and subdural masks border bone and lie inside the skull."""
    for seed in SEEDS:
        _, positives = _positive_slices(subtype, seed)
        for slc in positives:
            mask = slc.masks[subtype]
            assert (_dilate(mask) & slc.anatomy["bone"]).any()
            assert not (mask & slc.anatomy["bone"]).any()
            assert (mask <= slc.anatomy["brain"]).all()


def test_epidural_is_short_and_thick_subdural_long_and_thin() -> None:
    """Epidural lenses have a larger thickness-to-length ratio than subdural crescents."""

    def ratio(subtype: str) -> float:
        values = []
        for seed in SEEDS:
            _, positives = _positive_slices(subtype, seed)
            slc = max(positives, key=lambda s: s.masks[subtype].sum())
            mask = slc.masks[subtype].astype(np.uint8)
            thickness = 2 * cv2.distanceTransform(mask, cv2.DIST_L2, 3).max()
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            length = max(cv2.arcLength(c, True) for c in contours) / 2
            values.append(thickness / length)
        return float(np.median(values))

    assert ratio("epidural") > 1.5 * ratio("subdural")


def test_intraventricular_blood_layers_in_the_ventricles() -> None:
    """Intraventricular blood lies inside the ventricles, in their dependent (lower) part."""
    for seed in SEEDS:
        _, positives = _positive_slices("intraventricular", seed)
        for slc in positives:
            mask, ventricles = slc.masks["intraventricular"], slc.anatomy["ventricles"]
            assert (mask <= ventricles).all()
            rows = np.nonzero(mask)[0].mean()
            assert rows > np.nonzero(ventricles)[0].mean()


def test_intraparenchymal_has_an_edema_halo() -> None:
    """A hypodense ring surrounds the parenchymal blob: darker than the brain around it."""
    for seed in SEEDS:
        _, positives = _positive_slices("intraparenchymal", seed)
        slc = max(positives, key=lambda s: s.masks["intraparenchymal"].sum())
        mask = slc.masks["intraparenchymal"]
        tissue = slc.anatomy["brain"] & ~slc.anatomy["csf"] & ~_dilate(slc.anatomy["bone"], 2)
        ring = _dilate(mask, 2) & ~_dilate(mask) & tissue
        far = tissue & ~_dilate(mask, 12)
        assert slc.hu[ring].mean() < slc.hu[far].mean() - 5.0


def test_subarachnoid_blood_is_thin() -> None:
    """Subarachnoid masks are thin lines: most of their pixels lie on their own edge."""
    for seed in SEEDS:
        _, positives = _positive_slices("subarachnoid", seed)
        for slc in positives:
            mask = slc.masks["subarachnoid"]
            edge_fraction = (mask & ~_erode(mask)).sum() / mask.sum()
            assert edge_fraction > 0.6
            assert (mask <= slc.anatomy["csf"]).all()


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_bleed_spans_contiguous_slices_at_one_place(subtype: str) -> None:
    """A bleed covers a contiguous run of slices and stays at one place in the head."""
    for seed in SEEDS:
        study, _ = _positive_slices(subtype, seed)
        flags = [bool(s.masks[subtype].any()) for s in study]
        first, last = flags.index(True), len(flags) - 1 - flags[::-1].index(True)
        assert all(flags[first : last + 1])
        centroids = [np.argwhere(s.masks[subtype]).mean(0) for s in study if s.masks[subtype].any()]
        spacing = study[0].pixel_spacing_mm
        for a, b in zip(centroids, centroids[1:], strict=False):
            assert np.linalg.norm(a - b) * spacing < 40.0


def test_healthy_study_has_empty_masks_and_sane_hu() -> None:
    """A healthy study has no mask pixels; air is -1000, bone > 700, brain near 20-45 HU."""
    study = make_study(np.random.default_rng(7), SLICES, [], SIZE)
    levels = [s.z_mm for s in study]
    assert levels == sorted(levels)
    for slc in study:
        assert slc.labels == dict.fromkeys(RSNA_LABELS, 0)
        assert not any(m.any() for m in slc.masks.values())
        hu, fov = slc.hu, slc.anatomy["fov"]
        assert hu.dtype == np.float32 and hu.shape == (SIZE, SIZE)
        assert (hu[~fov] == HU_AIR).all()
        outside_head = _erode(fov & (hu < -500), 3)
        assert abs(float(hu[outside_head].mean()) - HU_AIR) < 5.0
        assert hu[slc.anatomy["bone"]].max() > 700
        tissue = slc.anatomy["brain"] & ~slc.anatomy["csf"] & ~_dilate(slc.anatomy["bone"], 2)
        assert 20.0 < float(np.median(hu[tissue])) < 45.0
        assert not hu.flags.writeable


def test_head_shrinks_toward_the_vertex() -> None:
    """Within one study the head's cross-section is smaller at high slices than at mid ones."""
    study = make_study(np.random.default_rng(3), 14, [], 128)
    areas = [int((s.hu > -500).sum()) for s in study]
    assert study[-1].z_mm > study[0].z_mm
    assert areas[-1] < 0.8 * max(areas)


def test_same_seed_same_study_and_other_seed_differs() -> None:
    """make_study is a pure function of the generator state."""
    a = make_study(np.random.default_rng(11), 2, ["subdural"], 96)
    b = make_study(np.random.default_rng(11), 2, ["subdural"], 96)
    c = make_study(np.random.default_rng(12), 2, ["subdural"], 96)
    assert all(np.array_equal(x.hu, y.hu) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].hu, c[0].hu)


def test_make_study_rejects_bad_arguments() -> None:
    """Unknown subtypes, no slices and tiny sizes raise ConfigError naming the problem."""
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="unknown subtype"):
        make_study(rng, 2, ["chronic"], 96)
    with pytest.raises(ConfigError, match="at least 1 slice"):
        make_study(rng, 0, [], 96)
    with pytest.raises(ConfigError, match="at least 64 px"):
        make_study(rng, 1, [], 32)


def test_mask_bits_round_trip() -> None:
    """Packing subtype masks into bits and unpacking gives the masks back."""
    rng = np.random.default_rng(0)
    masks = {name: rng.random((8, 9)) < 0.3 for name in SUBTYPES}
    bits = mask_bits(masks)
    assert bits.dtype == np.uint8 and bits.max() < 2 ** len(SUBTYPES)
    unpacked = unpack_mask_bits(bits)
    assert all(np.array_equal(unpacked[n], masks[n]) for n in SUBTYPES)


def test_dicom_round_trip_gives_the_generated_hu(tmp_path: Path) -> None:
    """The written DICOM is a valid CT file whose HU equal the phantom's, padding marked."""
    slc = make_study(np.random.default_rng(5), 1, ["intraparenchymal"], 128)[0]
    ident = SliceIdentity(
        "ID_0123456789"[:12],
        "PHANTOM-0001",
        "Phantom^0001",
        "1.2.3",
        "1.2.3.4",
        "1.2.3.5",
        "1.2.3.6",
        1,
    )
    path = tmp_path / "slice.dcm"
    write_dicom(slc, path, ident)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert (ds.PixelRepresentation, ds.BitsStored, ds.RescaleIntercept) == (0, 16, -1024)
    assert ds.PatientID == "PHANTOM-0001" and float(ds.ImagePositionPatient[2]) == pytest.approx(
        slc.z_mm
    )
    stored = ds.pixel_array
    assert np.array_equal(stored, stored_pixels(slc))
    fov = slc.anatomy["fov"]
    assert (stored[~fov] == ds.PixelPaddingValue).all()
    hu = apply_modality_lut(stored, ds)
    assert np.array_equal(hu[fov], slc.hu[fov])
    from hemo.dicom import read_dicom

    ct = read_dicom(path)
    assert np.array_equal(ct.hu, slc.hu)
    assert ct.pixel_spacing_mm == pytest.approx((slc.pixel_spacing_mm,) * 2, abs=1e-6)


def test_dataset_layout_labels_and_masks_agree(phantom_dir: Path) -> None:
    """CSV has 6 rows per slice, and its labels match the index and the mask bits."""
    index = pd.read_parquet(phantom_dir / "index.parquet")
    with (phantom_dir / "stage_2_train.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["ID", "Label"]
    assert len(rows) - 1 == 6 * len(index) == 6 * 6 * 4
    labels = {r[0]: int(r[1]) for r in rows[1:]}
    assert set(index["source"]) == {"phantom"}
    for row in index.itertuples():
        image_id = Path(row.path).stem
        assert (phantom_dir / row.path).is_file()
        bits = cv2.imread(str(phantom_dir / row.mask_path), cv2.IMREAD_UNCHANGED)
        assert bits.dtype == np.uint8 and bits.shape == (128, 128)
        masks = unpack_mask_bits(bits)
        for name in SUBTYPES:
            assert labels[f"{image_id}_{name}"] == getattr(row, name) == int(masks[name].any())
        assert labels[f"{image_id}_any"] == row.label_any == int(bits.any())
    assert index.groupby("patient_id")["split"].nunique().max() == 1
    assert index.groupby("study_uid")["slice_z"].apply(lambda z: z.is_monotonic_increasing).all()


def test_dataset_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    """Same seed, same bytes in every file; another seed changes the DICOM files."""
    kwargs = {"n_studies": 2, "slices_per_study": 2, "size": 96}
    write_demo_dataset(tmp_path / "a", seed=4, **kwargs)
    write_demo_dataset(tmp_path / "b", seed=4, **kwargs)
    write_demo_dataset(tmp_path / "c", seed=5, **kwargs)
    a, b, c = (_tree_hashes(tmp_path / n) for n in "abc")
    assert a == b and len(a) == 2 * 2 * 2 + 2
    dicoms = lambda h: sorted(v for k, v in h.items() if k.endswith(".dcm"))  # noqa: E731
    assert not set(dicoms(a)) & set(dicoms(c))


def test_rewrite_removes_files_of_a_larger_earlier_run(tmp_path: Path) -> None:
    """Writing fewer studies into the same folder leaves no stale slices behind."""
    write_demo_dataset(tmp_path, n_studies=3, slices_per_study=1, size=64, seed=1)
    write_demo_dataset(tmp_path, n_studies=1, slices_per_study=1, size=64, seed=2)
    assert len(list((tmp_path / "stage_2_train").glob("*.dcm"))) == 1
    assert len(list((tmp_path / "masks").glob("*.png"))) == 1


def test_write_demo_dataset_rejects_bad_arguments(tmp_path: Path) -> None:
    """Out-of-range dataset arguments raise ConfigError before anything is written."""
    with pytest.raises(ConfigError, match="--n must be at least 1"):
        write_demo_dataset(tmp_path / "x", n_studies=0)
    with pytest.raises(ConfigError, match="positive_fraction"):
        write_demo_dataset(tmp_path / "x", n_studies=2, positive_fraction=1.5)
    assert not (tmp_path / "x").exists()


def _inside_head(slc) -> np.ndarray:
    """Pixels inside the head's outer outline (holes such as sinus air filled)."""
    body = (slc.hu > -500).astype(np.uint8)
    contours, _ = cv2.findContours(body, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(body)
    cv2.drawContours(filled, [max(contours, key=cv2.contourArea)], -1, 1, cv2.FILLED)
    return filled.astype(bool)


def test_skull_base_study_starts_low_with_bone_and_air_inside_the_head() -> None:
    """A skull-base study's first slice lies below the anterior fossa floor and carries what real
    skull-base slices do: solid bone and sinus air well inside the head, and partial-volume bone
    with blood-range HU outside every bleed mask (the look-alike of a bleed)."""
    from hemo.phantom import Z_LOWEST_MM

    below = 0
    for seed in range(5):
        study = make_study(np.random.default_rng(seed), SLICES, [], SIZE, skull_base=True)
        plain = make_study(np.random.default_rng(seed), SLICES, [], SIZE)
        assert study[0].z_mm < Z_LOWEST_MM <= plain[0].z_mm
        low = study[0]
        assert low.labels == dict.fromkeys(RSNA_LABELS, 0)
        deep = _erode(_inside_head(low), 12)  # > 12 px from the outline: not the skull ring
        assert (deep & (low.hu > 700)).sum() > 50, seed
        for slc in study:
            if slc.z_mm < -2.0:  # below the floor: orbits, ethmoid and sphenoid air
                assert (_erode(_inside_head(slc), 12) & (slc.hu < -500)).sum() > 20, seed
        look_alike = deep & (low.hu >= 60) & (low.hu <= 90) & ~(low.hu > 700)
        assert look_alike.sum() > 0, seed
        assert not (low.anatomy["brain"] & (low.hu > 700)).any()
        below += sum(slc.z_mm < -2.0 for slc in study)
    assert below >= 3


@pytest.mark.parametrize("subtype", ["intraparenchymal", "epidural", "subdural"])
def test_skull_base_bleeds_stay_in_the_brain_and_are_blood(subtype: str) -> None:
    """Bleeds of a skull-base study are clipped to what is left of the brain and stay acute blood."""
    seen = 0
    for seed in range(6):
        study = make_study(np.random.default_rng(seed), SLICES, [subtype], SIZE, skull_base=True)
        for slc in study:
            mask = slc.masks[subtype]
            if not mask.any():
                continue
            seen += 1
            assert (mask <= slc.anatomy["brain"]).all()
            assert not (mask & slc.anatomy["bone"]).any()
            core = mask & ~_dilate(slc.anatomy["bone"])
            if core.sum() >= 10:
                median = float(np.median(slc.hu[core]))
                assert BLOOD_TOLERANT_HU[0] <= median <= BLOOD_TOLERANT_HU[1], (seed, median)
    assert seen >= 3


def test_dataset_skull_base_and_vertex_fractions_move_studies(tmp_path: Path) -> None:
    """--skull-base 0 keeps every study above the fossa floor, 1 starts every study (but those
    that need ventricles) at the skull base; labels still agree with the masks."""
    from hemo.phantom import Z_LOWEST_MM

    kwargs = {"n_studies": 6, "slices_per_study": 3, "size": 96, "seed": 3}
    none = write_demo_dataset(tmp_path / "none", skull_base=0.0, **kwargs)
    everyone = write_demo_dataset(tmp_path / "all", skull_base=1.0, **kwargs)
    assert none.groupby("study_uid")["slice_z"].min().min() >= Z_LOWEST_MM
    lowest = everyone.groupby("study_uid")["slice_z"].min()
    ivh = everyone.groupby("study_uid")["intraventricular"].max().astype(bool)
    assert (lowest[~ivh] < Z_LOWEST_MM).all() and (~ivh).sum() >= 3
    for row in everyone.itertuples():
        bits = cv2.imread(str(tmp_path / "all" / row.mask_path), cv2.IMREAD_UNCHANGED)
        assert row.label_any == int(bits.any())
    with pytest.raises(ConfigError, match="--skull-base"):
        write_demo_dataset(tmp_path / "x", n_studies=2, skull_base=1.5)
    with pytest.raises(ConfigError, match="--vertex"):
        write_demo_dataset(tmp_path / "x", n_studies=2, skull_base=0.6, vertex=0.6)
    tops = write_demo_dataset(tmp_path / "top", vertex=1.0, **kwargs)
    highest = tops.groupby("study_uid")["slice_z"].max()
    ivh_top = tops.groupby("study_uid")["intraventricular"].max().astype(bool)
    assert (highest[~ivh_top] > 100.0).all()
    assert not (tmp_path / "x").exists()


def test_vertex_study_ends_with_the_skull_cut_tangentially() -> None:
    """A vertex study ends near the top of the head: its highest slices show a plate of bone wider
    than the skull ring of a mid-level slice, around little or no brain; bleeds stay in the brain."""
    from hemo.phantom import Z_HIGHEST_MM

    for seed in SEEDS:
        study = make_study(np.random.default_rng(seed), SLICES, ["subdural"], SIZE, vertex=True)
        plain = make_study(np.random.default_rng(seed), SLICES, ["subdural"], SIZE)
        assert study[-1].z_mm > Z_HIGHEST_MM >= plain[-1].z_mm
        mid = plain[len(plain) // 2]
        # The very top slice may be a cap of scalp only: look at the two highest.
        shares = [s.anatomy["bone"].sum() / _inside_head(s).sum() for s in study[-2:]]
        assert max(shares) > 1.5 * mid.anatomy["bone"].sum() / _inside_head(mid).sum(), seed
        top = study[-1]
        assert top.anatomy["brain"].sum() < 0.5 * _inside_head(top).sum()
        for slc in study:
            for name in SUBTYPES:
                assert (slc.masks[name] <= slc.anatomy["brain"]).all()
    vertex_iv = make_study(
        np.random.default_rng(0), SLICES, ["intraventricular"], SIZE, vertex=True
    )
    assert any(s.masks["intraventricular"].any() for s in vertex_iv)  # IVH keeps its levels
