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
from hemo.convert import Shard, convert, output_name, render
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
    outputs = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert [p.name for p in outputs] == ["scan.png"]
    data = outputs[0].read_bytes()
    for value in PHI_VALUES:
        assert value.encode() not in data
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
