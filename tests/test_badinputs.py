"""Issue 6: the bad-input corpus through the library, the CLI and the configured limits."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from badinputs import BATCH_WITH_GOOD, EXPECTED, corpus
from dicom_factory import ct_bytes

from hemo import cli, config
from hemo.dicom import CTSlice
from hemo.errors import HemoError, LimitError, SeriesError
from hemo.images import Image2D
from hemo.io import iter_scans, read_scan
from hemo.series import group_series

#: Minimum number of kinds the issue asks for.
MIN_KINDS = 30
#: Peak Python/numpy allocation allowed while refusing an input that declares a huge size.
MAX_REFUSAL_PEAK_BYTES = 4 * 1024 * 1024
#: Lines C decoders (libjpeg inside GDCM/pylibjpeg) print straight to fd 2 on corrupt streams;
#: they cannot be routed through logging and are tolerated beside hemo's own lines.
C_DECODER_NOISE = re.compile(r"^(Corrupt JPEG data|Bogus |Premature end|Invalid |Unsupported )")
HEMO_BIN = Path(sys.executable).with_name("hemo")

CORPUS = corpus()
BY_KIND = {kind: (name, data) for kind, name, data in CORPUS}
SCAN_KINDS = [k for k, e in EXPECTED.items() if e.via == "scan"]
BAD_SCAN_KINDS = [k for k in SCAN_KINDS if EXPECTED[k].error is not None]
#: Refused by read_scan (one scan) but read frame by frame by the batch readers.
FRAME_KINDS = [k for k in SCAN_KINDS if EXPECTED[k].frames]
#: Kinds every batch reader reports as failed.
BATCH_FAILED_KINDS = [k for k in BAD_SCAN_KINDS if k not in FRAME_KINDS]
BATCH_KINDS = [k for k, e in EXPECTED.items() if e.via == "batch"]


def _message(name: str, pattern: str) -> str:
    return rf"^{re.escape(name)}: .*(?:{pattern})"


def _write_corpus(root: Path, kinds=None) -> dict[str, Path]:
    """Each kind's bytes in its own folder under ``root`` (names may repeat across kinds)."""
    paths = {}
    for kind, name, data in CORPUS:
        if kinds is not None and kind not in kinds:
            continue
        path = root / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[kind] = path
    return paths


def test_corpus_has_enough_kinds_and_is_deterministic():
    """At least 30 kinds, unique, every one with an expectation, same bytes on every call."""
    kinds = [k for k, _, _ in CORPUS]
    assert len(kinds) >= MIN_KINDS and len(set(kinds)) == len(kinds)
    assert set(kinds) == set(EXPECTED)
    assert [d for _, _, d in corpus()] == [d for _, _, d in CORPUS]


@pytest.mark.parametrize("kind", SCAN_KINDS)
def test_read_scan_refuses_or_accepts_each_kind(kind):
    """read_scan gives the pinned HemoError subclass naming the file and the problem, or a valid scan."""
    name, data = BY_KIND[kind]
    expect = EXPECTED[kind]
    if expect.error is None:
        scan = read_scan(data, name)
        assert isinstance(scan, CTSlice | Image2D) and scan.source == name
        values = scan.hu if isinstance(scan, CTSlice) else scan.pixels
        assert values.ndim == 2 and min(values.shape) >= config.MIN_IMAGE_SIDE
        assert np.isfinite(values).all()
        return
    with pytest.raises(expect.error, match=_message(name, expect.pattern)) as info:
        read_scan(io.BytesIO(data), name)
    assert info.value.source == name


@pytest.mark.parametrize("kind", BATCH_KINDS)
def test_iter_scans_reports_each_bad_archive(kind):
    """A bad zip gives the pinned error on the archive or member; its good members are still read."""
    name, data = BY_KIND[kind]
    expect = EXPECTED[kind]
    results = {r.name: r for r in iter_scans([(name, data)])}
    target = expect.member or name
    assert isinstance(results[target].error, expect.error)
    assert re.search(_message(target, expect.pattern), str(results[target].error))
    if kind in BATCH_WITH_GOOD:
        assert any(r.ok and isinstance(r.scan, CTSlice) for r in results.values())


