"""``hemo convert``: windowed PNGs, resume, shards, bad files, no PHI, atomic writes, CLI."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from hemo.cli import EXIT_ERROR, EXIT_PARTIAL, main
from hemo.convert import SETTINGS_FILE, Shard, convert, output_name, plan_outputs, render
from hemo.errors import ConfigError, DatasetError
from hemo.windowing import resolve_windows

#: Real CQ500 slices copied into each source tree (a handful keeps the tests fast).
N_SLICES = 5
PHI_VALUES = ("SENTINEL^PATIENT", "PID-778899", "19420101", "ST-ELSEWHERE-HOSPITAL", "ACC-556677")
SIZE = 64


def _png_chunk_types(data: bytes) -> list[bytes]:
    """Chunk types of a PNG byte string, in order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        types.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return types


@pytest.fixture()
def src(cq500_dir: Path, tmp_path: Path) -> Path:
    """A source tree: real slices at two depths, a corrupt .dcm and a CSV to ignore."""
    root = tmp_path / "src"
    (root / "series" / "deeper").mkdir(parents=True)
    for i in range(1, N_SLICES + 1):
        target = root / "series" / ("deeper" if i % 2 else "") / f"CT{i:06d}.dcm"
        shutil.copy(cq500_dir / f"CT{i:06d}.dcm", target)
    (root / "series" / "corrupt.dcm").write_bytes(b"garbage" * 100)
    (root / "reads.csv").write_text("name\n")
    return root


def _pngs(out: Path) -> list[Path]:
    return sorted(out.rglob("*.png"))


def test_three_windows_give_rgb_pngs_at_size_and_errors_are_reported(
    src: Path, tmp_path: Path
) -> None:
    """rsna3 gives SIZE x SIZE RGB PNGs mirroring the tree; the corrupt file is reported."""
    out = tmp_path / "out"
    report = convert(src, out, window="rsna3", size=SIZE, workers=1)
    assert report.count("converted") == N_SLICES
    assert [Path(f.source).name for f in report.failures] == ["corrupt.dcm"]
    assert "not a DICOM file" in report.failures[0].error
    pngs = _pngs(out)
    assert len(pngs) == N_SLICES
    assert (out / "series" / "deeper" / "CT000001.png").is_file()
    assert (out / "series" / "CT000002.png").is_file()
    with Image.open(pngs[0]) as image:
        assert image.mode == "RGB" and image.size == (SIZE, SIZE)
        channels = np.asarray(image)
    assert not np.array_equal(channels[..., 0], channels[..., 2])
    assert list(out.rglob("*.tmp")) == []


def test_one_window_gives_gray_png_matching_the_window_maths(
    cq500_dir: Path, tmp_path: Path
) -> None:
    """A single C/W window gives a gray PNG equal to round(window(hu) * 255) at native size."""
    from hemo.dicom import read_dicom
    from hemo.windowing import window

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(cq500_dir / "CT000100.dcm", one / "CT000100.dcm")
    convert(one, tmp_path / "out", window="40/80", size=0, workers=1)
    with Image.open(tmp_path / "out" / "CT000100.png") as image:
        assert image.mode == "L"
        pixels = np.asarray(image)
    expected = np.rint(window(read_dicom(one / "CT000100.dcm").hu, 40, 80) * 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)


def test_rerun_skips_done_outputs_and_redoes_deleted_ones(src: Path, tmp_path: Path) -> None:
    """A second run skips every output; a deleted output is converted again, others untouched."""
    out = tmp_path / "out"
    convert(src, out, size=SIZE, workers=1)
    kept = out / "series" / "CT000002.png"
    stamp = kept.stat().st_mtime_ns
    again = convert(src, out, size=SIZE, workers=1)
    assert again.count("skipped") == N_SLICES and again.count("converted") == 0
    (out / "series" / "deeper" / "CT000003.png").unlink()
    third = convert(src, out, size=SIZE, workers=1)
    redone = [o for o in third.outcomes if o.status == "converted"]
    assert [Path(o.output).name for o in redone] == ["CT000003.png"]
    assert kept.stat().st_mtime_ns == stamp


