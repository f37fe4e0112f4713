"""hemo.dashboard: what the pages ask of hemo, run headless."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from dashboard_fixtures import (
    DISPLAY_MODEL,
    HU_MODEL,
    PHANTOM_SLICES,
    make_finished_run,
    make_models,
    make_phantoms,
    zip_bytes,
)

from hemo import dashboard, runs
from hemo.datasets import load_index
from hemo.errors import HemoError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """A tiny phantom dataset."""
    return make_phantoms(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Two tiny untrained models with cards."""
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def predictors(models):
    """Predictors of the tiny models, closed after the module."""
    from hemo.predict import Predictor

    loaded = {name: Predictor(models / f"{name}.keras") for name in (HU_MODEL, DISPLAY_MODEL)}
    yield loaded
    for predictor in loaded.values():
        predictor.close()


def test_list_models_puts_the_preferred_first_and_adds_finished_runs(models, tmp_path, monkeypatch):
    """Shipped models with cards come first (preferred one on top), then finished runs' models."""
    monkeypatch.setenv(dashboard.ENV_DEFAULT_MODEL, DISPLAY_MODEL)
    run_path = make_finished_run(tmp_path / "runs", "r1")
    (run_path / runs.MODEL_FILE).write_bytes((models / f"{HU_MODEL}.keras").read_bytes())
    (models / "orphan.keras").write_bytes(b"no card beside me")
    entries = dashboard.list_models(models, tmp_path / "runs")
    assert [e.label for e in entries] == [DISPLAY_MODEL, HU_MODEL, "run r1"]
    assert entries[-1].origin == "run"
    (models / "orphan.keras").unlink()


def test_a_shipped_model_named_like_a_run_does_not_hide_the_run(models, tmp_path):
    """A shipped ``run r1.keras`` and run r1 both get a label of their own, each naming its own
    file, so picking one never loads the other."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for suffix in (".keras", ".json"):
        (shipped / f"run r1{suffix}").write_bytes((models / f"{HU_MODEL}{suffix}").read_bytes())
    run_path = make_finished_run(tmp_path / "runs", "r1")
    (run_path / runs.MODEL_FILE).write_bytes((models / f"{DISPLAY_MODEL}.keras").read_bytes())
    entries = dashboard.list_models(shipped, tmp_path / "runs")
    by_label = {e.label: e.path for e in entries}
    assert by_label == {
        "run r1 (shipped)": shipped / "run r1.keras",
        "run r1 (run)": run_path / runs.MODEL_FILE,
    }


def test_measured_on_reads_as_text_for_the_shipped_phantom_card():
    """A card whose measured_on is a table (phantom_rsna3) is spelled out, not a Python dict."""
    from hemo.config import MODELS_DIR

    text = dashboard.card_summary(MODELS_DIR / "phantom_rsna3.keras")["measured_on"]
    assert "{" not in text and "'" not in text
    assert text.startswith("demo data: n studies 48, seed 2, slices per study 6, size 512; ")
    assert "split all" in text and "command hemo evaluate --model models/phantom_rsna3" in text
    assert dashboard.measured_text("140 Kaggle images") == "140 Kaggle images"


def test_card_summary_reads_the_json_without_keras(models):
    """The card summary gives name, input, threshold and test metrics."""
    card = dashboard.card_summary(models / f"{HU_MODEL}.keras")
    assert card["name"] == HU_MODEL and card["threshold"] == 0.5
    assert card["input"].startswith("HU windows brain+subdural+soft_tissue")
    assert card["metrics"] == {"roc_auc": 0.75, "sensitivity": 0.8}
    with pytest.raises(HemoError, match="cannot read the model card"):
        dashboard.card_summary(models / "missing.keras")


def test_card_summary_of_a_cross_validated_card(tmp_path):
    """A card measured by cross-validation shows its pooled out-of-fold metrics and what they
    were measured on (not counts, not nested per-fold tables)."""
    pooled = {"n": 140, "accuracy": 0.96, "roc_auc": 0.97, "sensitivity": 0.95, "brier": 0.05}
    metrics = {
        "measured_on": "5-fold CV, out-of-fold",
        "mean_std_over_folds": {"accuracy": {"mean": 0.9, "std": 0.1}},
        "pooled_out_of_fold": pooled,
    }
    (tmp_path / "cv.json").write_text(json.dumps({"name": "cv", "metrics": metrics}))
    card = dashboard.card_summary(tmp_path / "cv.keras")
    assert card["metrics"] == {"accuracy": 0.96, "roc_auc": 0.97, "sensitivity": 0.95}
    assert list(card["metrics"]) == ["accuracy", "roc_auc", "sensitivity"]
    assert card["measured_on"] == "5-fold CV, out-of-fold"


def test_card_summary_says_when_the_threshold_was_chosen_on_the_figures_own_predictions():
    """The shipped real-scan card's accuracy is at a threshold picked on the same out-of-fold
    predictions: the summary says so and gives the nested count of errors; the phantom card,
    measured on a test split, needs no such note."""
    from hemo.config import MODELS_DIR

    card = json.loads((MODELS_DIR / "headct_real.json").read_text())
    nested = card["metrics"]["referral"]["nested"]
    note = dashboard.card_summary(MODELS_DIR / "headct_real.keras")["threshold_note"]
    n, errors = nested["n"], nested["errors"]
    assert note.startswith("Accuracy, sensitivity and specificity are at a threshold chosen")
    assert f"{errors} of {n} calls were wrong (accuracy {(n - errors) / n:.3f})" in note
    assert dashboard.card_summary(MODELS_DIR / "phantom_rsna3.keras")["threshold_note"] is None
    assert dashboard.threshold_note({"threshold_from": "pooled out-of-fold (youden)"}) == (
        "Accuracy, sensitivity and specificity are at a threshold chosen on these same "
        "out-of-fold predictions, so slightly optimistic (ROC AUC needs no threshold)."
    )


def test_card_summary_names_an_ensemble(tmp_path):
    """A merged ensemble's card shows how many models it averages."""
    card = {"name": "ens", "architecture": "compact", "training": {"ensemble": {"members": 5}}}
    (tmp_path / "ens.json").write_text(json.dumps(card))
    assert dashboard.card_summary(tmp_path / "ens.keras")["architecture"] == (
        "compact, ensemble of 5"
    )
    (tmp_path / "ens.json").write_text(json.dumps(card | {"density": {"weight": 0.5}}))
    assert dashboard.card_summary(tmp_path / "ens.keras")["architecture"] == (
        "compact, ensemble of 5, blended with density features"
    )


