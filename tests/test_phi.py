"""Issue 6: patient data never leaves hemo, and uploads never touch the disk.

A DICOM carrying distinctive names, IDs, dates and institutions goes through every surface: the
JSON of ``hemo inspect/predict/explain/index``, the index parquet, the quality report, the EDA
tables, converted PNGs and explain overlays, every log record at DEBUG and the CLI's stderr, and
the Windowing/Predict pages (every element of the AppTest tree). Uploads are watched for writes.
"""

from __future__ import annotations

import builtins
import io
import json
import logging
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_factory import ct_bytes

from hemo import cli, eda

#: Distinctive patient data (Annex E tags); none of these strings may come out of hemo.
PHI = {
    "PatientName": "Zzyzx^Quintessa^Marguerite",
    "PatientID": "MRN7731942",
    "PatientBirthDate": "19380229",
    "PatientAddress": "42 Phi Lane Flatbush",
    "OtherPatientIDs": "OPID9988776",
    "InstitutionName": "Hospital of Saint Phineas",
    "InstitutionAddress": "1 Infirmary Way Quahog",
    "AccessionNumber": "ACC55501234",
    "StudyDate": "20110913",
    "SeriesDate": "20110914",
    "AcquisitionDate": "20110915",
    "ContentDate": "20110916",
    "StudyTime": "134209.123456",
    "ReferringPhysicianName": "Quackenbush^Hortense",
    "PerformingPhysicianName": "Vandersloot^Ignatius",
    "OperatorsName": "Fitzwilliam^Odalys",
    "StudyDescription": "PHIDESC head trauma Zzyzx",
    "StudyID": "STUDY8841",
    "DeviceSerialNumber": "SN7731XQZ",
}
#: Instance UIDs (Annex E action U), made as many devices make them: with the study date and
#: time in them. Only their keyed pseudonyms may come out.
UIDS = {
    "study_uid": "1.2.826.0.1.3680043.99.20110913134209.7731",
    "series_uid": "1.2.826.0.1.3680043.99.20110913134209.7732",
}
#: Forms a value could take once reformatted (dates as ISO, names without carets).
NEEDLES = sorted(
    {v for v in PHI.values()}
    | set(UIDS.values())
    | {f"{d[:4]}-{d[4:6]}-{d[6:]}" for k, d in PHI.items() if k.endswith("Date")}
    | {part for k, v in PHI.items() if k.endswith("Name") for part in v.split("^")}
)


def _phi_slices(root: Path) -> list[Path]:
    """Two PHI-laden CT slices of one series in a folder-per-class layout under ``root``."""
    paths = []
    for i, label in enumerate(("hemorrhage", "normal")):
        path = root / label / f"slice{i}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ct_bytes(z_mm=5.0 * i, instance=i + 1, **UIDS, **PHI))
        paths.append(path)
    return paths


def _assert_no_phi(text: str, where: str) -> None:
    lowered = text.lower()
    found = [n for n in NEEDLES if n.lower() in lowered]
    assert not found, f"PHI {found} in {where}"


