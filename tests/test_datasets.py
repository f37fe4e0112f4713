"""Dataset adapters, layout detection, index save/load, quality report and split leakage."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import PHANTOM_FIXTURE

from hemo.config import SUBTYPES
from hemo.datasets import (
    INDEX_COLUMNS,
    INDEX_FILE,
    build_index,
    detect_layout,
    index_dataset,
    load_index,
    quality_report,
    save_index,
    summarize,
)
from hemo.datasets.cq500 import majority_labels, scan_name
from hemo.datasets.folders import class_of
from hemo.errors import DatasetError


def _leaks(frame: pd.DataFrame) -> list[str]:
    """Groups (patient, else study, else file) found in more than one split."""
    group = frame["patient_id"].fillna(frame["study_uid"]).fillna(frame["path"])
    per_group = frame.assign(_g=group).groupby("_g")["split"].nunique()
    return per_group[per_group > 1].index.tolist()


@pytest.fixture(scope="module")
def cq500_index(cq500_dir: Path) -> pd.DataFrame:
    """The real CQ500 sample indexed once for this module."""
    return build_index(cq500_dir.parent, workers=1)


@pytest.fixture()
def kaggle_quirky(head_ct_dir: Path, tmp_path: Path) -> Path:
    """Kaggle layout with the header space, padded names, gaps in ids, and loose ends."""
    images = tmp_path / "head_ct"
    images.mkdir()
    for image_id in (3, 7, 12, 130, 140):
        shutil.copy(head_ct_dir / "head_ct" / f"{image_id:03d}.png", images / f"{image_id:03d}.png")
    # 140 has an image but no label row; 999 has a label row but no image.
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n3,1\n7,1\n12,1\n130,0\n999,0\n")
    return tmp_path


@pytest.fixture()
def rsna_tree(cq500_dir: Path, tmp_path: Path) -> Path:
    """RSNA layout with real CQ500 slices, a corrupt file, and loose label rows."""
    images = tmp_path / "stage_2_train"
    images.mkdir()
    names = ["ID_aa", "ID_bb", "ID_cc", "ID_dd"]
    for i, name in enumerate(names):
        shutil.copy(cq500_dir / f"CT{i + 1:06d}.dcm", images / f"{name}.dcm")
    (images / "ID_bad.dcm").write_bytes(b"not a dicom file" * 40)
    (images / "ID_nolabel.dcm").write_bytes((images / "ID_aa.dcm").read_bytes())
    positives = {"ID_bb": ("any", "subdural"), "ID_dd": ("any", "epidural", "intraparenchymal")}
    lines = ["ID,Label"]
    for name in [*names, "ID_bad", "ID_noimage"]:
        for cls in ("any", *SUBTYPES):
            lines.append(f"{name}_{cls},{int(cls in positives.get(name, ()))}")
    lines.append("ID_aa_any,0")  # the real stage-2 CSV repeats rows: exact repeats are fine
    (tmp_path / "stage_2_train.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_kaggle_shared_sample_indexes_140_rows_70_positive(head_ct_dir: Path) -> None:
    """The shared Kaggle sample gives 140 rows, 70 positive, no subtypes, no patients."""
    frame = build_index(head_ct_dir)
    assert detect_layout(head_ct_dir) == "kaggle_head_ct"
    assert list(frame.columns) == list(INDEX_COLUMNS)
    assert len(frame) == 140
    assert int(frame["label_any"].sum()) == 70
    assert frame[list(SUBTYPES)].isna().all().all()
    assert frame["patient_id"].isna().all()
    assert set(frame["source"]) == {"kaggle_head_ct"}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["path"])


def test_kaggle_quirks_header_space_gaps_and_loose_ends(kaggle_quirky: Path) -> None:
    """Header space, padded names and id gaps index; loose ends become problems, not crashes."""
    result = index_dataset(kaggle_quirky)
    names = sorted(Path(p).name for p in result.frame["path"])
    assert names == ["003.png", "007.png", "012.png", "130.png"]
    labels = dict(zip(names, result.frame.sort_values("path")["label_any"], strict=True))
    assert labels == {"003.png": 1, "007.png": 1, "012.png": 1, "130.png": 0}
    kinds = {(p.kind, Path(p.path.split(":")[0]).name) for p in result.problems}
    assert ("missing_image", "labels.csv") in kinds
    assert ("missing_label", "140.png") in kinds
    assert any("999" in p.path for p in result.problems if p.kind == "missing_image")


def test_kaggle_bad_label_rows_are_problems_and_the_rest_indexes(kaggle_quirky: Path) -> None:
    """A blank label, a label 2 and an id that is not a number are each a bad_label problem
    naming the file's line and what it holds (they used to abort the whole index with a numpy
    repr); the other rows index as before."""
    (kaggle_quirky / "labels.csv").write_text("id, hemorrhage\n3,1\n7,\n12,2\nx,1\n130,0\n")
    result = index_dataset(kaggle_quirky)
    assert sorted(Path(p).name for p in result.frame["path"]) == ["003.png", "130.png"]
    bad = [(Path(p.path).name, p.reason) for p in result.problems if p.kind == "bad_label"]
    assert [name for name, _ in bad] == [
        "labels.csv:line 3",
        "labels.csv:line 4",
        "labels.csv:line 5",
    ]
    assert bad[0][1].startswith("id 7, hemorrhage (blank): hemorrhage must be 0 or 1")
    assert bad[2][1].startswith("id x, hemorrhage 1:")
    assert "np." not in " ".join(reason for _, reason in bad)


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("id, hemorrhage\n3,1,\n7,,\n12,2,\n130,0,\n", ["line 3", "line 4"]),  # trailing commas
        ("id, hemorrhage\n3,1\n\n7,\n\n12,2\n130,0\n", ["line 4", "line 6"]),  # blank lines
        ('\ufeff"id","hemorrhage"\n3,1\n7,\n12,2\n130,0\n', ["line 3", "line 4"]),  # BOM, quotes
    ],
)
def test_kaggle_labels_written_by_other_tools(kaggle_quirky: Path, text: str, lines) -> None:
    """labels.csv with trailing commas, blank lines, or a byte-order mark and quoted header (as
    spreadsheets write it) indexes its good rows and names each bad row by its true file line,
    once (not also as an image without a row)."""
    (kaggle_quirky / "labels.csv").write_text(text, encoding="utf-8")
    result = index_dataset(kaggle_quirky)
    assert sorted(Path(p).name for p in result.frame["path"]) == ["003.png", "130.png"]
    bad = [Path(p.path).name for p in result.problems if p.kind == "bad_label"]
    assert bad == [f"labels.csv:{line}" for line in lines]
    unlabelled = [Path(p.path).name for p in result.problems if p.kind == "missing_label"]
    assert "007.png" not in unlabelled and "012.png" not in unlabelled


@pytest.mark.parametrize(
    ("name", "header", "message"),
    [
        ("labels.csv", "id\n", r"labels.csv is here but its columns are \['id'\]: the Kaggle"),
        ("manifest.csv", "path,label\n", r"columns are \['path', 'label'\]: the manifest layout"),
    ],
)
def test_a_layout_file_with_wrong_columns_is_named(
    tmp_path: Path, name: str, header: str, message: str
) -> None:
    """A folder holding labels.csv or manifest.csv with the wrong columns gets an error about
    that file and its columns, not the generic list of every layout."""
    (tmp_path / name).write_text(header)
    with pytest.raises(DatasetError, match=message):
        index_dataset(tmp_path)


def test_kaggle_bad_header_is_refused_by_message(tmp_path: Path) -> None:
    """A labels.csv without the hemorrhage column is a DatasetError naming the columns."""
    from hemo.datasets import kaggle_head_ct

    (tmp_path / "labels.csv").write_text("id, label\n1,0\n")
    with pytest.raises(DatasetError, match=r"expected columns 'id, hemorrhage'"):
        kaggle_head_ct.index(tmp_path)


def test_cq500_sample_indexes_238_slices_negative_and_ordered(cq500_index: pd.DataFrame) -> None:
    """CQ500-CT-0: 238 slices, negative by majority, rows ordered by slice_z, one patient."""
    assert len(cq500_index) == 238
    assert set(cq500_index["source"]) == {"cq500"}
    assert (cq500_index["label_any"] == 0).all()
    assert (cq500_index[list(SUBTYPES)] == 0).all().all()
    assert cq500_index["slice_z"].notna().all()
    assert cq500_index["slice_z"].is_monotonic_increasing
    assert cq500_index["patient_id"].nunique() == 1
    assert cq500_index["series_uid"].nunique() == 1
    assert cq500_index["split"].nunique() == 1


def test_cq500_majority_vote_needs_two_of_three_readers(tmp_path: Path) -> None:
    """A finding is positive when at least two of the three readers marked it."""
    codes = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH")
    header = ["name", "Category"] + [f"R{r}:{c}" for r in (1, 2, 3) for c in codes]

    def row(name: str, marks: dict[int, set[str]]) -> str:
        values = [str(int(c in marks.get(r, set()))) for r in (1, 2, 3) for c in codes]
        return ",".join([name, "B1", *values])

    rows = [
        row("CQ500-CT-1", {1: {"ICH", "SDH"}, 2: {"ICH", "SDH"}, 3: {"SAH"}}),
        row("CQ500-CT-2", {1: {"ICH", "EDH"}}),
    ]
    (tmp_path / "reads.csv").write_text("\n".join([",".join(header), *rows]) + "\n")
    labels = majority_labels(tmp_path / "reads.csv")
    assert labels.loc["CQ500-CT-1"].to_dict() == {
        "label_any": 1,
        "intraparenchymal": 0,
        "intraventricular": 0,
        "subdural": 1,
        "epidural": 0,
        "subarachnoid": 0,
    }
    assert labels.loc["CQ500-CT-2"].sum() == 0


def test_cq500_scan_names_are_canonical() -> None:
    """Folder names in both CQ500 spellings map to the reads.csv name."""
    assert scan_name("CQ500-CT-12") == "CQ500-CT-12"
    assert scan_name("CQ500CT12 CQ500CT12") == "CQ500-CT-12"
    assert scan_name("CQ500-CT-0") == "CQ500-CT-0"
    assert scan_name("Unknown Study") is None


def test_rsna_layout_pivots_labels_and_reports_problems(rsna_tree: Path) -> None:
    """RSNA rows pivot to one per image; bad, unlabelled and missing files are reported."""
    assert detect_layout(rsna_tree) == "rsna"
    result = index_dataset(rsna_tree, workers=1)
    frame = result.frame.set_index(result.frame["path"].map(lambda p: Path(p).stem))
    assert sorted(frame.index) == ["ID_aa", "ID_bb", "ID_cc", "ID_dd"]
    assert frame.loc["ID_bb", "subdural"] == 1 and frame.loc["ID_bb", "label_any"] == 1
    assert frame.loc["ID_dd", ["epidural", "intraparenchymal"]].tolist() == [1, 1]
    assert frame.loc["ID_aa", list(SUBTYPES)].sum() == 0
    assert frame["study_uid"].notna().all() and frame["slice_z"].notna().all()
    kinds = {p.kind: p for p in result.problems}
    assert Path(kinds["unreadable"].path).name == "ID_bad.dcm"
    assert "DICM" in kinds["unreadable"].reason
    assert Path(kinds["missing_label"].path).name == "ID_nolabel.dcm"
    assert kinds["missing_image"].path.endswith("ID_noimage")


def test_phantom_indexes_with_subtypes_and_masks(phantom_dir: Path) -> None:
    """A phantom dataset is detected, has subtype labels, masks and patients."""
    assert detect_layout(phantom_dir) == "phantom"
    frame = build_index(phantom_dir, workers=1)
    assert len(frame) == PHANTOM_FIXTURE["n_studies"] * PHANTOM_FIXTURE["slices_per_study"]
    assert set(frame["source"]) == {"phantom"}
    assert frame[list(SUBTYPES)].notna().all().all()
    assert (frame[list(SUBTYPES)].sum() > 0).any()
    assert frame["mask_path"].map(lambda p: Path(p).is_file()).all()
    assert frame["patient_id"].nunique() == PHANTOM_FIXTURE["n_studies"]
    assert _leaks(frame) == []


def test_load_index_uses_an_existing_index_parquet(phantom_dir: Path) -> None:
    """load_index(folder) reads the folder's index.parquet rather than rebuilding."""
    assert (phantom_dir / INDEX_FILE).is_file()
    frame = load_index(phantom_dir)
    stored = pd.read_parquet(phantom_dir / INDEX_FILE)
    assert len(frame) == len(stored)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["path"])