def test_the_heatmap_of_a_blended_model_says_the_map_is_not_all_the_evidence():
    """A card that blends density features gets the caption; a plain one none."""
    from types import SimpleNamespace

    assert dashboard.density_caption(SimpleNamespace(density={"weight": 0.5})) == (
        dashboard.DENSITY_CAPTION
    )
    assert dashboard.density_caption(SimpleNamespace(density=None)) is None
    # a subtype's map: its probability is the network's, not blended
    assert dashboard.density_caption(SimpleNamespace(density={"weight": 0.5}), "subdural") is None


def test_open_dataset_detects_layout_and_refuses_missing(phantoms, tmp_path):
    """A phantom folder opens as layout phantom; a missing path names itself."""
    view = dashboard.open_dataset(phantoms)
    assert view.layout == "phantom" and len(view.index) == 16
    with pytest.raises(HemoError, match="no such file or folder"):
        dashboard.open_dataset(tmp_path / "nowhere")


def test_a_manifest_csv_opened_as_a_file_is_named_a_manifest(phantoms, tmp_path):
    """A manifest CSV typed as the dataset path shows layout "manifest", not "index"."""
    index = load_index(phantoms / "index.parquet")
    csv = tmp_path / "list.csv"
    index[["path", "label_any"]].head(6).to_csv(csv, index=False)
    view = dashboard.open_dataset(csv)
    assert view.layout == "manifest" and len(view.index) == 6
    assert dashboard.open_dataset(phantoms / "index.parquet").layout == "index"


def test_samples_are_a_bleed_a_healthy_slice_and_cq500(phantoms):
    """The three samples give DICOM bytes: positive phantom, negative phantom, 693_UNCR.dcm."""
    index = load_index(phantoms / "index.parquet")
    index = index.set_index(index["path"].map(lambda p: Path(p).name))
    bleed_name, bleed = dashboard.sample_input(dashboard.SAMPLE_BLEED, phantoms)
    healthy_name, _ = dashboard.sample_input(dashboard.SAMPLE_HEALTHY, phantoms)
    assert index.loc[bleed_name, "label_any"] == 1 and bleed[128:132] == b"DICM"
    assert index.loc[healthy_name, "label_any"] == 0
    name, data = dashboard.sample_input(dashboard.SAMPLE_CQ500)
    assert name == "693_UNCR.dcm" and data[128:132] == b"DICM"
    with pytest.raises(HemoError, match="unknown sample"):
        dashboard.sample_input("nope")


