"""hemo.io: dispatch by bytes, folders, safe zips, and batches that survive bad files."""

from __future__ import annotations

import io
import tempfile
import zipfile
import zlib

import cv2
import numpy as np
import pytest
from dicom_factory import ct_bytes

from hemo import config
from hemo.dicom import CTSlice
from hemo.errors import DicomError, InputError, LimitError, SeriesError
from hemo.images import Image2D
from hemo.io import folder_upload, iter_scans, read_scan

PNG = cv2.imencode(".png", np.full((32, 32), 200, dtype=np.uint8))[1].tobytes()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_read_scan_dispatches_on_bytes(tmp_path):
    """A DICOM without extension and a PNG named .dcm go to the right reader."""
    (tmp_path / "slice").write_bytes(ct_bytes())
    (tmp_path / "image.dcm").write_bytes(PNG)
    assert isinstance(read_scan(tmp_path / "slice"), CTSlice)
    assert isinstance(read_scan(tmp_path / "image.dcm"), Image2D)
    assert isinstance(read_scan(io.BytesIO(ct_bytes(preamble=False))), CTSlice)


def test_read_scan_refuses_unknown_and_zip():
    """Unknown bytes and archives are refused with their reason."""
    with pytest.raises(InputError, match=r"u\.bin: not a DICOM, PNG, JPEG, TIFF or NIfTI file"):
        read_scan(b"MZ\x90\x00 an executable" * 8, name="u.bin")
    with pytest.raises(InputError, match="is a zip archive, not one scan: read it with iter_scans"):
        read_scan(_zip({"a.png": PNG}), name="a.zip")


def test_zip_traversal_refused_good_members_read():
    """A ../ member is refused, hidden and non-scan members skipped, the rest read, in order."""
    data = _zip(
        {
            "b/slice.dcm": ct_bytes(),
            "../evil.dcm": ct_bytes(),
            "/abs.png": PNG,
            "a.png": PNG,
            "notes.txt": b"hello",
            "DICOMDIR": b"x" * 200,
            ".hidden.png": PNG,
            "__MACOSX/._a.png": PNG,
            "broken.dcm": b"not dicom at all" * 10,
            "inner.zip": _zip({"x.png": PNG}),
        }
    )
    results = {r.name: r for r in iter_scans([("upload.zip", data)])}
    assert sorted(results) == [
        "upload.zip/../evil.dcm",
        "upload.zip//abs.png",
        "upload.zip/a.png",
        "upload.zip/b/slice.dcm",
        "upload.zip/broken.dcm",
        "upload.zip/inner.zip",
    ]
    assert isinstance(results["upload.zip/a.png"].scan, Image2D)
    assert isinstance(results["upload.zip/b/slice.dcm"].scan, CTSlice)
    evil = results["upload.zip/../evil.dcm"].error
    assert isinstance(
        evil, SeriesError
    ) and "leaves the archive (absolute or '..'): refused" in str(evil)
    assert isinstance(results["upload.zip//abs.png"].error, SeriesError)
    assert isinstance(results["upload.zip/broken.dcm"].error, InputError)
    assert "nested zip archive: not expanded" in str(results["upload.zip/inner.zip"].error)


def corrupt_first_member(data: bytes) -> bytes:
    """``data`` (a deflated zip) with one bit of its first member's compressed stream flipped:
    an invalid deflate block that zipfile reports as ``zlib.error``, not ``BadZipFile``."""
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    local_header_bytes = 30  # PKWARE APPNOTE 4.3.7: the fixed part of a local file header
    at = info.header_offset + local_header_bytes + len(info.filename.encode()) + len(info.extra)
    damaged = bytearray(data)
    damaged[at] ^= 0b10  # the block type bits of the first deflate block: 11, reserved
    return bytes(damaged)


def test_zip_member_that_cannot_be_extracted_is_reported_and_the_rest_read():
    """A member whose compressed data is corrupt is an error result; its neighbours are read."""
    data = corrupt_first_member(_zip({"a.dcm": ct_bytes(), "b.png": PNG}))
    with pytest.raises(zlib.error):  # what zipfile raises for it: not a BadZipFile
        zipfile.ZipFile(io.BytesIO(data)).read("a.dcm")
    results = {r.name: r for r in iter_scans([("upload.zip", data)])}
    assert sorted(results) == ["upload.zip/a.dcm", "upload.zip/b.png"]
    error = results["upload.zip/a.dcm"].error
    assert isinstance(error, SeriesError)
    assert str(error).startswith("upload.zip/a.dcm: cannot extract (Error -3 while decompressing")
    assert isinstance(results["upload.zip/b.png"].scan, Image2D)


def test_zip_bomb_refused():
    """An archive that expands beyond MAX_ZIP_RATIO is refused whole."""
    results = list(iter_scans([("bomb.zip", _zip({"zeros.dcm": bytes(8 * 1024 * 1024)}))]))
    assert len(results) == 1 and isinstance(results[0].error, LimitError)
    assert "more than the limit of 200 (config.MAX_ZIP_RATIO)" in str(results[0].error)


def test_zip_member_limit(monkeypatch):
    """More members than MAX_ZIP_MEMBERS refuses the archive."""
    monkeypatch.setattr(config, "MAX_ZIP_MEMBERS", 2)
    (result,) = iter_scans([("many.zip", _zip({f"{i}.png": PNG for i in range(3)}))])
    assert isinstance(result.error, LimitError) and "zip has 3 members" in str(result.error)