def test_folders_layout_case_insensitive_with_dicom_and_junk(
    head_ct_dir: Path, cq500_dir: Path, tmp_path: Path
) -> None:
    """Class folders in any case index PNG and DICOM; other files are reported unsupported."""
    (tmp_path / "Hemorrhage").mkdir()
    (tmp_path / "NORMAL" / "nested").mkdir(parents=True)
    (tmp_path / "unrelated").mkdir()
    for image_id in (0, 1):
        shutil.copy(head_ct_dir / "head_ct" / f"{image_id:03d}.png", tmp_path / "Hemorrhage")
    shutil.copy(head_ct_dir / "head_ct" / "100.png", tmp_path / "NORMAL")
    shutil.copy(cq500_dir / "CT000001.dcm", tmp_path / "NORMAL" / "nested" / "slice")
    (tmp_path / "NORMAL" / "notes.txt").write_text("not an image")
    assert detect_layout(tmp_path) == "folders"
    result = index_dataset(tmp_path, workers=1)
    frame = result.frame
    assert len(frame) == 4
    assert int(frame["label_any"].sum()) == 2
    dicom_row = frame[frame["path"].str.endswith("slice")].iloc[0]
    assert dicom_row["label_any"] == 0 and pd.notna(dicom_row["study_uid"])
    assert [(p.kind, Path(p.path).name) for p in result.problems] == [("unsupported", "notes.txt")]