def test_decode_groups_a_zipped_series_and_reports_bad_files(phantoms):
    """A zip of one study becomes one ordered series; a bad file is an error naming it."""
    index = load_index(phantoms / "index.parquet")
    study = index[index["study_uid"] == index["study_uid"].iloc[0]]
    files = [
        ("study.zip", zip_bytes([Path(p) for p in study["path"]], "study")),
        ("broken.dcm", b"\x00" * 300),
    ]
    decoded = dashboard.decode(files)
    assert len(decoded.series) == 1 and len(decoded.series[0].slices) == PHANTOM_SLICES
    z = [s.slice_z_mm for s in decoded.series[0].slices]
    assert z == sorted(z)
    assert [name for name, _ in decoded.errors] == ["broken.dcm"]
    assert "broken.dcm" in decoded.errors[0][1]
    assert dashboard.series_name(decoded.series[0]) == "study.zip/study"


def test_decode_keeps_lone_scans_in_upload_order(cq500_uncompressed, head_ct_dir):
    """Two lone DICOM slices and a PNG come out in the order they were dropped (the DICOM
    slices, grouped by series, used to come after every image)."""
    from pydicom.data import get_testdata_file

    small = Path(get_testdata_file("CT_small.dcm", download=False))
    png = head_ct_dir / "head_ct" / "120.png"
    files = [(p.name, p.read_bytes()) for p in (small, cq500_uncompressed, png)]
    decoded = dashboard.decode(files)
    assert [Path(s.source).name for s in decoded.singles] == [
        "CT_small.dcm",
        "693_UNCR.dcm",
        "120.png",
    ]


def test_decode_keeps_at_most_the_pixel_budget_of_one_file(phantoms, monkeypatch):
    """The app caches a decoded upload set: past config.MAX_PIXELS_PER_FILE pixels (lowered
    here to two slices' worth) further scans are errors saying why, the first ones are kept."""
    from hemo import config

    index = load_index(phantoms / "index.parquet")
    paths = [Path(p) for p in index["path"][:3]]
    files = [(p.name, p.read_bytes()) for p in paths]
    side = dashboard.decode(files[:1]).singles[0].hu.shape[0]
    monkeypatch.setattr(config, "MAX_PIXELS_PER_FILE", 2 * side * side)
    decoded = dashboard.decode(files)
    kept = len(decoded.singles) + sum(len(s.slices) for s in decoded.series)
    assert kept == 2 and [name for name, _ in decoded.errors] == [paths[2].name]
    assert "the app keeps at most" in decoded.errors[0][1]


def test_a_series_over_the_slice_limit_is_shown_slice_by_slice_without_its_uid(
    phantoms, monkeypatch
):
    """More slices in one series than config.MAX_SLICES_PER_SERIES: a notice in plain words
    (no Series UID pseudonym), every slice shown alone, nothing counted as failed."""
    from hemo import config

    index = load_index(phantoms / "index.parquet")
    study = [Path(p) for p in index.loc[index["study_uid"] == index["study_uid"].iloc[0], "path"]]
    monkeypatch.setattr(config, "MAX_SLICES_PER_SERIES", 2)
    decoded = dashboard.decode([("s.zip", zip_bytes(study))])
    assert decoded.errors == () and decoded.series == () and len(decoded.singles) == len(study)
    ((_, message),) = decoded.notices
    assert message == (
        f"{len(study)} slices of one series are more than a series may hold (2, "
        f"config.MAX_SLICES_PER_SERIES): the {len(study)} slices are shown one by one, without "
        "a series verdict."
    )