@pytest.fixture
def debug_log(caplog):
    """Every log record of every logger at DEBUG, formatted with its traceback."""
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.mark.slow
def test_cli_json_files_reports_and_logs_carry_no_phi(tmp_path, capsys, debug_log):
    """inspect/predict/explain/index JSON, the parquet, reports, PNGs and DEBUG logs are PHI-free."""
    from tiny_models import tiny_model_path

    from hemo.convert import convert
    from hemo.datasets import load_index, quality_report

    data = tmp_path / "data"
    slices = _phi_slices(data)
    model = str(tiny_model_path("display"))
    outputs: dict[str, str] = {}
    for name, argv in {
        "inspect": ["inspect", "--json", str(slices[0])],
        "inspect_text": ["inspect", str(slices[0])],
        "predict": ["predict", "--json", "--model", model, str(data)],
        "explain": ["explain", "--json", "--model", model, "--out", str(tmp_path / "cam"), str(data)],
        "index": ["index", "--json", str(data), "--out", str(tmp_path / "index.parquet")],
    }.items():  # fmt: skip
        status = cli.main(["-v", *argv])
        out, err = capsys.readouterr()
        assert status == 0, (name, err)
        outputs[f"{name} stdout"], outputs[f"{name} stderr"] = out, err
    index = load_index(tmp_path / "index.parquet")
    assert index["patient_id"].nunique() == 1 and len(index) == 2
    outputs["parquet bytes"] = (tmp_path / "index.parquet").read_bytes().decode("latin-1")
    outputs["index"] = index.to_csv()
    outputs["quality report"] = quality_report(index).to_csv()
    outputs["eda"] = "\n".join(
        [json.dumps(eda.summary(index))]
        + [
            f(index).to_csv()
            for f in (eda.class_balance, eda.slices_per_study, eda.split_sizes, eda.missing_labels)
        ]  # fmt: skip
    )
    report = convert(data, tmp_path / "png", window="rsna3", size=32, workers=1)
    assert report.count("converted") == 2
    pngs = sorted((tmp_path / "png").rglob("*.png")) + sorted((tmp_path / "cam").rglob("*.png"))
    assert len(pngs) >= 4
    outputs["png bytes"] = "".join(p.read_bytes().decode("latin-1") for p in pngs)
    outputs["output names"] = " ".join(str(p) for p in pngs)
    outputs["log records"] = debug_log.text
    # the capture really was at DEBUG (which records exist depends on what ran before)
    assert debug_log.handler.level == logging.DEBUG == logging.getLogger().level
    for where, text in outputs.items():
        _assert_no_phi(text, where)
    assert json.loads(outputs["predict stdout"])["results"][0]["probability"] >= 0.0


#: TensorFlow's autograph writes the Python source it generates for a function it converts to
#: the temp folder, the first time in a process: code, not data (a test run alone met it).
AUTOGRAPH_FILE_PREFIX = "__autograph_generated_file"
AUTOGRAPH_MODULE = os.path.join("tensorflow", "python", "autograph")


def _from_autograph() -> bool:
    """Whether the caller is TensorFlow's autograph writing its generated code."""
    frame = sys._getframe(1)
    while frame is not None:
        if AUTOGRAPH_MODULE in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _watch(folders: list[Path]) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``folders`` but autograph's generated code."""
    seen = {}
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            for f in files:
                if f.startswith(AUTOGRAPH_FILE_PREFIX):
                    continue
                path = os.path.join(dirpath, f)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                seen[path] = (st.st_size, st.st_mtime_ns)
    return seen