def test_folders_layout_reports_a_multiframe_file_and_indexes_the_rest(
    cq500_dir: Path, tmp_path: Path
) -> None:
    """A label row is one slice: an Enhanced CT file of several frames is reported by name and
    reason, and the single-frame slices beside it are indexed."""
    from dicom_factory import enhanced_ct, to_bytes

    (tmp_path / "normal").mkdir()
    for name in ("CT000001.dcm", "CT000002.dcm"):
        shutil.copy(cq500_dir / name, tmp_path / "normal" / name)
    frames = [cq500_dir / f"CT00010{k}.dcm" for k in range(3)]
    (tmp_path / "normal" / "enhanced.dcm").write_bytes(to_bytes(enhanced_ct(frames)))
    result = index_dataset(tmp_path, layout="folders", workers=1)
    assert sorted(Path(p).name for p in result.frame["path"]) == ["CT000001.dcm", "CT000002.dcm"]
    (problem,) = result.problems
    assert Path(problem.path).name == "enhanced.dcm" and problem.kind == "unreadable"
    assert "Number of Frames is 3: a dataset index holds single-frame slices" in problem.reason


def test_folder_class_names() -> None:
    """The documented class folder names map to 1/0, anything else to None."""
    assert [class_of(n) for n in ("hemorrhage", "Positive", "1", "YES")] == [1, 1, 1, 1]
    assert [class_of(n) for n in ("normal", "Negative", "0", "no")] == [0, 0, 0, 0]
    assert class_of("maybe") is None