def test_a_duplicate_slice_breaks_up_only_its_own_series(phantoms):
    """Two studies uploaded together, one holding the same slice twice (in the zip and again
    on its own): that series is shown slice by slice with a notice naming both copies, the
    other stays one series."""
    index = load_index(phantoms / "index.parquet")
    uids = index["study_uid"].unique()
    first = [Path(p) for p in index.loc[index["study_uid"] == uids[0], "path"]]
    second = [Path(p) for p in index.loc[index["study_uid"] == uids[1], "path"]]
    files = [
        ("first.zip", zip_bytes(first, "first")),
        ("again.dcm", first[0].read_bytes()),
        ("second.zip", zip_bytes(second, "second")),
    ]
    decoded = dashboard.decode(files)
    assert [dashboard.series_name(s) for s in decoded.series] == ["second.zip/second"]
    assert len(decoded.series[0].slices) == len(second)
    assert len(decoded.singles) == len(first) + 1
    # Every slice was read, so nothing failed: a notice, in plain words, naming both copies
    assert decoded.errors == ()
    ((name, message),) = decoded.notices
    copies = f"first.zip/first/{first[0].name} and again.dcm"
    assert message.startswith(f"{copies} lie at the same place in their series (z = ")
    assert "the same slice uploaded twice?" in message and "shown one by one" in message
    assert "series 2.25." not in message and "(0020,0032)" not in message
    assert name == f"series of {len(first) + 1} slices"
    # Its heading says the count once ("series of 4 slices — 4 slices" before)
    assert dashboard.series_title(name, len(first) + 1) == name
    assert dashboard.series_title("second.zip/second", 3) == "second.zip/second — 3 slices"


def test_content_key_depends_on_bytes_and_names():
    """The cache key changes with the bytes or the name, not otherwise."""
    a = dashboard.content_key([("a.dcm", b"123")])
    assert a == dashboard.content_key([("a.dcm", b"123")])
    assert a != dashboard.content_key([("a.dcm", b"124")])
    assert a != dashboard.content_key([("b.dcm", b"123")])


def test_analyse_gives_probability_and_heatmap(phantoms, predictors):
    """A phantom slice gives a probability matching the predictor and a [0, 1] heatmap."""
    name, data = dashboard.sample_input(dashboard.SAMPLE_BLEED, phantoms)
    scan = dashboard.decode([(name, data)]).singles[0]
    predictor = predictors[HU_MODEL]
    result = dashboard.analyse(predictor, scan, method="gradcam", label="any")
    expected = predictor.predict([(name, data)])[0].probability
    assert result.prediction.probability == pytest.approx(expected, abs=1e-5)
    assert set(result.prediction.probabilities) == set(predictor.labels)
    assert result.heatmap.dtype == np.float32 and result.heatmap.max() <= 1.0
    picture = dashboard.overlay_image(result, alpha=0.5, colormap="jet")
    side = dashboard.OVERLAY_VIEW_SIZE  # drawn on the model-input geometry, not the raw slice
    assert picture.shape == (side, side, 3) and picture.dtype == np.uint8
    assert len(dashboard.subtype_frame(result.prediction)) == len(predictor.labels) - 1


def test_analyse_refuses_a_png_for_an_hu_model(predictors):
    """A PNG given to a model of HU windows raises a HemoError naming the file."""
    from dashboard_fixtures import PNG_SIDE_PX

    from hemo.reports import png_bytes

    png = png_bytes(np.full((PNG_SIDE_PX, PNG_SIDE_PX), 0.5, dtype=np.float32))
    scan = dashboard.decode([("head.png", png)]).singles[0]
    with pytest.raises(HemoError, match="head.png: model expects HU windows"):
        dashboard.analyse(predictors[HU_MODEL], scan)
    assert dashboard.analyse(predictors[DISPLAY_MODEL], scan).prediction.source == "head.png"


def test_predict_series_pools_to_the_highest_slice(phantoms, predictors):
    """Series probability is the highest slice; the strip has one bar per slice."""
    index = load_index(phantoms / "index.parquet")
    study = index[index["study_uid"] == index["study_uid"].iloc[0]]
    series = dashboard.decode([("s.zip", zip_bytes([Path(p) for p in study["path"]]))]).series[0]
    result = dashboard.predict_series(predictors[HU_MODEL], series)
    assert result.study["probability"] == pytest.approx(result.probabilities.max(), abs=1e-6)
    assert result.most_suspicious == int(np.argmax(result.probabilities))
    strip = dashboard.strip_frame(result)
    assert strip["slice"].tolist() == list(range(1, PHANTOM_SLICES + 1))


def test_a_series_with_slices_missing_says_so_on_the_page_and_in_hemo_predict(tmp_path, predictors):
    """Two middle slices of an 8-slice phantom study left out: the series' study summary (the
    page, the reports) and hemo predict's study both say it looks incomplete; the whole study
    does not."""
    from hemo.phantom import write_demo_dataset

    write_demo_dataset(tmp_path, n_studies=1, seed=5, slices_per_study=8, size=64)
    whole = sorted((tmp_path / "stage_2_train").glob("*.dcm"))
    series = dashboard.decode([("s.zip", zip_bytes(whole))]).series[0]
    kept = [s.source for k, s in enumerate(series.slices) if k not in (3, 4)]
    part = [p for p in whole if any(name.endswith(p.name) for name in kept)]
    predictor = predictors[HU_MODEL]
    assert dashboard.predict_series(predictor, series).study["note"] is None
    partial = dashboard.decode([("p.zip", zip_bytes(part))]).series[0]
    note = dashboard.predict_series(predictor, partial).study["note"]
    assert note.startswith("the series looks incomplete: 1 gap(s) in the slice positions")
    (cli_study,) = predictor.run([str(p) for p in part]).studies
    assert cli_study.note == note