def test_duplicate_positions_refused_naming_both_files():
    """Two slices of one series at one position: group_series raises SeriesError naming both."""
    name, data = BY_KIND["series_duplicate_positions"]
    slices = [r.scan for r in iter_scans([(name, data)])]
    assert all(isinstance(s, CTSlice) for s in slices)
    with pytest.raises(SeriesError, match=EXPECTED["series_duplicate_positions"].pattern) as info:
        group_series(slices)
    assert f"{name}/s1.dcm" in str(info.value) and f"{name}/s2.dcm" in str(info.value)


def test_whole_corpus_in_one_batch_keeps_the_good_files(tmp_path):
    """The corpus as folders plus two good files: nothing raises, good ones read, bad ones named."""
    _write_corpus(tmp_path / "bad")
    good_dicom = tmp_path / "good" / "slice"
    good_dicom.parent.mkdir()
    good_dicom.write_bytes(ct_bytes())
    good_png = ("upload.png", cv2.imencode(".png", np.full((32, 32), 99, np.uint8))[1].tobytes())
    results = list(iter_scans([tmp_path / "bad", good_dicom, good_png]))
    by_name = {r.name: r for r in results}
    assert by_name[str(good_dicom)].ok and by_name["upload.png"].ok
    failed = [r for r in results if not r.ok]
    assert len(failed) >= len(BATCH_FAILED_KINDS) + len(BATCH_KINDS)
    for kind in FRAME_KINDS:
        frames = [r for r in results if r.name.startswith(str(tmp_path / "bad" / kind))]
        assert [r.scan.frame for r in frames] == list(range(1, EXPECTED[kind].frames + 1))
    for r in failed:
        assert isinstance(r.error, HemoError) and str(r.error).startswith(r.name)