def test_stale_temp_from_a_killed_run_is_replaced(src: Path, tmp_path: Path) -> None:
    """A half-written temp left by a kill never counts as output and is gone after a rerun."""
    out = tmp_path / "out"
    (out / "series").mkdir(parents=True)
    (out / "series" / "CT000002.png.tmp").write_bytes(b"\x89PNG half")
    report = convert(src, out, size=SIZE, workers=1)
    assert report.count("converted") == N_SLICES
    assert list(out.rglob("*.tmp")) == []
    with Image.open(out / "series" / "CT000002.png") as image:
        assert image.size == (SIZE, SIZE)


def test_shards_partition_the_inputs_exactly(src: Path, tmp_path: Path) -> None:
    """Shards 0/3, 1/3, 2/3 are disjoint and together cover every input once."""
    seen: list[str] = []
    for index in range(3):
        report = convert(src, tmp_path / "out", size=SIZE, workers=1, shard=Shard(index, 3))
        assert report.count("skipped") == 0
        seen.extend(o.source for o in report.outcomes)
    assert len(seen) == len(set(seen)) == N_SLICES + 1
    assert len(_pngs(tmp_path / "out")) == N_SLICES


def test_shard_parse_and_select() -> None:
    """i/n parses 0-based; out-of-range and malformed shards are refused by message."""
    assert Shard.parse("1/3").select(list(range(7))) == [1, 4]
    with pytest.raises(ConfigError, match=r"0 <= i < n \(0-based\), got 3/3"):
        Shard.parse("3/3")
    with pytest.raises(ConfigError, match="shard must be i/n, e.g. 0/4, got 'half'"):
        Shard.parse("half")


def test_no_phi_in_names_or_bytes_and_no_png_text_chunks(ct_small: Path, tmp_path: Path) -> None:
    """A DICOM full of PHI converts to a PNG holding none of it, with no metadata chunks."""
    ds = pydicom.dcmread(ct_small)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PHI_VALUES[:3]
    ds.InstitutionName, ds.AccessionNumber = PHI_VALUES[3:]
    source = tmp_path / "src"
    source.mkdir()
    ds.save_as(source / "scan.dcm")
    convert(source, tmp_path / "out", window="rsna3", size=SIZE, workers=1)
    outputs = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert [p.name for p in outputs] == [SETTINGS_FILE, "scan.png"]
    record, data = (p.read_bytes() for p in outputs)
    for value in PHI_VALUES:
        assert value.encode() not in data and value.encode() not in record
    assert not {b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"tIME"} & set(_png_chunk_types(data))


def test_index_as_source_and_process_pool(cq500_dir: Path, tmp_path: Path) -> None:
    """SRC may be an index.parquet; enough inputs go through the process pool in order."""
    from hemo.datasets import build_index, save_index

    n_files = 20
    root = tmp_path / "folder" / "positive"
    root.mkdir(parents=True)
    for i in range(1, n_files + 1):
        shutil.copy(cq500_dir / f"CT{i:06d}.dcm", root / f"CT{i:06d}.dcm")
    save_index(build_index(root.parent, workers=1), tmp_path / "folder" / "index.parquet")
    report = convert(tmp_path / "folder" / "index.parquet", tmp_path / "out", size=32, workers=2)
    assert report.count("converted") == n_files
    names = [Path(o.output).name for o in report.outcomes]
    assert names == sorted(names)
    assert len(_pngs(tmp_path / "out" / "positive")) == n_files


