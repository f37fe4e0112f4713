"""Tests of hemo.predict: the Predictor on real files, uploads, zipped series, errors, memory."""

from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tiny_models import tiny_model_path

from hemo import config
from hemo.errors import InputError, ModelError
from hemo.io import ScanResult
from hemo.predict import Prediction, Predictor, StudyPrediction

#: Slices of the zipped phantom series.
SERIES_SLICES = 5
#: RSS growth allowed over 200 predictions (issue 6).
MAX_RSS_GROWTH_BYTES = 50 * 1024 * 1024
RSS_PREDICTIONS = 200


@pytest.fixture(scope="module")
def display_predictor():
    """A predictor over a tiny display-grayscale model (accepts PNG and DICOM)."""
    with Predictor(tiny_model_path("display"), batch_size=4) as predictor:
        yield predictor


@pytest.fixture(scope="module")
def hu_predictor():
    """A predictor over a tiny six-label HU model (DICOM only)."""
    with Predictor(tiny_model_path("hu", config.RSNA_LABELS), batch_size=4) as predictor:
        yield predictor


@pytest.fixture(scope="module")
def pngs(head_ct_dir: Path) -> list[Path]:
    """Three real Kaggle head-CT PNGs."""
    return sorted((head_ct_dir / "head_ct").glob("*.png"))[:3]


@pytest.fixture(scope="module")
def series_zip(tmp_path_factory) -> tuple[bytes, list[float]]:
    """A zip (bytes) of one phantom series whose member names run against anatomical order."""
    from hemo.phantom import write_demo_dataset

    root = tmp_path_factory.mktemp("series")
    index = write_demo_dataset(root, n_studies=1, seed=3, slices_per_study=SERIES_SLICES, size=64)
    index = index.sort_values("slice_z")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for rank, path in enumerate(index["path"]):
            # Highest slice first by name: name order is the reverse of anatomical order
            archive.write(root / path, f"series/{SERIES_SLICES - rank:02d}.dcm")
    return buffer.getvalue(), sorted(index["slice_z"].astype(float))


def test_real_files_are_predicted_in_input_order(
    display_predictor, ct_small, cq500_uncompressed, pngs
):
    """CT_small, 693_UNCR and Kaggle PNGs give predictions in input order."""
    inputs = [pngs[0], ct_small, pngs[1], cq500_uncompressed, pngs[2]]
    results = display_predictor.predict(inputs)
    assert [r.source for r in results] == [str(p) for p in inputs]
    for result in results:
        assert isinstance(result, Prediction) and result.error is None
        assert 0.0 <= result.probability <= 1.0
        assert result.probabilities == {"any": result.probability}
        assert result.positive == (result.probability >= result.threshold)
    assert results[1].study_uid is not None and results[1].slice_z_mm is not None
    assert results[0].study_uid is None and results[0].index is None