@pytest.mark.parametrize(
    "kind", ["huge_declared", "png_huge_ihdr", "zip_huge_declared", "zip_bomb"]
)
def test_huge_declared_sizes_refused_before_allocating(kind):
    """Inputs declaring gigabytes are refused with a peak allocation of a few MB (tracemalloc)."""
    name, data = BY_KIND[kind]
    tracemalloc.start()
    try:
        results = list(iter_scans([(name, data)]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(results[0].error, LimitError)
    assert peak < MAX_REFUSAL_PEAK_BYTES + len(data), f"peak {peak / 2**20:.1f} MB"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return buffer.getvalue()


PNG64 = cv2.imencode(".png", np.full((64, 64), 120, np.uint8))[1].tobytes()
JPEG64 = cv2.imencode(".jpg", np.full((64, 64), 120, np.uint8))[1].tobytes()


def _raise(error: HemoError | None) -> None:
    if error is not None:
        raise error


def _limit_cases():
    """(id, config name, small value, thunk giving the error, expected class, message regex)."""

    def upload():
        stream = io.BytesIO(ct_bytes())
        stream.name = "up.dcm"
        return read_scan(stream)

    def member():
        (result,) = iter_scans([("z.zip", _zip({"big.dcm": ct_bytes()}))])
        _raise(result.error)

    def archive(members):
        def thunk():
            for result in iter_scans([("z.zip", _zip(members))]):
                _raise(result.error)

        return thunk

    def series():
        slices = [read_scan(ct_bytes(z_mm=float(z)), f"{z}.dcm") for z in range(3)]
        return group_series(slices)

    return [
        ("bytes", "MAX_FILE_BYTES", 1000, lambda: read_scan(ct_bytes(), "b.dcm"), LimitError,
         r"^b\.dcm: file is \d+ bytes, more than the limit of 1000 bytes \(config\.MAX_FILE_BYTES\)"),
        ("upload_bytes", "MAX_FILE_BYTES", 1000, upload, LimitError,
         r"^up\.dcm: file is 1001 bytes, more than the limit of 1000"),
        ("zip_member_bytes", "MAX_FILE_BYTES", 1000, member, LimitError,
         r"^z\.zip/big\.dcm: zip member is \d+ bytes, more than the limit of 1000"),
        ("dicom_pixels", "MAX_PIXELS_PER_SLICE", 32 * 32, lambda: read_scan(ct_bytes(), "p.dcm"),
         LimitError, r"^p\.dcm: .*64 x 64 = 4096 pixels, more than the limit of 1024"),
        ("png_pixels", "MAX_PIXELS_PER_SLICE", 32 * 32, lambda: read_scan(PNG64, "p.png"),
         LimitError, r"^p\.png: image is 64 x 64 = 4096 pixels, more than the limit of 1024"),
        ("jpeg_pixels", "MAX_PIXELS_PER_SLICE", 32 * 32, lambda: read_scan(JPEG64, "p.jpg"),
         LimitError, r"^p\.jpg: image is 64 x 64 = 4096 pixels"),
        ("series_slices", "MAX_SLICES_PER_SERIES", 2, series, LimitError,
         r"has 3 slices, more than the limit of 2 \(config\.MAX_SLICES_PER_SERIES\)"),
        ("zip_members", "MAX_ZIP_MEMBERS", 2, archive({f"{i}.png": PNG64 for i in range(3)}),
         LimitError, r"^z\.zip: zip has 3 members, more than the limit of 2"),
        ("zip_ratio", "MAX_ZIP_RATIO", 2.0, archive({"s.dcm": ct_bytes()}), LimitError,
         r"^z\.zip: zip expands \d+-fold .*more than the limit of 2 \(config\.MAX_ZIP_RATIO\)"),
        ("zip_total", "MAX_ZIP_UNCOMPRESSED_BYTES", 1000, archive({"s.dcm": ct_bytes()}),
         LimitError, r"^z\.zip: zip declares \d+ bytes uncompressed, more than the limit of 1000"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "value", "thunk", "error", "pattern"),
    [case[1:] for case in _limit_cases()],
    ids=[case[0] for case in _limit_cases()],
)
def test_each_limit_is_enforced(monkeypatch, setting, value, thunk, error, pattern):
    """Each limit in hemo.config, set small, refuses an input that passes the default."""
    try:
        thunk()
    except LimitError as exc:
        pytest.fail(f"refused with the default limit: {exc}")
    monkeypatch.setattr(config, setting, value)
    with pytest.raises(error, match=pattern):
        thunk()


# CLI -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", SCAN_KINDS)
def test_cli_inspect_each_kind(kind, tmp_path, capsys):
    """hemo inspect --json: exit 2 with one 'hemo: error' line naming the file, or exit 0."""
    path = _write_corpus(tmp_path, [kind])[kind]
    status = cli.main(["inspect", "--json", str(path)])
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert "Traceback" not in err
    if EXPECTED[kind].error is None or EXPECTED[kind].frames:
        assert status == 0 and "error" not in report and report["path"] == str(path)
        assert report.get("frames", 0) == EXPECTED[kind].frames
        return
    assert status == cli.EXIT_ERROR
    assert re.search(_message(str(path), EXPECTED[kind].pattern), report["error"])
    lines = [line for line in err.splitlines() if not C_DECODER_NOISE.match(line)]
    assert lines == [f"hemo: error: {report['error']}"]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [str(HEMO_BIN), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _hemo_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not C_DECODER_NOISE.match(line)]


@pytest.mark.slow
def test_cli_inspect_subprocess_has_no_traceback(tmp_path):
    """Real processes on decoder-failing and truncated files: exit 2, one line, no traceback."""
    paths = _write_corpus(tmp_path, ["jpeg_lossless_garbage", "truncated_dataset"])
    for path in paths.values():
        done = _run("inspect", str(path))
        assert done.returncode == cli.EXIT_ERROR, done.stderr
        assert "Traceback" not in done.stderr
        (line,) = _hemo_lines(done.stderr)
        assert line.startswith(f"hemo: error: {path}: ")


@pytest.mark.slow
def test_cli_predict_batch_of_corpus_and_good_files(tmp_path, ct_small):
    """hemo predict --json on the corpus and good files: exit 1, good files predicted, one line per failure."""
    from tiny_models import tiny_model_path

    _write_corpus(tmp_path / "bad")
    good_png = tmp_path / "good.png"
    good_png.write_bytes(cv2.imencode(".png", np.full((64, 64), 90, np.uint8))[1].tobytes())
    done = _run("predict", "--json", "--model", str(tiny_model_path("display")),
                str(tmp_path / "bad"), str(ct_small), str(good_png))  # fmt: skip
    assert done.returncode == cli.EXIT_PARTIAL, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    results = json.loads(done.stdout)["results"]
    by_path = {r["path"]: r for r in results}
    for good in (str(ct_small), str(good_png)):
        assert 0.0 <= by_path[good]["probability"] <= 1.0
    accepted = [k for k, e in EXPECTED.items() if e.via == "scan" and e.error is None]
    for kind in accepted:
        (entry,) = [r for r in results if r["path"].startswith(str(tmp_path / "bad" / kind))]
        assert "probability" in entry, entry
    for kind in FRAME_KINDS:
        entries = [r for r in results if r["path"].startswith(str(tmp_path / "bad" / kind))]
        assert [r["frame"] for r in entries] == list(range(1, EXPECTED[kind].frames + 1))
        assert all("probability" in r for r in entries)
    failures = [r for r in results if "error" in r]
    assert len(failures) >= len(BATCH_FAILED_KINDS) + len(BATCH_KINDS)
    lines = [line for line in _hemo_lines(done.stderr) if line.startswith("ERROR ")]
    assert len(lines) == len(failures)
    for entry, line in zip(failures, lines, strict=True):
        assert entry["error"].startswith(entry["path"]) and entry["error"] in line


@pytest.mark.slow
def test_cli_convert_folder_with_bad_dicoms(tmp_path):
    """hemo convert: exit 1, every bad DICOM listed once on stderr, the good ones converted."""
    src = tmp_path / "src"
    dicom_kinds = [k for k in SCAN_KINDS if BY_KIND[k][0].endswith(".dcm")]
    _write_corpus(src, dicom_kinds)
    for z in range(2):
        (src / f"good{z}.dcm").write_bytes(ct_bytes(z_mm=float(z)))
    done = _run("convert", str(src), str(tmp_path / "out"), "--json", "--workers", "1")
    assert done.returncode == cli.EXIT_PARTIAL, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    failed = {Path(e["path"]).parent.name for e in summary["errors"]}
    expected_failed = {k for k in dicom_kinds if k in BATCH_FAILED_KINDS}
    assert failed == expected_failed
    assert summary["converted"] == len(dicom_kinds) - len(expected_failed) + 2
    for kind in set(dicom_kinds) & set(FRAME_KINDS):  # one PNG per frame, then the list
        (listed,) = (tmp_path / "out" / kind).glob("*_frames.json")
        assert len(json.loads(listed.read_text())["frames"]) == EXPECTED[kind].frames
    lines = [line for line in _hemo_lines(done.stderr) if line.startswith("ERROR ")]
    assert len(lines) == len(expected_failed)
    for png in (tmp_path / "out").rglob("*.png"):
        assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED) is not None


# Pages -----------------------------------------------------------------------------------------
#: Bad kinds uploaded together on a page (one error each, naming the file).
PAGE_KINDS = ("truncated_pixels", "j2k_garbage", "modality_mr", "rgb_dicom", "zip_bomb")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """AppTest of the dashboard on tiny phantoms and tiny models (as tests/test_app_pages.py)."""
    from dashboard_fixtures import HU_MODEL, make_models, make_phantoms
    from streamlit.testing.v1 import AppTest

    from hemo import dashboard
    from hemo.config import PROJECT_DIR

    root = tmp_path_factory.mktemp("bad_app")
    data, models = make_phantoms(root / "demo", n_studies=2), make_models(root / "models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(dashboard.ENV_DATASET, str(data))
        mp.setenv(dashboard.ENV_MODELS_DIR, str(models))
        mp.setenv(dashboard.ENV_DEFAULT_MODEL, HU_MODEL)
        mp.setenv("HEMO_RUNS_DIR", str(root / "runs"))
        yield lambda: AppTest.from_file(str(PROJECT_DIR / "streamlit_app.py"), default_timeout=240)


def _page_uploads(kinds) -> list[tuple[str, bytes, str]]:
    return [(BY_KIND[k][0], BY_KIND[k][1], "application/octet-stream") for k in kinds]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("page", "radio", "uploader"),
    [("app_pages/predict.py", None, "predict_upload"),
     ("app_pages/windowing.py", "Upload DICOM", "win_upload")],
)  # fmt: skip
def test_pages_show_one_error_per_bad_upload_then_serve_a_good_one(app, page, radio, uploader):
    """Bad kinds give st.error naming each file; a good upload in the same session then works."""
    at = app().run()
    at.switch_page(page).run()
    if radio:
        at.radio(key="win_source").set_value(radio).run()
    at.file_uploader(key=uploader).set_value(_page_uploads(PAGE_KINDS)).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = " | ".join(e.value for e in at.error)
    for kind in PAGE_KINDS:
        assert BY_KIND[kind][0] in errors, (kind, errors)
    at.file_uploader(key=uploader).set_value(
        ("good.dcm", ct_bytes(), "application/octet-stream")
    ).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    if page.endswith("predict.py"):
        assert any(m.label == "Probability of hemorrhage" for m in at.metric)
    else:
        assert len(at.image) >= 1