def test_predict_series_reports_progress_batch_by_batch(phantoms, predictors):
    """A series predicted in batches of two reports each batch done, the last at 1.0; the
    result's probabilities are read-only (a cached result is shared between sessions)."""
    from hemo.predict import Predictor

    index = load_index(phantoms / "index.parquet")
    study = index[index["study_uid"] == index["study_uid"].iloc[0]]
    series = dashboard.decode([("s.zip", zip_bytes([Path(p) for p in study["path"]]))]).series[0]
    base = predictors[HU_MODEL]
    calls: list[tuple[float, str]] = []
    with Predictor.from_model(base.model, base.card, batch_size=2) as predictor:
        result = dashboard.predict_series(
            predictor, series, lambda f, what: calls.append((f, what))
        )
    n = len(series.slices)
    done = list(range(2, n, 2)) + [n]
    assert calls == [(k / n, f"slice {k} of {n}") for k in done]
    assert not result.probabilities.flags.writeable


def test_predict_series_leaves_slices_outside_the_range_out_of_the_verdict(phantoms, predictors):
    """With a slice range in the card, slices under it are flagged, greyed in the strip and left
    out of the study verdict; a single slice gets the soft-tissue reason from analyse."""
    import dataclasses

    from hemo.anatomy import SliceRange, scan_anatomy
    from hemo.predict import Predictor

    index = load_index(phantoms / "index.parquet")
    study = index[index["study_uid"] == index["study_uid"].iloc[0]]
    series = dashboard.decode([("s.zip", zip_bytes([Path(p) for p in study["path"]]))]).series[0]
    fractions = [scan_anatomy(s).soft_tissue_fraction for s in series.slices]
    cut = float(np.median(fractions))
    base = predictors[DISPLAY_MODEL]
    card = dataclasses.replace(
        base.card, slice_range=SliceRange(cut, 0.0, min(fractions), 1).to_dict()
    )
    predictor = Predictor.from_model(base.model, card)
    try:
        result = dashboard.predict_series(predictor, series)
        out = [f < cut for f in fractions]
        assert [p.outside_range is not None for p in result.predictions] == out
        assert 0 < sum(out) < len(out)
        inside = result.probabilities[~np.array(out)]
        assert result.study["probability"] == pytest.approx(inside.max(), abs=1e-6)
        assert result.study["slices_in_range"] == len(out) - sum(out)
        assert not out[result.most_suspicious]
        strip = dashboard.strip_frame(result)
        assert strip["in_range"].tolist() == [not o for o in out]
        assert set(strip.loc[strip["in_range"], "status"]) == {dashboard.IN_RANGE_LABEL}
        assert f"{sum(out)} of {len(out)} slices" in dashboard.range_caption(result.study)
        first_out = out.index(True)
        single = dashboard.analyse(predictor, series.slices[first_out])
        assert single.prediction.outside_range.startswith("soft tissue is")
    finally:
        predictor.close()


def test_window_views_and_probe(phantoms):
    """Chosen, default and composite views have the slice's shape; the probe reads HU."""
    name, data = dashboard.sample_input(dashboard.SAMPLE_HEALTHY, phantoms)
    scan = dashboard.decode([(name, data)]).singles[0]
    views = dashboard.window_views(scan, 40, 80)
    assert views.chosen.shape == scan.hu.shape and views.composite.shape == (*scan.hu.shape, 3)
    assert [n for n, _ in views.channels] == ["brain", "subdural", "soft_tissue"]
    assert dashboard.probe_hu(scan.hu, 3, 4) == float(scan.hu[3, 4])
    with pytest.raises(IndexError, match="outside the 128x128 image"):
        dashboard.probe_hu(scan.hu, 128, 0)


def test_dataset_studies_are_ordered_by_position(phantoms):
    """Each study lists its files by slice position, labelled without UIDs."""
    index = load_index(phantoms / "index.parquet")
    studies = dashboard.dataset_studies(index)
    assert len(studies) == 4 and all(len(s.paths) == PHANTOM_SLICES for s in studies)
    z = index.set_index("path").loc[list(studies[0].paths), "slice_z"].tolist()
    assert z == sorted(z)
    assert "1." not in studies[0].label