def test_manifest_relative_paths_bad_rows_and_given_split(
    head_ct_dir: Path, tmp_path: Path
) -> None:
    """A manifest resolves relative paths, keeps a complete split, reports bad rows."""
    (tmp_path / "img").mkdir()
    for image_id in (0, 1, 100):
        shutil.copy(head_ct_dir / "head_ct" / f"{image_id:03d}.png", tmp_path / "img")
    (tmp_path / "manifest.csv").write_text(
        "path,label_any,patient_id,split\n"
        "img/000.png,1,p1,train\nimg/001.png,1,p1,train\nimg/100.png,0,p2,test\n"
        "img/404.png,0,p3,val\nimg/000.png,2,p1,train\n"
    )
    assert detect_layout(tmp_path) == "manifest"
    assert detect_layout(tmp_path / "manifest.csv") == "manifest"
    result = index_dataset(tmp_path / "manifest.csv")
    assert result.frame["split"].tolist() == ["train", "train", "test"]
    assert result.frame["patient_id"].tolist() == ["p1", "p1", "p2"]
    assert {p.kind for p in result.problems} == {"missing_image", "bad_label"}


def test_manifest_without_label_column_is_refused(tmp_path: Path) -> None:
    """A CSV lacking label_any is refused with the missing column named."""
    from hemo.datasets import manifest

    (tmp_path / "manifest.csv").write_text("path\na.png\n")
    with pytest.raises(DatasetError, match=r"missing columns \['label_any'\]"):
        manifest.index(tmp_path)