def test_predictions_equal_the_bare_model_on_the_same_tensors(display_predictor, pngs, ct_small):
    """The predict path gives exactly what model(x) gives on to_model_input's tensors."""
    from hemo.io import read_scan
    from hemo.preprocess import to_model_input

    inputs = [*pngs, ct_small]
    x = np.stack([to_model_input(read_scan(p), display_predictor.spec) for p in inputs])
    expected = display_predictor.model(x, training=False).numpy()[:, 0]
    got = [r.probability for r in display_predictor.predict(inputs)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_one_model_call_per_batch(pngs, monkeypatch):
    """Seven images at batch size 3 take three model calls, not seven."""
    with Predictor(tiny_model_path("display"), batch_size=3) as predictor:
        calls: list[int] = []
        forward = predictor._forward

        def counting(x):
            calls.append(int(x.shape[0]))
            return forward(x)

        monkeypatch.setattr(predictor, "_forward", counting)
        results = predictor.predict([*pngs, *pngs, pngs[0]])
    assert len(results) == 7
    assert calls == [3, 3, 1]


def test_uploads_as_name_and_bytes(display_predictor, pngs, ct_small):
    """(name, bytes) uploads are predicted under their upload names."""
    uploads = [("a.png", pngs[0].read_bytes()), ("scan", ct_small.read_bytes())]
    results = display_predictor.predict(uploads)
    assert [r.source for r in results] == ["a.png", "scan"]
    assert all(isinstance(r, Prediction) for r in results)
    single = display_predictor.predict(("one.png", pngs[0].read_bytes()))
    assert len(single) == 1 and single[0].probability == pytest.approx(results[0].probability)


def test_zipped_series_gives_an_ordered_study(display_predictor, series_zip):
    """A zipped phantom series: one result per member, one study with slices inferior -> superior."""
    data, z_sorted = series_zip
    batch = display_predictor.run([("series.zip", data)])
    assert len(batch.results) == SERIES_SLICES and batch.n_failed == 0
    assert [r.source for r in batch.results][0] == "series.zip/series/01.dcm"
    (study,) = batch.studies
    assert isinstance(study, StudyPrediction) and study.n_slices == SERIES_SLICES
    by_index = sorted(batch.results, key=lambda r: r.index)
    assert [r.slice_z_mm for r in by_index] == pytest.approx(z_sorted)
    assert study.slice_sources == tuple(r.source for r in by_index)
    assert study.slice_probabilities == pytest.approx([r.probability for r in by_index])
    assert study.probability == pytest.approx(max(study.slice_probabilities))
    assert study.slice_probabilities[study.most_suspicious_index] == study.probability
    assert study.positive == (study.probability >= study.threshold)
    # Member 01 is the most superior slice, so it is last in anatomical order
    assert batch.results[0].index == SERIES_SLICES - 1
    # predict() gives the same per-image results, series positions included
    assert display_predictor.predict([("series.zip", data)]) == list(batch.results)


def test_a_zip_is_read_ahead_one_scan_at_a_time(display_predictor, series_zip, pngs, tmp_path):
    """A zip (upload or file) is walked scan by scan, one pool task each, so the read-ahead
    bound holds inside it (one task for the whole zip held every prepared tensor of it: a
    56 KB zip of multi-frame members took 3 GB); single files stay one task each."""
    data, _ = series_zip
    (tmp_path / "s.zip").write_bytes(data)
    for item in (("series.zip", data), tmp_path / "s.zip"):
        tasks = list(display_predictor._tasks([item, pngs[0]]))
        assert len(tasks) == SERIES_SLICES + 1
        assert all(len(task()) == 1 for task in tasks)
    assert len(list(display_predictor._tasks(pngs))) == len(pngs)


def test_a_series_over_the_slice_limit_costs_no_other_input_its_result(
    display_predictor, series_zip, pngs, monkeypatch
):
    """A series with more slices than config.MAX_SLICES_PER_SERIES (lowered here to fit the
    phantom series) is pooled with a note saying so; it and every other input keep their
    results (it used to end the whole run with one error and no output)."""
    data, _ = series_zip
    monkeypatch.setattr(config, "MAX_SLICES_PER_SERIES", SERIES_SLICES - 1)
    batch = display_predictor.run([("series.zip", data), pngs[0]])
    assert len(batch.results) == SERIES_SLICES + 1 and batch.n_failed == 0
    (study,) = batch.studies
    assert study.n_slices == SERIES_SLICES
    assert f"has {SERIES_SLICES} slices, more than the limit of {SERIES_SLICES - 1}" in study.note
    assert batch.results[-1].source == str(pngs[0])


def test_series_verdict_leaves_out_slices_outside_the_range(series_zip, ct_small, pngs):
    """With a slice range in the card, slices under it carry the reason, the study pools the
    others (``probability_all_slices`` keeps every slice); none in range pools all with a note;
    a lone DICOM slice gets the soft-tissue rule; a card without a range flags nothing."""
    import dataclasses

    from hemo.anatomy import SliceRange, scan_anatomy
    from hemo.io import iter_scans

    data, _ = series_zip
    scans = [r.scan for r in iter_scans([("series.zip", data)])]
    fractions = {s.source: scan_anatomy(s).soft_tissue_fraction for s in scans}
    cut = float(np.median(list(fractions.values())))
    base = Predictor(tiny_model_path("display"), batch_size=4)
    try:
        for minimum, expect_note in ((cut, False), (1.0, True)):
            card = dataclasses.replace(
                base.card, slice_range=SliceRange(minimum, 0.0, minimum, 1).to_dict()
            )
            with Predictor.from_model(base.model, card) as predictor:
                batch = predictor.run([("series.zip", data)])
            (study,) = batch.studies
            out = {r.source: r.outside_range is not None for r in batch.results}
            assert out == {name: f < minimum for name, f in fractions.items()}
            inside = [r.probability for r in batch.results if not out[r.source]] or [
                r.probability for r in batch.results
            ]
            assert study.probability == pytest.approx(max(inside))
            # per label and top-k pool the same slices: the k highest in-range ones
            assert study.probabilities["any"] == pytest.approx(study.probability)
            top = sorted(inside, reverse=True)[: study.top_k]
            assert study.top_k_mean == pytest.approx(float(np.mean(top)))
            assert study.probability_all_slices == pytest.approx(max(study.slice_probabilities))
            assert study.slices_in_range == sum(not o for o in out.values())
            assert len(study.outside_range_indices) == sum(out.values())
            assert (study.note is not None) == expect_note
            assert study.to_dict()["outside_range_indices"] == list(study.outside_range_indices)
        card = dataclasses.replace(base.card, slice_range=SliceRange(1.0, 0.0, 1.0, 1).to_dict())
        with Predictor.from_model(base.model, card) as predictor:
            lone, image = predictor.predict([ct_small, pngs[0]])
        assert lone.outside_range.startswith("soft tissue is")
        assert image.outside_range.startswith("soft tissue is")  # images are measured too
        assert lone.to_dict()["outside_range"] == lone.outside_range
        assert all(r.outside_range is None for r in base.run([("series.zip", data)]).results)
    finally:
        base.close()


def test_folder_input_walks_files_in_name_order(display_predictor, pngs, ct_small, tmp_path):
    """A folder: scans in name order, non-scan files skipped, the DICOM pooled as a series."""
    (tmp_path / "b.png").write_bytes(pngs[0].read_bytes())
    (tmp_path / "a").write_bytes(ct_small.read_bytes())
    (tmp_path / "notes.txt").write_text("not a scan")
    batch = display_predictor.run([tmp_path, pngs[1]])
    assert [r.source for r in batch.results] == [
        str(tmp_path / "a"),
        str(tmp_path / "b.png"),
        str(pngs[1]),
    ]
    assert batch.n_failed == 0 and len(batch.studies) == 1
    assert batch.studies[0].slice_sources == (str(tmp_path / "a"),)


def test_bad_file_among_good_ones(display_predictor, pngs, tmp_path):
    """A broken file gives an error entry in its place; the others are still predicted."""
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a scan at all" * 10)
    results = display_predictor.predict([pngs[0], bad, pngs[1]])
    assert isinstance(results[0], Prediction) and isinstance(results[2], Prediction)
    assert isinstance(results[1], ScanResult) and results[1].name == str(bad)
    assert isinstance(results[1].error, InputError)
    assert "not a DICOM, PNG, JPEG, TIFF or NIfTI file" in str(results[1].error)


def test_hu_model_refuses_png_with_a_clear_message(hu_predictor, pngs, ct_small):
    """An HU model gives a per-file error for a PNG and predicts the DICOM beside it."""
    results = hu_predictor.predict([pngs[0], ct_small])
    assert isinstance(results[0], ScanResult)
    assert "HU" in str(results[0].error) and str(pngs[0]) in str(results[0].error)
    assert isinstance(results[1], Prediction)
    assert set(results[1].probabilities) == set(config.RSNA_LABELS)
    assert results[1].probability == results[1].probabilities["any"]


def test_concurrent_callers_get_their_own_results(display_predictor, pngs, ct_small):
    """Four threads predicting different inputs at once get what sequential calls give."""
    inputs = [[pngs[0]], [ct_small], [pngs[1], pngs[2]], [pngs[2], ct_small]]
    expected = [[r.probability for r in display_predictor.predict(i)] for i in inputs]
    got: list[list[float] | None] = [None] * len(inputs)

    def work(k: int) -> None:
        for _ in range(5):
            got[k] = [r.probability for r in display_predictor.predict(inputs[k])]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(len(inputs)):
        assert got[k] == pytest.approx(expected[k])


def test_closed_predictor_refuses_work(pngs):
    """A closed predictor raises ModelError instead of hanging."""
    predictor = Predictor(tiny_model_path("display"))
    predictor.close()
    with pytest.raises(ModelError, match="this Predictor was closed"):
        predictor.predict([pngs[0]])


def test_close_waits_for_a_run_in_progress(pngs, cq500_dir):
    """close() from another thread while a run is going: the run finishes with every result
    (its pools are not pulled away), then the predictor refuses work."""
    import time

    predictor = Predictor(tiny_model_path("display"), batch_size=2, workers=1)
    files = [*pngs, *sorted(cq500_dir.glob("*.dcm"))[100:124]]
    out: list = []
    runner = threading.Thread(target=lambda: out.append(predictor.predict(files)))
    runner.start()
    deadline = time.monotonic() + 60
    while predictor._running == 0 and runner.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    predictor.close()
    runner.join()
    (results,) = out
    assert len(results) == len(files) and all(r.error is None for r in results)
    with pytest.raises(ModelError, match="this Predictor was closed"):
        predictor.predict([pngs[0]])


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_rss_does_not_grow_over_200_predictions(display_predictor, pngs, ct_small):
    """200 single-upload predictions grow RSS by less than 50 MB."""
    uploads = [("a.png", pngs[0].read_bytes()), ("b.dcm", ct_small.read_bytes())]
    for k in range(20):  # warm-up: allocator pools, thread stacks
        display_predictor.predict([uploads[k % 2]])
    before = _rss_bytes()
    for k in range(RSS_PREDICTIONS):
        display_predictor.predict([uploads[k % 2]])
    growth = _rss_bytes() - before
    assert growth < MAX_RSS_GROWTH_BYTES, f"RSS grew {growth / 2**20:.1f} MB"


def test_study_pooling_with_a_range_needs_the_anatomies() -> None:
    from hemo.anatomy import SliceRange
    from hemo.errors import ConfigError
    from hemo.predict import study_predictions

    with pytest.raises(ConfigError, match="a slice_range needs one anatomy per slice"):
        study_predictions([], [], slice_range=SliceRange(0.5, 0.0, 0.5, 1))