def test_folder_recursive_sorted_and_batch_survives(tmp_path):
    """Folders are walked in sorted order; a bad file is reported and the batch goes on."""
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b" / "2.dcm").write_bytes(ct_bytes(z_mm=2.0))
    (tmp_path / "a.dcm").write_bytes(b"\x00" * 10)
    (tmp_path / "c").write_bytes(ct_bytes(z_mm=1.0))
    (tmp_path / "labels.csv").write_text("id,label\n1,0\n")
    (tmp_path / ".git" / "x.png").write_bytes(PNG)
    results = list(iter_scans([tmp_path, tmp_path / "missing.dcm"]))
    names = [r.name.removeprefix(str(tmp_path) + "/") for r in results]
    assert names == ["a.dcm", "c", "b/2.dcm", "missing.dcm"]
    assert isinstance(results[0].error, DicomError | InputError)
    assert results[1].ok and results[2].ok
    assert "no such file" in str(results[3].error)


def test_uploads_never_touch_disk(tmp_path, monkeypatch):
    """Reading uploads (bytes, BytesIO, zip) writes nothing to the temp or working folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    upload = io.BytesIO(_zip({"s.dcm": ct_bytes(), "p.png": PNG}))
    upload.name = "up.zip"
    results = list(iter_scans([upload, ("x.dcm", ct_bytes()), PNG]))
    assert [r.ok for r in results] == [True, True, True, True]
    assert list(tmp_path.iterdir()) == []


def test_folder_upload_keeps_what_a_folder_walk_reads():
    """A browser folder upload: DICOMDIR, hidden, __MACOSX and non-scan files (a text note
    without extension too) are counted out; extension-less DICOM (with or without preamble) and
    broken files, images, unreadable .dcm files and *.nii.gz are kept, in order."""
    png = cv2.imencode(".png", np.full((32, 32), 99, np.uint8))[1].tobytes()
    files = [
        ("study/DICOMDIR", ct_bytes()),
        ("study/IMAGES/IM0001", ct_bytes()),
        ("study/IMAGES/.DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(64)),
        ("study/__MACOSX/IM0001", ct_bytes()),
        ("study/report.pdf", b"%PDF-1.4 " + bytes(200)),
        ("study/notes.txt", b"seen today"),
        ("study/notes", "Seen by Dr. Ödön today.\n\tNothing to add.\n".encode()),
        ("study/IMAGES/IM0002", ct_bytes(preamble=False)),  # no preamble, no extension
        ("study/IMAGES/IM0003", b"\x00" * 10),  # extension-less and broken: read, reported
        ("study/labels.csv.gz", b"\x1f\x8b" + bytes(40)),
        ("study/cut.dcm", b"not really a dicom"),
        ("study/head.png", png),
        ("study/vol.nii.gz", b"\x1f\x8b" + bytes(40)),
    ]
    kept, skipped = folder_upload(files)
    assert [name for name, _ in kept] == [
        "study/IMAGES/IM0001",
        "study/IMAGES/IM0002",
        "study/IMAGES/IM0003",
        "study/cut.dcm",
        "study/head.png",
        "study/vol.nii.gz",
    ]
    assert skipped == 7
    assert [r.ok for r in iter_scans(kept[:2])] == [True, True]


def test_a_folder_given_as_a_file_names_the_commands_that_take_folders(tmp_path) -> None:
    """Reading a folder as one file says so and points to the commands that walk folders."""
    from hemo.sources import read_bytes

    with pytest.raises(InputError, match="is a folder, not a file") as err:
        read_bytes(tmp_path)
    assert err.value.source == str(tmp_path) and "hemo predict" in str(err.value)
    assert "iter_scans" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "sop_class"),
    [
        ("rtstruct.dcm", "RT Structure Set Storage"),
        ("ExplVR_LitEndNoMeta.dcm", "RT Ion Plan Storage"),
        ("ExplVR_BigEndNoMeta.dcm", "RT Ion Plan Storage"),
    ],
)
def test_dicom_without_preamble_and_without_image_says_what_it_is(name: str, sop_class: str):
    """Real DICOM files with no preamble and no image (pydicom's RT files) are named as DICOM
    holding no image, with their SOP class, not as an unknown kind of file."""
    from pydicom.data import get_testdata_file

    from hemo.errors import NoImageDicomError

    with pytest.raises(NoImageDicomError, match=rf"{name}: is DICOM .* SOP Class is {sop_class}\)"):
        read_scan(get_testdata_file(name, download=False), name)
    (result,) = list(
        iter_scans([(name, open(get_testdata_file(name, download=False), "rb").read())])
    )
    assert isinstance(result.error, NoImageDicomError)


def test_a_folder_without_a_scan_gets_a_result_naming_it(tmp_path):
    """An empty folder and a folder of notes each give one error result naming the folder (an
    input used to be passed over without a word when others held scans); the scan beside them
    is read."""
    empty, notes = tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    notes.mkdir()
    (notes / "readme.txt").write_text("no scan here")
    scan = tmp_path / "slice.dcm"
    scan.write_bytes(ct_bytes())
    results = list(iter_scans([empty, notes, scan]))
    assert [r.name for r in results] == [str(empty), str(notes), str(scan)]
    assert "no scan in this folder (it is empty)" in str(results[0].error)
    assert "(1 entry in it, none a scan)" in str(results[1].error)
    assert results[2].error is None
