"""hemo.eda: chart-ready tables of an index, without Streamlit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hemo import eda
from hemo.datasets import load_index


def _index() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"/d/{i}.dcm" for i in range(6)],
            "label_any": [1, 1, 0, 0, 0, 1],
            "epidural": pd.array([1, 0, 0, 0, 0, 1], dtype="Int8"),
            "intraparenchymal": pd.array([0, 0, 0, 0, 0, 0], dtype="Int8"),
            "intraventricular": pd.array([pd.NA] * 6, dtype="Int8"),
            "subarachnoid": pd.array([0, 0, 0, 0, 0, 0], dtype="Int8"),
            "subdural": pd.array([1, 1, 0, 0, 0, 0], dtype="Int8"),
            "patient_id": ["a", "a", "b", "b", "c", "c"],
            "study_uid": ["s1", "s1", "s2", "s2", "s3", "s3"],
            "series_uid": ["r1", "r1", "r2", "r2", "r3", "r3"],
            "slice_z": [0.0, 5.0, 0.0, 5.0, 0.0, 5.0],
            "split": ["train", "train", "val", "val", "test", "test"],
        }
    )


def test_class_balance_counts_and_fractions():
    """Class balance gives 3 negatives, 3 positives, fractions 0.5."""
    frame = eda.class_balance(_index())
    assert frame["class"].tolist() == ["no hemorrhage", "hemorrhage"]
    assert frame["images"].tolist() == [3, 3]
    assert frame["fraction"].tolist() == [0.5, 0.5]


def test_subtypes_skip_unlabelled_columns_and_count_pairs():
    """Only labelled subtypes appear; co-occurrence counts images positive for both."""
    index = _index()
    assert eda.subtype_columns(index) == [
        "epidural",
        "intraparenchymal",
        "subarachnoid",
        "subdural",
    ]
    counts = eda.subtype_counts(index).set_index("subtype")["images"]
    assert counts["epidural"] == 2 and counts["subdural"] == 2
    matrix = eda.subtype_cooccurrence(index)
    assert matrix.loc["epidural", "subdural"] == 1
    assert matrix.loc["subdural", "subdural"] == 2


def test_binary_dataset_has_no_subtype_tables():
    """A dataset without subtype labels gives empty subtype tables."""
    index = _index().assign(**{s: pd.NA for s in eda.SUBTYPES})
    assert eda.subtype_counts(index).empty
    assert eda.subtype_cooccurrence(index).empty


def test_slices_per_study_and_splits():
    """Three studies of two slices; split sizes per class in train/val/test order."""
    studies = eda.slices_per_study(_index())
    assert studies["slices"].tolist() == [2, 2, 2]
    assert set(studies["class"]) == {"hemorrhage", "no hemorrhage"}
    splits = eda.split_sizes(_index())
    assert splits["split"].drop_duplicates().tolist() == ["train", "val", "test"]
    assert splits["images"].sum() == 6


def test_summary_counts():
    """The summary counts images, positives, studies, patients and splits."""
    counts = eda.summary(_index())
    assert counts["images"] == 6 and counts["positive"] == 3 and counts["negative"] == 3
    assert counts["studies"] == 3 and counts["patients"] == 3
    assert counts["split_train"] == 2
    # no study or series ids (the Kaggle PNGs): no study count, not one study per image
    plain = _index().drop(columns=["study_uid", "series_uid"], errors="ignore")
    assert not eda.has_study_ids(plain) and eda.summary(plain)["studies"] == 0
    assert eda.count_text(1, "study", "studies") == "1 study"
    assert eda.count_text(1240, "study", "studies") == "1,240 studies"
    assert eda.lookalike_shown(6, 26) == (
        "The most alike pair of 6 of its 26 groups (the table above lists every image)."
    )
    assert eda.lookalike_shown(2, 2) == "The most alike pair of each of its 2 groups."
    assert eda.quality_scope(140, 16).startswith(
        "Labels, duplicates and look-alikes are checked on all 140 images; pixels are decoded "
        "only for the 16 images of the pixel sample above, so a file whose header reads"
    )
    assert "every one was decoded" in eda.quality_scope(12, 12)


def test_stratified_sample_is_seeded_and_bounded():
    """Same seed, same rows; at most per_class rows of each class."""
    a = eda.stratified_sample(_index(), per_class=2, seed=3)
    b = eda.stratified_sample(_index(), per_class=2, seed=3)
    assert a["path"].tolist() == b["path"].tolist()
    assert a["class"].value_counts().max() == 2


def test_histogram_fractions_sum_to_one_and_input_untouched():
    """Histogram fractions sum to 1 inside the range; the input is not modified."""
    values = np.array([-100.0, 0.0, 50.0, 5000.0], dtype=np.float32)
    before = values.copy()
    hist = eda.histogram(values, (-200.0, 200.0), bins=4)
    assert hist["count"].sum() == 3
    assert hist["fraction"].sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(values, before)


def test_histogram_of_nothing_in_range_is_zero():
    """No value inside the range gives zero fractions, not a division by zero."""
    hist = eda.histogram(np.array([9999.0]), (0.0, 1.0), bins=2)
    assert hist["fraction"].tolist() == [0.0, 0.0]


def test_scan_sample_on_phantoms_gives_hu_and_geometry(tmp_path):
    """A pass over phantom DICOMs gives HU histograms per class and 128 px geometry."""
    from dashboard_fixtures import PHANTOM_SIZE_PX, make_phantoms

    index = load_index(make_phantoms(tmp_path / "demo") / "index.parquet")
    seen = []
    stats = eda.scan_sample(index, per_class=2, seed=0, on_progress=lambda f, n: seen.append(f))
    assert set(stats.histograms["unit"]) == {"HU"}
    assert set(stats.histograms["class"]) == {"hemorrhage", "no hemorrhage"}
    assert (stats.geometry["rows"] == PHANTOM_SIZE_PX).all()
    assert stats.geometry["spacing_row_mm"].notna().all()
    assert seen[-1] == 1.0 and stats.failures.empty


def test_scan_sample_reports_unreadable_files(tmp_path):
    """A broken file in the sample is listed with the reason, not raised."""
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom at all" * 10)
    index = _index().iloc[:1].assign(path=str(bad))
    stats = eda.scan_sample(index, per_class=1)
    assert stats.failures["path"].tolist() == [str(bad)]
    assert stats.failures["reason"].iloc[0]


def test_sample_grid_on_png_layout(tmp_path):
    """The sample grid renders PNG tiles per class in [0, 1]."""
    from dashboard_fixtures import make_kaggle_pngs

    index = load_index(make_kaggle_pngs(tmp_path / "kaggle"))
    tiles = eda.sample_grid(index, window="brain", per_class=2)
    assert [t.label for t in tiles].count("hemorrhage") == 2
    assert all(0.0 <= t.image.min() and t.image.max() <= 1.0 for t in tiles)


def test_missing_labels_and_problem_counts():
    """Rows without label_any are listed; problem counts list every asked kind."""
    index = _index().astype({"label_any": "Float64"})
    index.loc[2, "label_any"] = pd.NA
    missing = eda.missing_labels(index)
    assert missing["path"].tolist() == ["/d/2.dcm"]
    counts = eda.problem_counts(missing, ("unreadable", "missing_label"))
    assert dict(zip(counts["kind"], counts["files"], strict=True)) == {
        "unreadable": 0,
        "missing_label": 1,
    }
    joined = eda.concat_problems(missing, missing)
    assert len(joined) == 1


def test_lookalike_pairs_one_per_group_on_real_images(head_ct_dir) -> None:
    """On the real Kaggle images: one pair per look-alike group, the most alike first, with
    display images and captions; a set where every image has a patient id gives none."""
    from pathlib import Path

    index = load_index(head_ct_dir)
    sample = eda.lookalike_pairs(index, max_pairs=4)
    pairs = sample.pairs
    assert len(pairs) == 4 and sample.groups == 26  # docs/MODELS.md: 66 images in 26 groups
    scores = [p.similarity for p in pairs]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.99
    first = {Path(p.first.caption.split(" ")[0]).stem for p in pairs}
    second = {Path(p.second.caption.split(" ")[0]).stem for p in pairs}
    assert len(first | second) == 8  # four different groups
    assert ("005" in first and "058" in second) or ("022" in first)
    assert pairs[0].first.image.dtype == np.float32 and pairs[0].first.image.max() <= 1.0
    assert pairs[0].first.caption.endswith("(hemorrhage)")
    with_ids = index.assign(patient_id=[f"p{i}" for i in range(len(index))])
    assert eda.lookalike_pairs(with_ids) == eda.LookalikeSample([], 0)


def test_backgrounds_by_class_and_the_imbalance_warning():
    """Gray backgrounds are counted per class; a gap of a quarter or more between two labelled
    classes of at least eight images gives a warning naming both counts, a smaller gap, an
    unlabelled class or a class too small to compare gives none."""
    geometry = pd.DataFrame(
        {
            "class": ["hemorrhage"] * 8 + ["no hemorrhage"] * 8 + ["unlabelled"] * 8,
            "background": [0.2] * 5 + [0.0] * 3 + [0.15] + [0.0] * 7 + [0.0] * 8,
        }
    )
    table = eda.backgrounds_by_class(geometry)
    assert table["gray_background"].tolist() == [5, 1, 0]
    assert table["share"].tolist() == [0.625, 0.125, 0.0]
    warning = eda.background_imbalance(table)
    assert warning is not None
    assert "hemorrhage 5 of 8, no hemorrhage 1 of 8" in warning
    assert "input.black_background = true" in warning
    close = geometry.assign(background=[0.2] * 3 + [0.0] * 5 + [0.15] * 2 + [0.0] * 14)
    assert eda.background_imbalance(eda.backgrounds_by_class(close)) is None
    assert eda.background_imbalance(table, min_images=9) is None
    empty = eda.backgrounds_by_class(geometry.iloc[0:0])
    assert empty.empty and eda.background_imbalance(empty) is None


def test_real_kaggle_pictures_have_gray_backgrounds_mostly_in_one_class(head_ct_dir):
    """Over the whole real Kaggle set, 33 of the 70 hemorrhage pictures have a flat gray
    background and 10 of the 70 others: the EDA pass finds it and warns."""
    stats = eda.scan_sample(load_index(head_ct_dir), per_class=70)
    table = eda.backgrounds_by_class(stats.geometry).set_index("class")
    assert table.loc["hemorrhage", "gray_background"] == 33
    assert table.loc["no hemorrhage", "gray_background"] == 10
    assert eda.background_imbalance(table.reset_index()) is not None
    assert stats.geometry["background"].between(0.0, 0.4).all()


def test_split_grouping_says_how_the_splits_keep_images_together():
    """Patient ids everywhere: by patient; none but study UIDs: by study; no ids (Kaggle
    PNGs): by image with look-alikes kept together; a mix says both."""
    index = _index()
    assert eda.split_grouping(index) == "split by patient"
    assert eda.split_grouping(index.assign(patient_id=None)) == "split by study"
    bare = index.assign(patient_id=None, study_uid=None)
    assert eda.split_grouping(bare).startswith("no patient ids: split by image")
    mixed = index.assign(patient_id=["a", None, None, None, None, None], study_uid=None)
    assert eda.split_grouping(mixed).startswith("split by patient or study where known")


def test_display_images_only_by_file_suffix():
    """Only PNG/JPEG/TIFF files (any case): a window selector would change nothing."""
    index = _index()
    assert not eda.display_images_only(index)
    assert eda.display_images_only(index.assign(path=[f"/d/{i}.PNG" for i in range(6)]))
    mixed = [f"/d/{i}.png" for i in range(5)] + ["/d/x.dcm"]
    assert not eda.display_images_only(index.assign(path=mixed))
    assert not eda.display_images_only(index.iloc[:0])