@pytest.fixture
def disk_guard(tmp_path, monkeypatch):
    """Working dir and tempfile dir in tmp_path; every open() for writing is recorded."""
    work = tmp_path / "cwd"
    temp = tmp_path / "tmp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    for var in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(var, str(temp))
    writes: list[str] = []
    real_open = builtins.open

    def watching_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | bytes | os.PathLike) and any(c in mode for c in "wax+"):
            if not _from_autograph():
                writes.append(os.fsdecode(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watching_open)
    monkeypatch.setattr(io, "open", watching_open)
    before = _watch([work, temp])
    yield writes
    assert _watch([work, temp]) == before, "files appeared or changed in the cwd/temp folder"


@pytest.mark.slow
def test_predictor_on_uploaded_bytes_writes_nothing(disk_guard):
    """Predictor.predict on (name, bytes) and BytesIO uploads opens no file for writing."""
    from tiny_models import tiny_model_path

    from hemo.predict import Predictor

    model = tiny_model_path("display")
    data = ct_bytes(**PHI)
    upload = io.BytesIO(data)
    upload.name = "upload.dcm"
    with Predictor(model) as predictor:
        disk_guard.clear()  # loading the model reads only; count from here
        results = predictor.predict([("a.dcm", data), upload])
    assert [r.source for r in results] == ["a.dcm", "upload.dcm"]
    assert all(0.0 <= r.probability <= 1.0 for r in results)
    assert disk_guard == []
    _assert_no_phi(repr(results) + json.dumps([r.to_dict() for r in results]), "predictions")


def _tree_texts(at) -> str:
    """The protobuf text of every element in an AppTest tree (values, labels, tables, JSON)."""
    texts, stack = [], [at._tree]
    while stack:
        node = stack.pop()
        proto = getattr(node, "proto", None)
        if proto is not None:
            texts.append(str(proto))
        children = getattr(node, "children", None) or {}
        stack.extend(children.values() if isinstance(children, dict) else children)
    return "\n".join(texts)


@pytest.mark.slow
def test_windowing_and_predict_pages_show_no_phi_and_write_nothing(tmp_path_factory, disk_guard):
    """Upload a PHI slice on Windowing and Predict: no element shows PHI; no file is written."""
    from dashboard_fixtures import HU_MODEL, make_models, make_phantoms
    from streamlit.testing.v1 import AppTest

    from hemo import dashboard
    from hemo.config import PROJECT_DIR

    root = tmp_path_factory.mktemp("phi_app")
    data, models = make_phantoms(root / "demo", n_studies=2), make_models(root / "models")
    # Named as exports often are: after the patient (the names are scrubbed, not the uploads)
    upload = (f"{PHI['PatientID']}_zzyzx.dcm", ct_bytes(**PHI), "application/octet-stream")
    members = {
        f"ZZYZX-Quintessa/{PHI['PatientID']}/slice{i}.dcm": ct_bytes(
            z_mm=5.0 * i, instance=i + 1, **UIDS, **PHI
        )
        for i in range(2)
    }
    series = (f"{PHI['PatientID']}.zip", _zip(members), "application/zip")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(dashboard.ENV_DATASET, str(data))
        mp.setenv(dashboard.ENV_MODELS_DIR, str(models))
        mp.setenv(dashboard.ENV_DEFAULT_MODEL, HU_MODEL)
        mp.setenv("HEMO_RUNS_DIR", str(root / "runs"))
        at = AppTest.from_file(str(PROJECT_DIR / "streamlit_app.py"), default_timeout=240)
        at.run()
        before = _watch([root])
        disk_guard.clear()
        at.switch_page("app_pages/windowing.py").run()
        at.radio(key="win_source").set_value("Upload DICOM").run()
        at.file_uploader(key="win_upload").set_value([upload]).run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        windowing = _tree_texts(at)
        assert "Modality" in windowing  # the metadata table is there
        at.switch_page("app_pages/predict.py").run()
        at.file_uploader(key="predict_upload").set_value([upload, series]).run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        predict = _tree_texts(at)
        assert "Probability of hemorrhage" in predict and "Study verdict" in predict
        assert "[patient]_[patient].dcm" in predict  # the heading of the lone slice
        assert "[patient].zip/[patient]-[patient]/[patient] — 2 slices" in predict
        # Back from another page: the kept upload is announced by its count, not its names
        at.switch_page("app_pages/home.py").run()
        at.switch_page("app_pages/predict.py").run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert any("shown again (2 file(s))" in i.value for i in at.info)
        predict += _tree_texts(at)
    _assert_no_phi(windowing, "Windowing page")
    _assert_no_phi(predict, "Predict page")
    assert _watch([root]) == before
    assert [w for w in disk_guard if not w.startswith("/dev/")] == []


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_names_holding_the_patients_id_or_name_are_scrubbed_for_the_app(tmp_path):
    """A folder or file named after the patient (ID, name parts, any case) reads as
    ``[patient]`` in the uploads the app decodes and in its reports; the digests that find
    them are keyed, never the values; short parts and parts inside a word are left alone."""
    from hemo import dashboard, reports
    from hemo.dicom import SCRUBBED_NAME, name_keys, read_dicom, scrub_name
    from hemo.predict import Prediction

    keys = name_keys(PHI["PatientID"], PHI["PatientName"])
    assert not any(part.lower() in " ".join(keys).lower() for part in NEEDLES)
    assert scrub_name(f"exp/{PHI['PatientID'].lower()}/a.dcm", keys) == "exp/[patient]/a.dcm"
    assert scrub_name("ZZYZX_quintessa-MARGUERITE.dcm", keys) == "[patient].dcm"  # the whole name
    assert scrub_name("quintessa_x.dcm", keys) == "[patient]_x.dcm"  # one of its parts
    assert scrub_name("xMRN7731942/Zzyzxville.dcm", keys) == "xMRN7731942/Zzyzxville.dcm"
    assert scrub_name("CT000012.dcm", name_keys("12", "Li^Bo")) == "CT000012.dcm"  # too short
    assert scrub_name("CT000012.dcm", name_keys("000012", "")) == "CT000012.dcm"  # in a word
    cq500 = name_keys("CQ500-CT-0", "")
    assert scrub_name("a/CQ500-CT-0/b.dcm", cq500) == "a/[patient]/b.dcm"
    # whatever separates its words, in whatever Unicode form the file system wrote it
    assert scrub_name("a/cq500_ct_0 b.dcm", cq500) == "a/[patient] b.dcm"
    assert scrub_name("Mu\u0308ller.dcm", name_keys("", "M\u00fcller^Hans")) == "[patient].dcm"
    # short components as a whole group, a group written together, several IDs, a long one
    assert scrub_name("li_bo_ct.dcm", name_keys("", "Li^Bo")) == "[patient]_ct.dcm"
    assert scrub_name("山田太郎/1.dcm", name_keys("", "Yamada^Taro=山田^太郎")) == "[patient]/1.dcm"
    uid_like = "1.3.12.2.1107.5.1.4.7731942"
    assert scrub_name(f"x/{uid_like}/a.dcm", name_keys(["MRN1", uid_like], "")) == (
        "x/[patient]/a.dcm"
    )
    path = tmp_path / "Zzyzx^Quintessa" / "slice.dcm"
    path.parent.mkdir()
    path.write_bytes(ct_bytes(**PHI))
    assert read_dicom(path).name_keys == keys
    unrelated = dashboard.decode([("MRN7731942.png", b"not a scan")])  # no patient data read
    assert [name for name, _ in unrelated.errors] == ["MRN7731942.png"]
    members = {f"{PHI['PatientID']}/s{i}.dcm": ct_bytes(z_mm=5.0 * i, **PHI) for i in range(2)}
    decoded = dashboard.decode([("Zzyzx.zip", _zip(members)), ("MRN7731942 broken.dcm", b"DICM?")])
    (series,) = decoded.series
    assert dashboard.series_name(series) == f"{SCRUBBED_NAME}.zip/{SCRUBBED_NAME}"
    ((name, message),) = decoded.errors
    assert name == "[patient] broken.dcm" and "MRN7731942" not in message
    # A file whose pixels cannot be read still names its patient in its header: its own name
    # is scrubbed, alone in its upload
    cut = ct_bytes(**PHI)[:-100]
    ((name, message),) = dashboard.decode([(f"{PHI['PatientID']}_head.dcm", cut)]).errors
    assert name == "[patient]_head.dcm" and PHI["PatientID"] not in message
    # Two patients' files scrubbed into one name stay apart
    two = dashboard.decode(
        [
            ("Zzyzx.dcm", ct_bytes(**PHI)),
            ("Smith.dcm", ct_bytes(**{**PHI, "PatientName": "Smith^Ann", "PatientID": "S1"})),
        ]
    )
    assert [s.source for s in two.singles] == ["[patient].dcm", "[patient].dcm (2)"]
    row = reports.prediction_row(Prediction(series.slices[0].source, 0.4, {"any": 0.4}, False, 0.5))
    _assert_no_phi(reports.report_csv([row]).decode(), "a report of a scrubbed upload")


def test_index_patient_column_is_a_keyed_pseudonym(tmp_path):
    """The index's patient_id is neither the ID nor its unsalted sha256 (brute-forceable)."""
    import hashlib

    from hemo.datasets import build_index

    _phi_slices(tmp_path)
    index = build_index(tmp_path)
    (key,) = set(index["patient_id"])
    assert key != PHI["PatientID"]
    assert key != hashlib.sha256(PHI["PatientID"].encode()).hexdigest()[:16]
    assert isinstance(pd.DataFrame(index).to_csv(), str) and np.all(index["split"].notna())


# Corrupt headers: a value that swallowed its neighbours, a sequence where text belongs -------------
def _swallowing(keyword: str, until: str) -> bytes:
    """A PHI-laden slice whose ``keyword`` element's length is stretched over the elements up to
    and including ``until``'s value (a corrupt length: the value now holds their tags and text)."""
    from pydicom.datadict import tag_for_keyword

    data = bytearray(ct_bytes(**UIDS, **PHI, ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]))
    tag = tag_for_keyword(keyword)
    head = bytes([tag >> 16 & 0xFF, tag >> 24, tag & 0xFF, tag >> 8 & 0xFF])
    start = data.index(head)  # group, element (little endian), then VR and a 2-byte length
    end = data.index(PHI[until].encode(), start) + len(PHI[until])
    end += end % 2
    length = end - (start + 8)
    data[start + 6 : start + 8] = length.to_bytes(2, "little")
    return bytes(data)


