"""hemo.images: sniffing, decoding to display grayscale, and refusals."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from hemo import config
from hemo.errors import ImageError, InputError, LimitError
from hemo.images import read_image, sniff_kind

SIDE = 32


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def test_kaggle_pngs_read(head_ct_dir):
    """All 140 real Kaggle PNGs (8-bit RGB, many sizes) read to float32 [0, 1]."""
    paths = sorted((head_ct_dir / "head_ct").glob("*.png"))
    assert len(paths) == 140
    channels = set()
    for path in paths:
        im = read_image(path)
        channels.add(im.original_shape[2] if len(im.original_shape) == 3 else 1)
        assert im.pixels.dtype == np.float32 and im.pixels.shape == im.original_shape[:2]
        assert 0.0 <= im.pixels.min() and im.pixels.max() <= 1.0 and im.kind == "png"
        assert not im.pixels.flags.writeable
    assert channels == {3}  # the shared README says some are RGBA; none of these 140 is


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(10), "png"),
        (b"\xff\xd8\xff\xe0" + bytes(10), "jpeg"),
        (b"II*\x00" + bytes(10), "tiff"),
        (b"MM\x00*" + bytes(10), "tiff"),
        (b"PK\x03\x04" + bytes(10), "zip"),
        (bytes(128) + b"DICM" + bytes(10), "dicom"),
        (b"GIF89a" + bytes(10), None),
        (b"", None),
    ],
)
def test_sniff_kind(head, kind):
    """Kinds come from magic numbers."""
    assert sniff_kind(head) == kind


def test_sixteen_bit_scaled_by_full_range():
    """16-bit samples are divided by 65535."""
    array = np.full((SIDE, SIDE), 32768, dtype=np.uint16)
    array[0, 0] = 65535
    im = read_image(_png(array))
    assert im.bit_depth == 16 and im.pixels[0, 0] == 1.0
    assert im.pixels[1, 1] == pytest.approx(32768 / 65535)


def test_rgb_luminance_and_rgba_alpha_dropped():
    """Pure red is 0.299 (BT.601); an alpha channel does not change the result."""
    bgr = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    bgr[..., 2] = 255
    bgra = np.dstack([bgr, np.full((SIDE, SIDE), 7, dtype=np.uint8)])
    rgb_im, rgba_im = read_image(_png(bgr)), read_image(_png(bgra))
    assert rgb_im.pixels[0, 0] == pytest.approx(0.299, abs=1e-6)
    np.testing.assert_array_equal(rgb_im.pixels, rgba_im.pixels)
    assert rgba_im.original_shape == (SIDE, SIDE, 4)


def test_palette_png():
    """A palette PNG is expanded and read."""
    img = Image.new("P", (SIDE, SIDE))
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    img.putpixel((0, 0), 1)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    im = read_image(buf.getvalue())
    assert im.pixels[0, 0] == pytest.approx(1.0) and im.pixels[1, 1] == 0.0


def test_tiff_16bit():
    """A 16-bit TIFF reads with its kind sniffed from the bytes."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.full((SIDE, SIDE), 65535, dtype=np.uint16))
    im = read_image(buf.getvalue(), name="scan.png")
    assert im.kind == "tiff" and im.bit_depth == 16 and float(im.pixels.min()) == 1.0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_lzw_tiff_reads_without_imagecodecs(dtype):
    """An LZW-compressed TIFF (OpenCV's default, common from scanners) reads exactly, though
    tifffile needs the imagecodecs package for it; a corrupt one still names the file."""
    rng = np.random.default_rng(0)
    full = np.iinfo(dtype).max
    pixels = rng.integers(0, full, (SIDE, SIDE), dtype=dtype)
    ok, buf = cv2.imencode(".tif", pixels)
    assert ok
    with tifffile.TiffFile(io.BytesIO(buf.tobytes())) as tif:
        assert tif.pages[0].compression == 5  # LZW
    im = read_image(buf.tobytes(), name="scan.tif")
    assert im.kind == "tiff" and im.bit_depth == 8 * np.dtype(dtype).itemsize
    np.testing.assert_allclose(im.pixels, pixels / full, atol=1e-6)
    damaged = buf.tobytes()[:-200]
    with pytest.raises(ImageError, match="scan.tif"):
        read_image(damaged, name="scan.tif")


def test_jpeg_with_png_name():
    """A JPEG named .png is read as JPEG."""
    ok, buf = cv2.imencode(".jpg", np.full((SIDE, SIDE), 128, dtype=np.uint8))
    im = read_image(io.BytesIO(buf.tobytes()), name="scan.png")
    assert im.kind == "jpeg" and im.pixels.mean() == pytest.approx(128 / 255, abs=0.01)