def test_metadata_frame_is_text():
    """Metadata become a field/value table of strings."""
    frame = dashboard.metadata_frame({"Modality": "CT", "Rows": 512, "Missing": None})
    assert frame.to_dict("list") == {
        "field": ["Modality", "Rows", "Missing"],
        "value": ["CT", "512", ""],
    }


def test_synthetic_training_message_only_for_phantom_trained_cards():
    """The shipped phantom model (trained and tested on hemo demo-data) gets the warning that
    its calls on real scans are not findings; the real-scan model and a card without any
    training record do not."""
    from hemo.config import MODELS_DIR
    from hemo.model import read_card

    phantom = read_card(MODELS_DIR / "phantom_rsna3.keras")
    message = dashboard.synthetic_training_message(phantom)
    assert message.startswith("phantom_rsna3 was trained and tested on synthetic phantoms only")
    assert "headct_real" in message
    assert dashboard.synthetic_training_message(read_card(MODELS_DIR / "headct_real.keras")) is None
    older = dataclasses.replace(
        phantom, training={k: v for k, v in phantom.training.items() if k != "layout"}
    )
    assert dashboard.synthetic_training_message(older) is not None  # its demo-data test set
    real = dataclasses.replace(phantom, training={**phantom.training, "layout": "rsna"})
    assert dashboard.synthetic_training_message(real) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "not a hemo model card: no name"),
        ('{"hello": 1}', "not a hemo model card: no name"),
        ('{"name": "m", "threshold": "x"}', "model card is malformed (ValueError"),
        ('{"name": "m", "referral": {"low": 0.2}}', "model card is malformed (KeyError"),
        ("\udcff", "cannot read the model card"),
    ],
)
def test_card_summary_names_a_damaged_card(tmp_path, text, message):
    """Home's card facts: a card that is a list, not a card, or has fields of the wrong kind
    is one HemoError naming the card file (it was a traceback on Home)."""
    card = tmp_path / "m.json"
    card.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(HemoError, match=re.escape(message)) as caught:
        dashboard.card_summary(tmp_path / "m.keras")
    assert str(card) in str(caught.value)


def test_a_series_slice_is_named_and_its_overlay_file_carries_its_number():
    """The slice panel of a series says which slice it shows (place, file, position) and the
    overlay download of two slices of one series never shares a name."""
    from hemo.predict import Prediction

    p = Prediction("study.zip/s/CT000010.dcm", 0.4, {"any": 0.4}, False, 0.5, slice_z_mm=12.345)
    assert dashboard.slice_caption(38, p) == "slice 38 · CT000010.dcm · z 12.3 mm"
    framed = Prediction("multi.dcm", 0.4, {"any": 0.4}, False, 0.5, frame=3)
    assert dashboard.slice_caption(3, framed) == "slice 3 · multi.dcm (frame 3)"
    assert dashboard.overlay_file_name("s/CT000010.dcm", "gradcam", 38) == (
        "CT000010_slice038_gradcam.png"
    )
    assert dashboard.overlay_file_name("head.png", "gradcam") == "head_gradcam.png"


def test_a_heatmap_of_an_unlikely_output_says_it_marks_no_lesion():
    """Under the threshold the heatmap gets a note that its colours are no lesion (for the
    explained output: a subtype's own probability); at or over it, or flat, none."""
    from hemo.predict import Prediction

    def analysis(p_any: float, label: str = "any", flat: bool = False):
        prediction = Prediction("x.dcm", p_any, {"any": p_any, "subdural": 0.9}, False, 0.5)
        return dashboard.Analysis(
            name="x.dcm",
            prediction=prediction,
            display=np.zeros((4, 4), np.float32),
            heatmap=np.zeros((4, 4), np.float32),
            flat=flat,
            method="gradcam",
            label=label,
        )

    note = dashboard.unlikely_map_note(analysis(0.004), 0.5)
    assert note.startswith("The model finds any unlikely here (P 0.4 %)") and "not a lesion" in note
    assert dashboard.unlikely_map_note(analysis(0.5), 0.5) is None
    assert dashboard.unlikely_map_note(analysis(0.004, flat=True), 0.5) is None
    assert dashboard.unlikely_map_note(analysis(0.004, "subdural"), 0.5) is None  # P 0.9