def test_options_are_checked_before_any_work(src: Path, tmp_path: Path) -> None:
    """Two windows, a bad size and an empty source are refused by message."""
    with pytest.raises(ConfigError, match=r"1 window \(gray\) or 3 windows \(RGB\), got 2"):
        convert(src, tmp_path / "out", window=["brain", "bone"])
    with pytest.raises(ConfigError, match=r"size must be 0 \(native\) or 1..4096 px, got -1"):
        convert(src, tmp_path / "out", size=-1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no DICOM file found"):
        convert(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_render_does_not_mutate_and_names_map() -> None:
    """render leaves its input untouched; output names replace .dcm or append .png."""
    hu = np.linspace(-100, 200, 32 * 48, dtype=np.float32).reshape(32, 48)
    before = hu.copy()
    pixels = render(hu, resolve_windows("rsna3"), 16)
    np.testing.assert_array_equal(hu, before)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    assert output_name(Path("a/CT1.DCM")) == Path("a/CT1.png")
    assert output_name(Path("1.2.840.99")) == Path("1.2.840.99.png")


def test_cli_json_shape_and_exit_codes(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json carries counts and per-file errors; exit 1 with a bad file, 2 on a bad shard."""
    args = ["convert", str(src), str(tmp_path / "out"), "--size", "32", "--workers", "1"]
    assert main([*args, "--json"]) == EXIT_PARTIAL
    payload = json.loads(capsys.readouterr().out)
    assert payload["total"] == N_SLICES + 1
    assert (payload["converted"], payload["skipped"], payload["failed"]) == (N_SLICES, 0, 1)
    assert [Path(e["path"]).name for e in payload["errors"]] == ["corrupt.dcm"]
    assert payload["windows"] == ["brain"] and payload["shard"] == "0/1"
    assert payload["head_only"] is False
    assert main([*args, "--shard", "2/2"]) == EXIT_ERROR
    assert "hemo: error: shard must be i/n" in capsys.readouterr().err


def test_volumes_give_one_png_per_slice_and_a_frames_list(cq500_dir: Path, tmp_path: Path) -> None:
    """An Enhanced CT and a .nii.gz of the same real slices: per-slice PNGs equal to the
    single-frame slices' PNGs, a frames list written last; a rerun skips both; a file stopped
    before its list is converted again."""
    import gzip

    import nibabel
    from dicom_factory import enhanced_ct, nifti_volume, to_bytes

    from hemo.dicom import read_dicom

    by_z = sorted(cq500_dir.glob("*.dcm"), key=lambda p: read_dicom(p).slice_z_mm)[120:123]
    singles = [read_dicom(p) for p in by_z]
    src = tmp_path / "src"
    src.mkdir()
    (src / "enhanced.dcm").write_bytes(to_bytes(enhanced_ct(by_z)))
    data, affine = nifti_volume(singles)
    volume = gzip.compress(nibabel.Nifti1Image(data, affine).to_bytes(), mtime=0)
    (src / "head.nii.gz").write_bytes(volume)
    out = tmp_path / "out"
    report = convert(src, out, window="brain", size=64, workers=1)
    assert report.count("converted") == 2 and not report.failures
    windows = resolve_windows("brain")
    for stem in ("enhanced", "head"):
        listed = json.loads((out / f"{stem}_frames.json").read_text())["frames"]
        assert [f["frame"] for f in listed] == [1, 2, 3]
        assert [f.get("nifti_slice_index") for f in listed] == (
            [0, 1, 2] if stem == "head" else [None] * 3
        )
        assert [f["slice_z_mm"] for f in listed] == pytest.approx(
            [s.slice_z_mm for s in singles], abs=1e-3
        )
        for entry, single in zip(listed, singles, strict=True):
            got = np.asarray(Image.open(out / entry["png"]))
            np.testing.assert_array_equal(got, render(np.round(single.hu), windows, 64))
    again = convert(src, out, window="brain", size=64, workers=1)
    assert again.count("skipped") == 2
    (out / "head_frames.json").unlink()  # as if stopped before the list was written
    third = convert(src, out, window="brain", size=64, workers=1)
    assert third.count("converted") == 1 and third.count("skipped") == 1
    assert output_name(Path("a/head.nii.gz")) == Path("a/head.png")


@pytest.fixture()
def clashing(cq500_dir: Path, tmp_path: Path) -> Path:
    """A folder of real slices whose usual PNG names clash in pairs, plus one that does not."""
    import gzip

    import nibabel
    from dicom_factory import nifti_volume

    from hemo.dicom import read_dicom

    root = tmp_path / "clashing"
    (root / "sub").mkdir(parents=True)
    names = ("sub/a.dcm", "sub/a", "b.dcm", "b.DCM", "x.dcm", "c.dcm")
    for i, name in enumerate(names, start=1):
        shutil.copy(cq500_dir / f"CT{i:06d}.dcm", root / name)
    by_z = sorted(cq500_dir.glob("*.dcm"), key=lambda p: read_dicom(p).slice_z_mm)[120:122]
    data, affine = nifti_volume([read_dicom(p) for p in by_z])
    volume = nibabel.Nifti1Image(data, affine).to_bytes()
    (root / "x.nii.gz").write_bytes(gzip.compress(volume, mtime=0))
    return root


#: Outputs of the ``clashing`` inputs: whole name + .png where the usual name is shared.
CLASH_OUTPUTS = {
    "sub/a.dcm": "sub/a.dcm.png",
    "sub/a": "sub/a.png",
    "b.dcm": "b.dcm.png",
    "b.DCM": "b.DCM.png",
    "x.dcm": "x.dcm.png",
    "x.nii.gz": "x.nii.gz_frames.json",
    "c.dcm": "c.png",
}


def _outputs(report, src: Path, out: Path) -> dict[str, str]:
    """{input relative to src: output relative to out} of a report's outcomes."""
    return {
        Path(o.source).relative_to(src).as_posix(): Path(o.output).relative_to(out).as_posix()
        for o in report.outcomes
    }


def test_inputs_sharing_a_png_name_each_get_their_own_output(
    clashing: Path, tmp_path: Path
) -> None:
    """a.dcm/a, b.dcm/b.DCM and x.dcm/x.nii.gz each keep their whole name; c.dcm stays c.png."""
    out = tmp_path / "out"
    report = convert(clashing, out, size=SIZE, workers=1)
    assert report.count("converted") == len(CLASH_OUTPUTS) and not report.failures
    assert _outputs(report, clashing, out) == CLASH_OUTPUTS
    for output in CLASH_OUTPUTS.values():
        assert (out / output).is_file()
    frames = json.loads((out / "x.nii.gz_frames.json").read_text())["frames"]
    assert [f["png"] for f in frames] == ["x.nii.gz_frame0001.png", "x.nii.gz_frame0002.png"]
    pngs = [(out / v).read_bytes() for v in CLASH_OUTPUTS.values() if v.endswith(".png")]
    assert len(set(pngs)) == len(pngs)  # six different slices, none overwritten
    assert len(_pngs(out)) == len(pngs) + len(frames)
    again = convert(clashing, out, size=SIZE, workers=1)
    assert again.count("skipped") == len(CLASH_OUTPUTS)


def test_shards_pick_the_names_a_single_job_picks(clashing: Path, tmp_path: Path) -> None:
    """Shards run apart (0/3, 1/3, 2/3) give every input the output one job gives it."""
    whole = convert(clashing, tmp_path / "one", size=SIZE, workers=1)
    sharded: dict[str, str] = {}
    for index in range(3):
        report = convert(clashing, tmp_path / "many", size=SIZE, workers=1, shard=Shard(index, 3))
        sharded.update(_outputs(report, clashing, tmp_path / "many"))
    assert sharded == _outputs(whole, clashing, tmp_path / "one") == CLASH_OUTPUTS
    names = sorted(p.relative_to(tmp_path / "many") for p in (tmp_path / "many").rglob("*"))
    assert names == sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*"))


def test_plan_outputs_renames_only_clashes_and_reports_what_still_clashes() -> None:
    """A PNG overlapping a volume's slice PNGs clashes too; names still shared are reported."""
    planned = plan_outputs(
        [
            (Path("/s/head.nii.gz"), Path("head.nii.gz")),
            (Path("/s/head_frame0001.dcm"), Path("head_frame0001.dcm")),
            (Path("/s/CT1.dcm"), Path("CT1.dcm")),
            (Path("/s/d1/x.dcm"), Path("x.dcm")),
            (Path("/s/d2/x.dcm"), Path("x.dcm")),
        ]
    )
    got = {p.source.as_posix(): (p.output.as_posix(), p.clashes) for p in planned}
    assert got == {
        "/s/CT1.dcm": ("CT1.png", ()),
        "/s/head.nii.gz": ("head.nii.gz.png", ()),
        "/s/head_frame0001.dcm": ("head_frame0001.dcm.png", ()),
        "/s/d1/x.dcm": ("x.dcm.png", (Path("/s/d2/x.dcm"),)),
        "/s/d2/x.dcm": ("x.dcm.png", (Path("/s/d1/x.dcm"),)),
    }
    assert [p.output.as_posix() for p in planned] == sorted(v[0] for v in got.values())


def test_index_rows_still_sharing_a_name_fail_naming_each_other(
    cq500_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two index rows outside the index's folder with one file name: both fail, exit 1."""
    from hemo.datasets import build_index, save_index

    root = tmp_path / "folder"
    for i, label in enumerate(("positive", "negative"), start=1):
        (root / label).mkdir(parents=True)
        shutil.copy(cq500_dir / f"CT{i:06d}.dcm", root / label / "x.dcm")
    index = tmp_path / "folder" / "lists" / "index.parquet"
    save_index(build_index(root, workers=1), index)
    out = tmp_path / "out"
    argv = ["convert", str(index), str(out), "--size", "32", "--workers", "1", "--json"]
    assert main(argv) == EXIT_PARTIAL
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert len(errors) == 2 and not _pngs(out)
    for error, other in zip(errors, reversed(errors), strict=True):
        assert error["error"] == (
            f"its output {out / 'x.dcm.png'} would also be written from {other['path']}; "
            "rename one of them"
        )


def _tree(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under out with its bytes and mtime."""
    return {
        p.relative_to(out).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in out.rglob("*")
        if p.is_file()
    }


def test_rerun_with_other_settings_is_refused_before_writing(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Other window or size into a recorded OUT: exit 2, one line naming both, nothing written."""
    out = tmp_path / "out"
    args = ["convert", str(src), str(out), "--workers", "1"]
    assert main(args) == EXIT_PARTIAL  # the corrupt .dcm
    capsys.readouterr()
    assert json.loads((out / SETTINGS_FILE).read_text()) == {
        "windows": [{"name": "brain", "center_hu": 40.0, "width_hu": 80.0}],
        "size": 256,
        "head_only": False,
    }
    before = _tree(out)
    (out / "series" / "CT000002.png").unlink()  # a rerun would convert it
    del before["series/CT000002.png"]
    for other, wanted in (
        (["--window", "bone", "--size", "32"], "window bone, size 32"),
        (["--window", "rsna3"], "window rsna3, size 256"),
        (["--window", "41/80"], "window 41/80, size 256"),
        (["--head-only"], "window brain, size 256, head only"),
    ):
        assert main([*args, *other]) == EXIT_ERROR
        err = capsys.readouterr().err
        assert err == (
            f"hemo: error: {out}: converted with window brain, size 256 (see {SETTINGS_FILE}), "
            f"not {wanted}; rerun with those settings or another OUT\n"
        )
        assert _tree(out) == before


def test_same_settings_resume_and_shards_share_one_record(src: Path, tmp_path: Path) -> None:
    """Equal windows (brain or 40/80) resume; a shard finding an equal record goes on."""
    out = tmp_path / "out"
    first = convert(src, out, window="brain", size=SIZE, workers=1, shard=Shard(0, 2))
    record = (out / SETTINGS_FILE).read_bytes()
    second = convert(src, out, window="40/80", size=SIZE, workers=1, shard=Shard(1, 2))
    assert first.count("converted") + second.count("converted") == N_SLICES
    assert (out / SETTINGS_FILE).read_bytes() == record
    again = convert(src, out, window="brain", size=SIZE, workers=1)
    assert again.count("skipped") == N_SLICES and again.count("converted") == 0
    assert not list(out.glob(f"{SETTINGS_FILE}*.tmp"))


def test_out_without_record_resumes_and_gets_one(
    src: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An OUT from before records resumes with a warning and is recorded from then on."""
    out = tmp_path / "out"
    convert(src, out, size=SIZE, workers=1)
    (out / SETTINGS_FILE).unlink()
    with caplog.at_level("WARNING", logger="hemo.convert"):
        again = convert(src, out, size=SIZE, workers=1)
    assert again.count("skipped") == N_SLICES
    assert f"no {SETTINGS_FILE} (converted by an older hemo)" in caplog.text
    with pytest.raises(ConfigError, match=f"converted with window brain, size {SIZE} "):
        convert(src, out, size=SIZE + 1, workers=1)


def test_record_written_without_hard_links_and_unreadable_record_refused(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without hard links the record is renamed into place; a garbled record is refused."""
    import hemo.convert

    def no_link(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(hemo.convert.os, "link", no_link)
    out = tmp_path / "out"
    convert(src, out, size=SIZE, workers=1)
    assert json.loads((out / SETTINGS_FILE).read_text())["size"] == SIZE
    (out / SETTINGS_FILE).write_text("{")
    with pytest.raises(ConfigError, match=r"not a hemo convert settings record \("):
        convert(src, out, size=SIZE, workers=1)


def test_render_keeps_a_non_square_slice_in_proportion() -> None:
    """A 40 x 80 slice of brain-window tissue becomes a 64 x 64 PNG with the tissue in the
    middle 32 rows and air above and below (it was stretched to fill the square); square
    slices are unchanged by the padding."""
    from hemo.convert import render
    from hemo.windowing import PRESETS

    hu = np.full((40, 80), 40.0, dtype=np.float32)  # the brain window's centre: grey 128
    out = render(hu, [PRESETS["brain"]], 64)
    assert out.shape == (64, 64)
    assert (out[:15] == 0).all() and (out[-15:] == 0).all()  # air, padded
    assert (out[17:47] == 128).all()
    square = np.random.default_rng(0).normal(40, 30, (64, 64)).astype(np.float32)
    np.testing.assert_array_equal(
        render(square, [PRESETS["brain"]], 64),
        np.rint(np.clip((square - 0) / 80, 0, 1) * 255).astype(np.uint8),
    )


def test_head_only_pngs_leave_out_the_scanner_holder(cq500_dir: Path, tmp_path: Path) -> None:
    """--head-only on a real CQ500 slice: the PNG is the plain conversion inside the head's
    outline and black outside it (the holder's arcs beside the head were bright); the record
    says so, and a record written before the setting existed reads as off."""
    from hemo.dicom import read_dicom
    from hemo.preprocess import head_only

    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(cq500_dir / "CT000121.dcm", source)
    plain = convert(source, tmp_path / "plain", size=0, workers=1)
    cleaned = convert(source, tmp_path / "head", size=0, workers=1, head_only=True)
    assert cleaned.head_only is True and cleaned.count("converted") == 1 == plain.count("converted")
    a = np.asarray(Image.open(tmp_path / "plain" / "CT000121.png"))
    b = np.asarray(Image.open(tmp_path / "head" / "CT000121.png"))
    hu = read_dicom(source / "CT000121.dcm").hu
    head = head_only(hu) > -1000
    np.testing.assert_array_equal(b[head], a[head])
    assert not b[~head].any() and a[~head].max() == 255  # the holder: white in the brain window
    assert json.loads((tmp_path / "head" / SETTINGS_FILE).read_text())["head_only"] is True
    record = tmp_path / "plain" / SETTINGS_FILE
    old = json.loads(record.read_text())
    del old["head_only"]
    record.write_text(json.dumps(old))
    assert convert(source, tmp_path / "plain", size=0, workers=1).count("skipped") == 1


def test_an_index_of_png_images_is_refused_in_one_line(head_ct_dir: Path, tmp_path: Path) -> None:
    """An index of the Kaggle PNGs given to convert: one error naming the index, a file and
    what to do (every row used to fail with "not a DICOM file"); nothing is written."""
    from hemo.datasets import index_dataset, save_index

    index = tmp_path / "kaggle.parquet"
    save_index(index_dataset(head_ct_dir).frame.head(20), index)
    with pytest.raises(DatasetError, match=r"this index lists PNG images \(.*000\.png"):
        convert(index, tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()