def test_tiny_image_refused():
    """A 1x1 PNG is below MIN_IMAGE_SIDE."""
    with pytest.raises(ImageError, match=r"image is 1 x 1 pixels: each side must be at least 16"):
        read_image(_png(np.zeros((1, 1), dtype=np.uint8)), name="dot.png")


def test_empty_refused():
    """Zero bytes are refused."""
    with pytest.raises(InputError, match="file is empty"):
        read_image(b"", name="e.png")


def test_truncated_png_refused():
    """A truncated PNG is refused as truncated or corrupt."""
    data = _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(
        ImageError, match=r"cannot decode the PNG: the file is truncated or corrupt"
    ):
        read_image(data[: len(data) // 2], name="t.png")


def test_truncated_jpeg_refused():
    """A JPEG without its end-of-image marker is refused."""
    ok, buf = cv2.imencode(".jpg", np.full((64, 64), 90, dtype=np.uint8))
    with pytest.raises(ImageError, match=r"end-of-image marker \(FFD9\): the file is truncated"):
        read_image(buf.tobytes()[:-100])


def _jpeg_declaring(side: int, stray: bytes) -> bytes:
    """A small real JPEG whose SOF says ``side`` x ``side``, with ``stray`` bytes before it."""
    ok, buf = cv2.imencode(".jpg", np.full((64, 64), 90, dtype=np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = side.to_bytes(2, "big") * 2
    return bytes(data[:sof] + stray + data[sof:])


def test_declared_huge_jpeg_refused_even_behind_stray_bytes(monkeypatch):
    """A JPEG declaring 30000 x 30000 with a stray byte before its SOF (libjpeg skips it and
    decodes ~10 GB) is refused before decoding; one whose size cannot be found at all, too."""
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded"))
    for stray in (b"", b"\x00", b"\x00\x17\x42"):
        with pytest.raises(LimitError, match=r"30000 x 30000 = 900000000 pixels"):
            read_image(_jpeg_declaring(30000, stray))
    no_sof = _jpeg_declaring(64, b"").replace(b"\xff\xc0", b"\xff\x01")
    with pytest.raises(ImageError, match=r"cannot read the image size from the JPEG header"):
        read_image(no_sof)
    monkeypatch.undo()
    assert read_image(_jpeg_declaring(64, b"\x00")).pixels.shape[:2] == (64, 64)


def test_planar_tiff_pixel_limit_uses_its_width_and_height(tmp_path, monkeypatch):
    """A planar (separate) RGB TIFF of 4097 x 4097 has page.shape (3, 4097, 4097): the limit
    is checked on its tags' height and width, not on samples x height."""
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        np.zeros((3, 4097, 4097), np.uint8),
        photometric="rgb",
        planarconfig="separate",
        compression="zlib",
    )
    with pytest.raises(LimitError, match=r"image is 4097 x 4097 = 16785409 pixels"):
        read_image(buf.getvalue())


def test_declared_huge_png_refused_before_decoding(monkeypatch):
    """An IHDR declaring more pixels than the limit is refused before cv2 sees it."""
    data = bytearray(_png(np.zeros((SIDE, SIDE), dtype=np.uint8)))
    data[16:24] = (100000).to_bytes(4, "big") * 2
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded"))
    with pytest.raises(
        LimitError, match=r"100000 x 100000 = 10000000000 pixels, more than the limit"
    ):
        read_image(bytes(data))


def test_not_an_image_refused():
    """Text is not an image, whatever its name."""
    with pytest.raises(
        ImageError, match=r"not a PNG, JPEG or TIFF file \(the kind is read from the bytes"
    ):
        read_image(b"just text" * 10, name="x.png")


def test_caller_bytes_untouched():
    """Reading does not modify the caller's buffer."""
    data = bytearray(_png(np.arange(SIDE * SIDE, dtype=np.uint16).reshape(SIDE, SIDE)))
    before = bytes(data)
    read_image(data)
    assert bytes(data) == before and config.MIN_IMAGE_SIDE == 16


def test_truncation_reason_reads_only_the_ends(tmp_path):
    """A cut-short PNG or JPEG is named from its first and last bytes; whole ones, a JPEG padded
    with zeros (as the reader accepts) and other files are not."""
    from hemo.images import truncation_reason

    pixels = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    for suffix in (".png", ".jpg"):
        data = cv2.imencode(suffix, pixels)[1].tobytes()
        whole, cut = tmp_path / f"whole{suffix}", tmp_path / f"cut{suffix}"
        whole.write_bytes(data)
        cut.write_bytes(data[: len(data) // 2])
        assert truncation_reason(whole) is None
        assert "truncated" in truncation_reason(cut)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(cv2.imencode(".jpg", pixels)[1].tobytes() + b"\x00" * 16)
    assert truncation_reason(padded) is None and read_image(padded.read_bytes()).kind == "jpeg"
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert truncation_reason(other) is None