def _nested(keyword: str) -> bytes:
    """A PHI-laden slice whose ``keyword`` (a text element) is a sequence holding patient data."""
    from dicom_factory import ct_dataset, to_bytes
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = ct_dataset(**UIDS)
    item = Dataset()
    item.PatientName, item.PatientID = PHI["PatientName"], PHI["PatientID"]
    item.PatientBirthDate = PHI["PatientBirthDate"]
    if keyword in ds:
        del ds[keyword]
    ds.add_new(keyword, "SQ", Sequence([item]))
    return to_bytes(ds)


CORRUPT_HEADERS = {
    # Modality's length over InstitutionName, ReferringPhysicianName: refused, never quoted
    "modality_swallows.dcm": (lambda: _swallowing("Modality", "ReferringPhysicianName"), 2),
    # ImageType's over SOP Instance UID, StudyDate, AccessionNumber: read, ImageType left out
    "imagetype_swallows.dcm": (lambda: _swallowing("ImageType", "AccessionNumber"), 0),
    "modality_sequence.dcm": (lambda: _nested("Modality"), 2),
    "kernel_sequence.dcm": (lambda: _nested("ConvolutionKernel"), 0),
    "slope_sequence.dcm": (lambda: _nested("RescaleSlope"), 2),
}


@pytest.mark.parametrize("name", sorted(CORRUPT_HEADERS))
def test_a_corrupt_header_shows_no_swallowed_or_nested_values(name, tmp_path, capsys, debug_log):
    """A value that swallowed the elements after it, or a sequence holding patient data where a
    whitelisted text belongs, is neither quoted in the error nor shown as metadata: inspect (text,
    JSON, DEBUG log) and predict's per-file error, as the pages and reports show them."""
    from tiny_models import tiny_model_path

    from hemo.dicom import NOT_SHOWN

    build, status = CORRUPT_HEADERS[name]
    path = tmp_path / name
    path.write_bytes(build())
    texts = []
    for argv in (["inspect", "--json", str(path)], ["inspect", str(path)]):
        assert cli.main(["-v", *argv]) == status
        texts.append("".join(capsys.readouterr()))
    model = str(tiny_model_path("display"))
    assert cli.main(["predict", "--json", "--model", model, str(path)]) == (1 if status else 0)
    texts.append("".join(capsys.readouterr()))
    texts.append(debug_log.text)
    for where, text in zip(("inspect json", "inspect", "predict", "log"), texts, strict=True):
        _assert_no_phi(text, f"{name}: {where}")
    if status:
        assert NOT_SHOWN in texts[0] and NOT_SHOWN in texts[2]
    else:
        metadata = json.loads(texts[0])["metadata"]
        left_out = "ImageType" if name.startswith("imagetype") else "ConvolutionKernel"
        assert left_out not in metadata and metadata["Modality"] == "CT"


def test_an_invalid_uid_is_not_echoed_by_pydicom_warnings(tmp_path, recwarn, debug_log):
    """A UID with a non-ASCII byte (pydicom's validation would warn with the whole UID, dates
    and all, on stderr and in its log) is read with no warning or log record carrying it."""
    from hemo.dicom import read_dicom

    uid = UIDS["study_uid"] + "\u00e9"
    path = tmp_path / "uid.dcm"
    path.write_bytes(ct_bytes(study_uid=uid, series_uid=UIDS["series_uid"], **PHI))
    scan = read_dicom(path)
    assert scan.study_uid.startswith("2.25.")
    _assert_no_phi(" ".join(str(w.message) for w in recwarn) + debug_log.text, "warnings")