def test_unknown_layout_and_missing_folder_are_refused(tmp_path: Path, ct_small: Path) -> None:
    """An empty folder, a folder of unlabelled scans and a missing path give DatasetErrors that
    say what is wrong and what was expected."""
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(tmp_path))}: the folder is empty$"):
        detect_layout(tmp_path)
    (tmp_path / "CT000001.dcm").write_bytes(ct_small.read_bytes())
    with pytest.raises(DatasetError) as info:
        detect_layout(tmp_path)
    assert "unknown dataset layout: expected stage_2_train.csv" in str(info.value)
    assert str(info.value).endswith(
        "scans without labels (a series folder, say) are for predicting (the Predict page, hemo "
        "predict), not a dataset: a manifest.csv with path,label_any beside them makes one"
    )
    with pytest.raises(DatasetError, match="no such file or folder"):
        detect_layout(tmp_path / "absent")
    with pytest.raises(DatasetError, match="unknown layout 'nope'"):
        build_index(tmp_path, layout="nope")


def test_save_load_round_trip_relative_paths_and_moved_folder(
    kaggle_quirky: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Saved paths are relative; loading after moving the folder gives the moved files."""
    frame = build_index(kaggle_quirky)
    before = frame.copy(deep=True)
    save_index(frame, kaggle_quirky / INDEX_FILE)
    pd.testing.assert_frame_equal(frame, before)
    raw = pd.read_parquet(kaggle_quirky / INDEX_FILE)
    assert raw["path"].str.startswith("head_ct/").all()
    moved = tmp_path_factory.mktemp("moved") / "dataset"
    shutil.copytree(kaggle_quirky, moved)
    loaded = load_index(moved / INDEX_FILE)
    assert loaded["path"].map(lambda p: Path(p).parent == (moved / "head_ct").resolve()).all()
    pd.testing.assert_frame_equal(
        loaded.drop(columns="path"), frame.drop(columns="path"), check_like=True
    )
    assert loaded.attrs["hemo"]["layout"] == "kaggle_head_ct"


def test_load_index_refuses_a_foreign_parquet(tmp_path: Path) -> None:
    """A Parquet file without the index columns is refused with the missing columns."""
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(DatasetError, match=r"not a hemo index: missing columns \['path'"):
        load_index(tmp_path / "other.parquet")


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("label_any", [1, None, 0], r"label_any must be 0 or 1 in every row: 1 row\(s\) are not "),
        ("label_any", ["yes", "no", "yes"], r"3 row\(s\) are not \(first: row 0, 'yes'\)"),
        ("label_any", [1, 2, 0], r"are not \(first: row 1, 2\)"),
        ("path", ["a.png", None, "c.png"], r"path must be a file in every row"),
    ],
)
def test_load_index_refuses_unknown_labels_and_paths_naming_the_file(
    tmp_path: Path, column: str, values: list, message: str
) -> None:
    """An edited index with a missing or non-binary label (or no path) is one error naming
    the file, the column and the first bad row, not a pandas traceback."""
    from hemo.datasets.schema import INDEX_COLUMNS

    frame = pd.DataFrame({c: [None] * 3 for c in INDEX_COLUMNS})
    frame["path"], frame["label_any"], frame["split"] = (
        ["a.png", "b.png", "c.png"],
        [1, 0, 1],
        "test",
    )
    frame[column] = values
    frame.to_parquet(tmp_path / "index.parquet")
    with pytest.raises(DatasetError, match=message) as caught:
        load_index(tmp_path / "index.parquet")
    assert "index.parquet" in str(caught.value)


def test_quality_report_duplicates_missing_files_and_unreadable(
    head_ct_dir: Path, rsna_tree: Path, tmp_path: Path
) -> None:
    """Duplicates by content (with label conflict), gone files and unreadable files are listed."""
    root = tmp_path / "classes"
    (root / "hemorrhage").mkdir(parents=True)
    (root / "normal").mkdir()
    shutil.copy(head_ct_dir / "head_ct" / "000.png", root / "hemorrhage" / "a.png")
    shutil.copy(head_ct_dir / "head_ct" / "000.png", root / "normal" / "b.png")
    shutil.copy(head_ct_dir / "head_ct" / "100.png", root / "normal" / "c.png")
    report = quality_report(root)
    assert list(report.columns) == ["kind", "path", "reason"]
    duplicate = report[report["kind"] == "duplicate"]
    assert len(duplicate) == 1 and "with a different label" in duplicate["reason"].iloc[0]

    save_index(build_index(root), root / INDEX_FILE)
    (root / "normal" / "c.png").unlink()
    gone = quality_report(root / INDEX_FILE)
    assert gone.loc[gone["kind"] == "missing_file", "path"].map(
        lambda p: Path(p).name
    ).tolist() == ["c.png"]
    rsna_report = quality_report(rsna_tree)
    assert set(rsna_report["kind"]) >= {"unreadable", "missing_label", "missing_image"}


def test_quality_report_lists_lookalikes_once_with_their_conflicts(
    head_ct_dir: Path, tmp_path: Path
) -> None:
    """Real copies of one picture at other sizes are listed as look-alikes (a label conflict
    named); a byte-identical copy stays a duplicate only; another head is not listed."""
    root = tmp_path / "classes"
    (root / "hemorrhage").mkdir(parents=True)
    (root / "normal").mkdir()
    for image_id in ("005", "022", "100"):
        shutil.copy(head_ct_dir / "head_ct" / f"{image_id}.png", root / "hemorrhage")
    shutil.copy(head_ct_dir / "head_ct" / "058.png", root / "normal")  # same picture as 005
    shutil.copy(head_ct_dir / "head_ct" / "005.png", root / "hemorrhage" / "005_copy.png")
    report = quality_report(root)
    found = report[report["kind"] == "lookalike"]
    named = sorted(Path(p).name for p in found["path"])
    assert named == ["022.png", "058.png"]  # each once, against 005 (listed first)
    assert found["reason"].str.contains(r"looks like \S*005.png \(correlation 0.99").all()
    assert found["reason"].str.contains("with a different label").tolist() == [False, True]
    duplicate = report[report["kind"] == "duplicate"]
    assert [Path(p).name for p in duplicate["path"]] == ["005_copy.png"]


def test_split_keeps_lookalikes_together(
    head_ct_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    """Every Kaggle picture that appears at several sizes lands in one split, with any seed;
    above the look-alike limit the split says it could not check."""
    import hemo.datasets.index as index_module

    for seed in (0, 1, 2):
        frame = build_index(head_ct_dir, seed=seed)
        frame.index = frame["path"].map(lambda p: Path(p).stem)
        for same in (("005", "022", "058"), ("004", "057"), ("009", "065"), ("011", "061")):
            assert frame.loc[list(same), "split"].nunique() == 1, (seed, same)
    images = tmp_path / "head_ct"
    images.mkdir()
    for image_id in ("004", "057", "100"):
        shutil.copy(head_ct_dir / "head_ct" / f"{image_id}.png", images)
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n4,1\n57,1\n100,0\n")
    monkeypatch.setattr(index_module, "LOOKALIKE_MAX_IMAGES", 2)
    build_index(tmp_path)
    assert "too many for the look-alike check (at most 2)" in caplog.text


def test_split_is_grouped_stratified_and_seeded(head_ct_dir: Path, phantom_dir: Path) -> None:
    """No group straddles splits; every split holds both labels; same seed, same split."""
    kaggle = build_index(head_ct_dir, seed=3)
    assert _leaks(kaggle) == []
    summary = summarize(kaggle)["splits"]
    for split in ("train", "val", "test"):
        assert 0 < summary[split]["positive"] < summary[split]["total"]
    assert build_index(head_ct_dir, seed=3)["split"].tolist() == kaggle["split"].tolist()
    assert build_index(head_ct_dir, seed=4)["split"].tolist() != kaggle["split"].tolist()
    phantom = build_index(phantom_dir, seed=1, workers=1)
    assert _leaks(phantom) == []
    assert phantom.groupby("patient_id")["split"].nunique().max() == 1


def test_summary_counts_labels_and_splits(head_ct_dir: Path) -> None:
    """summarize gives per-label and per-split counts that add up."""
    summary = summarize(build_index(head_ct_dir))
    assert summary["total"] == 140
    assert summary["labels"]["label_any"] == {"positive": 70, "negative": 70, "unknown": 0}
    assert summary["labels"]["subdural"]["unknown"] == 140
    assert sum(s["total"] for s in summary["splits"].values()) == 140


def test_data_modules_import_neither_tensorflow_nor_streamlit() -> None:
    """hemo.datasets, hemo.convert and hemo.kaggle load without TensorFlow or Streamlit."""
    code = (
        "import sys, hemo.datasets, hemo.convert, hemo.kaggle, hemo.commands.index, "
        "hemo.commands.convert, hemo.commands.download\n"
        "bad = [m for m in ('tensorflow', 'keras', 'streamlit', 'kaggle') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
