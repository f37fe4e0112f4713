"""Tests of hemo.evaluate: metrics against hand-computed values, thresholds, model evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_models import tiny_model_path

from hemo import config
from hemo.errors import ConfigError, DatasetError
from hemo.evaluate import (
    MAX_CURVE_POINTS,
    binary_metrics,
    bootstrap_ci,
    brier_score,
    choose_threshold,
    evaluate_model,
    evaluate_predictions,
    expected_calibration_error,
    report_resamples,
    rsna_weighted_log_loss,
    select_threshold,
    study_scores,
    training_overlap,
)

# A fixed 10-case example. At threshold 0.5 the calls are 1 1 1 0 | 1 0 0 0 0 0, so by hand:
#   TP = 3 (0.9, 0.8, 0.6), FN = 1 (0.3), FP = 1 (0.7), TN = 5.
Y10 = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P10 = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.15, 0.05])


def test_binary_metrics_match_hand_computed_values() -> None:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1 and the confusion matrix match by hand."""
    m = binary_metrics(Y10, P10, threshold=0.5)
    assert (m.confusion.tn, m.confusion.fp, m.confusion.fn, m.confusion.tp) == (5, 1, 1, 3)
    assert m.confusion.matrix() == [[5, 1], [1, 3]]
    assert (m.n, m.positives) == (10, 4)
    assert m.accuracy == pytest.approx(8 / 10)
    assert m.sensitivity == pytest.approx(3 / 4)
    assert m.specificity == pytest.approx(5 / 6)
    assert m.ppv == pytest.approx(3 / 4)
    assert m.npv == pytest.approx(5 / 6)
    assert m.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m.notes == ()


def test_threshold_free_metrics_match_hand_computed_values() -> None:
    """ROC AUC (21 of 24 pairs), average precision and Brier match by hand."""
    m = binary_metrics(Y10, P10, threshold=0.5)
    # Positives outrank 6 + 6 + 5 + 4 = 21 of the 4 x 6 = 24 negatives
    assert m.roc_auc == pytest.approx(21 / 24)
    # Precision at each positive in score order: 1/1, 2/2, 3/4, 4/6
    assert m.pr_auc == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    # Squared errors: positives .01 .04 .16 .49, negatives .49 .16 .04 .01 .0225 .0025
    assert m.brier == pytest.approx(1.425 / 10)
    # Bins 9 8 6 3 7 4 2 | 1 (0.1, 0.15 -> |0 - 0.125| x 2) | 0
    assert m.ece == pytest.approx(0.30)


def test_curves_run_from_corner_to_corner_and_are_thinned() -> None:
    """ROC starts at (0, 0), ends at (1, 1); long curves keep at most MAX_CURVE_POINTS points."""
    m = binary_metrics(Y10, P10, threshold=0.5)
    assert (m.roc.x[0], m.roc.y[0], m.roc.x[-1], m.roc.y[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert m.pr.x[0] == 1.0 and m.pr.y[-1] == 1.0
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    p = np.clip(0.3 * y + rng.random(5000) * 0.7, 0, 1)
    big = binary_metrics(y, p, threshold=0.5)
    assert len(big.roc.x) <= MAX_CURVE_POINTS and len(big.pr.x) <= MAX_CURVE_POINTS
    assert (big.roc.x[0], big.roc.y[-1]) == (0.0, 1.0)
    assert len(big.roc.x) == len(big.roc.y) == len(big.roc.thresholds)


def test_ece_and_brier_on_known_inputs() -> None:
    """ECE is 0 for calibrated bins and 0.25 for two half-wrong bins; Brier is the mean square."""
    assert expected_calibration_error([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.0)
    y, p = [0, 1, 1, 1], [0.25, 0.25, 0.75, 0.75]
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.25 + 0.5 * 0.25)
    assert brier_score(y, p) == pytest.approx((0.0625 + 0.5625 + 0.0625 + 0.0625) / 4)
    assert expected_calibration_error([1], [1.0]) == pytest.approx(0.0)


def test_rsna_weighted_log_loss_on_known_examples() -> None:
    """RSNA loss: ln 2 at p = 0.5; any x2 weighting; unknown labels left out."""
    labels = config.RSNA_LABELS
    assert rsna_weighted_log_loss(np.ones((3, 6)), np.full((3, 6), 0.5), labels) == pytest.approx(
        math.log(2)
    )
    y = np.array([[1, 0, 0, 0, 0, 0]], dtype=float)
    p = np.array([[0.8, 0.1, 0.1, 0.1, 0.1, 0.1]])
    # (2 x -ln 0.8 + 5 x -ln 0.9) / 7
    assert rsna_weighted_log_loss(y, p, labels) == pytest.approx(0.13901281155965012)
    y_unknown = np.array([[1, np.nan, np.nan, np.nan, np.nan, np.nan]])
    assert rsna_weighted_log_loss(y_unknown, p, labels) == pytest.approx(0.2231435513142097)
    with pytest.raises(ValueError, match="no RSNA weight for label"):
        rsna_weighted_log_loss(y, p, ("any", "a", "b", "c", "d", "e"))


def test_single_class_gives_none_with_a_reason() -> None:
    """All-negative labels: AUCs and sensitivity are None with reasons, no crash."""
    m = binary_metrics([0, 0, 0, 0], [0.1, 0.7, 0.2, 0.3], threshold=0.5)
    assert m.roc_auc is None and m.pr_auc is None and m.sensitivity is None
    assert m.specificity == pytest.approx(3 / 4)
    assert any("ROC AUC undefined" in note and "negative" in note for note in m.notes)
    assert any("sensitivity undefined" in note for note in m.notes)
    assert m.roc.x == () and m.pr.x == ()
    positive_only = binary_metrics([1, 1], [0.9, 0.2], threshold=0.5)
    assert positive_only.roc_auc is None and positive_only.pr_auc == pytest.approx(1.0)
    json.dumps(evaluate_predictions([0, 0], [0.1, 0.2], 0.5).to_dict(), allow_nan=False)


def test_no_cases_and_bad_inputs_are_refused() -> None:
    """Empty input raises DatasetError; labels outside {0, 1} raise ValueError."""
    with pytest.raises(DatasetError, match="no cases with a known 'any' label"):
        binary_metrics([], [], threshold=0.5)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        binary_metrics([0, 2], [0.1, 0.2], threshold=0.5)
    with pytest.raises(ValueError, match=r"probabilities must be finite and within \[0, 1\]"):
        binary_metrics([0, 1], [0.1, 1.2], threshold=0.5)


def test_choose_threshold_youden_and_sensitivity_by_hand() -> None:
    """Youden peaks at score 0.3 (J = 2/3) -> midway to 0.2; 0.7 sensitivity -> midway 0.6/0.4."""
    assert choose_threshold(Y10, P10, "youden") == pytest.approx(0.25)
    assert choose_threshold(Y10, P10, "sensitivity", target=0.95) == pytest.approx(0.25)
    assert choose_threshold(Y10, P10, "sensitivity", target=0.7) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="unknown threshold method 'f1'"):
        choose_threshold(Y10, P10, "f1")
    with pytest.raises(DatasetError, match="validation split has 0 positive and 3 negative"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3])


def test_choose_threshold_for_a_model_that_separates_nothing_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Scores that rank the validation classes backwards: calling nothing positive is best,
    the threshold is 1.0 and the log says why (a saturated P of exactly 1.0 stays positive)."""
    with caplog.at_level("WARNING", logger="hemo.evaluate"):
        assert choose_threshold([0, 0, 1, 1], [1.0, 1.0, 0.2, 0.3]) == 1.0
    assert "Youden's J <= 0: the model does not separate its classes" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hemo.evaluate"):
        choose_threshold(Y10, P10)
    assert caplog.text == ""


def test_study_scores_max_and_top_k_mean() -> None:
    """Study pooling: label = any slice, score = max and mean of the top 3 (or fewer) slices."""
    y = [0, 1, 0, 0, 0, 0, 1, 1]
    p = [0.1, 0.9, 0.2, 0.3, 0.35, 0.4, 0.6, 0.05]
    uids = ["s1", "s1", "s1", "s2", "s2", "s2", "s3", "s3"]
    studies, ys, p_max, p_top = study_scores(y, p, uids, top_k=3)
    assert studies == ["s1", "s2", "s3"]
    assert ys.tolist() == [1, 0, 1]
    assert p_max == pytest.approx([0.9, 0.4, 0.6])
    assert p_top == pytest.approx([0.4, 0.35, 0.325])
    report = evaluate_predictions(y, p, 0.5, study_uids=uids)
    assert report.n_studies == 3 and report.study_max.roc_auc == pytest.approx(1.0)
    assert report.study_top_k.confusion.matrix() == [[1, 0], [2, 0]]


def test_study_scores_pool_only_slices_in_range() -> None:
    """Out-of-range slices do not score their study (unless none is in range); labels keep
    every slice; a flag count that does not fit is refused."""
    y = [0, 0, 0, 1, 1]
    p = [0.95, 0.2, 0.3, 0.9, 0.1]
    uids = ["s1", "s1", "s1", "s2", "s2"]
    inside = [False, True, True, False, False]
    _, ys, p_max, p_top = study_scores(y, p, uids, top_k=2, in_range=inside)
    assert ys.tolist() == [0, 1]
    assert p_max == pytest.approx([0.3, 0.9]) and p_top == pytest.approx([0.25, 0.5])
    report = evaluate_predictions(y, p, 0.5, study_uids=uids, in_range=inside)
    assert report.study_max.confusion.matrix() == [[1, 0], [0, 1]]
    assert any("3 slice(s) outside the model's slice range" in n for n in report.notes)
    with pytest.raises(ValueError, match="2 range flags for 5 cases"):
        study_scores(y, p, uids, in_range=[True, False])


def _brute_force_ci(y, p, threshold, n=2000, seed=5):
    """Percentile intervals from explicit stratified index resamples and scikit-learn."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    values: dict[str, list[float]] = {"accuracy": [], "sensitivity": [], "roc_auc": []}
    for _ in range(n):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        yy, pp = y[idx], p[idx]
        values["accuracy"].append(float(((pp >= threshold) == yy).mean()))
        values["sensitivity"].append(float((pp[yy == 1] >= threshold).mean()))
        values["roc_auc"].append(float(roc_auc_score(yy, pp)))
    return {k: np.percentile(v, [2.5, 97.5]) for k, v in values.items()}


def test_bootstrap_ci_agrees_with_explicit_resampling_and_narrows_with_more_cases() -> None:
    """bootstrap_ci's weighted resamples give the intervals of explicit index resamples scored
    by scikit-learn (ties in the scores included), each interval holds the point estimate, and
    four times the cases give about half the width."""
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    p = np.round(np.clip(np.r_[rng.normal(0.65, 0.2, 40), rng.normal(0.35, 0.2, 40)], 0, 1), 1)
    ci = bootstrap_ci(y, p, 0.5)
    brute = _brute_force_ci(y, p, 0.5)
    point = binary_metrics(y, p, 0.5)
    for name in ("accuracy", "sensitivity", "roc_auc"):  # Monte-Carlo noise: one step of 1/40
        np.testing.assert_allclose(ci[name], brute[name], atol=0.026)
    for name in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        low, high = ci[name]
        assert low <= getattr(point, name) <= high and high - low > 0.05
    wide = bootstrap_ci(np.tile(y, 4), np.tile(p, 4), 0.5)
    for name in ("accuracy", "roc_auc"):
        ratio = (wide[name][1] - wide[name][0]) / (ci[name][1] - ci[name][0])
        assert 0.35 < ratio < 0.65, (name, ratio)
    assert bootstrap_ci(y, p, 0.5) == ci  # seeded


def test_bootstrap_ci_edge_cases() -> None:
    """Perfectly separated scores give AUC [1, 1]; equal scores [0.5, 0.5]; one class gives
    None for what it cannot measure; bad settings are refused; large sets use fewer resamples."""
    assert bootstrap_ci(Y10, np.where(Y10 == 1, 0.9, 0.1), 0.5)["roc_auc"] == [1.0, 1.0]
    assert bootstrap_ci(Y10, np.full(10, 0.4), 0.5)["roc_auc"] == [0.5, 0.5]
    only_negatives = bootstrap_ci(np.zeros(6), np.linspace(0, 1, 6), 0.5, n_resamples=50)
    assert only_negatives["sensitivity"] is None and only_negatives["roc_auc"] is None
    assert only_negatives["specificity"] is not None
    with pytest.raises(ValueError, match="n_resamples >= 1 and level in"):
        bootstrap_ci(Y10, P10, 0.5, level=1.0)
    assert report_resamples(140) == 2000 and report_resamples(100_000) == 200
    assert report_resamples(20_000) == 1000


def test_evaluate_predictions_reports_intervals_in_json() -> None:
    """evaluate_predictions carries the headline label's bootstrap intervals in its JSON."""
    report = evaluate_predictions(Y10, P10, 0.5)
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["ci95"] == bootstrap_ci(Y10, P10, 0.5)
    low, high = payload["ci95"]["accuracy"]
    assert low <= 0.8 <= high


def test_training_overlap_names_in_sample_evaluations(tmp_path: Path, tiny_display) -> None:
    """A card trained on every image of a folder makes any split of that folder in-sample; a
    card with train/val/test splits only its train, val and all; another folder, or the test
    split, is held out; an index file stands for its folder, and an extra_train folder counts."""
    import dataclasses

    _, card = tiny_display
    data, other, extra = tmp_path / "kaggle", tmp_path / "other", tmp_path / "phantoms"
    final = dataclasses.replace(card, training={"data": str(data), "images": {"train": 140}})
    for split in ("test", "val", "all"):
        note = training_overlap(final, data, split)
        assert note and "trained on every image" in note and "(140 images)" in note
    assert "in-sample" in training_overlap(final, data / "index.parquet", "test")
    assert training_overlap(final, other, "test") is None
    run = dataclasses.replace(
        card,
        training={
            "data": str(data),
            "images": {"train": 100, "val": 20, "test": 20},
            "extra_train": {"data": str(extra), "images": 56},
        },
    )
    assert training_overlap(run, data, "test") is None
    assert "trained on the 'train' split" in training_overlap(run, data, "train")
    assert "trained on the 'train' split" in training_overlap(run, data, "all")
    assert "chosen on the 'val' split" in training_overlap(run, data, "val")
    assert "mixed into its training" in training_overlap(run, extra, "test")
    assert training_overlap(dataclasses.replace(card, training={}), data, "test") is None


def test_evaluate_predictions_multilabel_per_label_and_rsna() -> None:
    """A six-label report carries per-label metrics and the RSNA loss; JSON is strict."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (20, 6)).astype(float)
    y[:, 0] = y[:, 1:].max(axis=1)
    y[:3, 0] = [0, 1, 0]
    p = np.clip(0.5 * y + 0.5 * rng.random((20, 6)), 0, 1)
    report = evaluate_predictions(y, p, 0.5, labels=config.RSNA_LABELS, split="test")
    assert set(report.per_label) == set(config.RSNA_LABELS)
    assert report.rsna_log_loss == pytest.approx(rsna_weighted_log_loss(y, p, config.RSNA_LABELS))
    assert report.roc_auc == report.per_label["any"].roc_auc
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["per_label"]["subdural"]["n"] == 20 and payload["split"] == "test"


@pytest.fixture(scope="module")
def head_ct_index(head_ct_dir: Path) -> pd.DataFrame:
    """The Kaggle head-CT sample's index (real PNGs, seeded 100/20/20 split)."""
    from hemo.datasets import load_index

    return load_index(head_ct_dir)


@pytest.fixture(scope="module")
def tiny_display():
    """A tiny display-grayscale model and its card."""
    from hemo.model import load_model

    return load_model(tiny_model_path("display"))


def test_select_threshold_ignores_test_labels(head_ct_index, tiny_display) -> None:
    """Shuffling and flipping the test labels leaves the chosen threshold unchanged."""
    model, card = tiny_display
    before = select_threshold(model, card, head_ct_index, method="youden")
    scrambled = head_ct_index.copy()
    test = scrambled["split"] == "test"
    scrambled.loc[test, "label_any"] = 1 - scrambled.loc[test, "label_any"].to_numpy()
    scrambled.loc[test, "path"] = scrambled.loc[test, "path"].sample(frac=1, random_state=3).values
    after = select_threshold(model, card, scrambled, method="youden")
    assert after == before and 0.0 <= before <= 1.0
    with pytest.raises(ConfigError, match="thresholds are chosen on the 'val' split only"):
        select_threshold(model, card, head_ct_index, split="test")


def test_evaluate_model_on_real_pngs(head_ct_index, tiny_display) -> None:
    """evaluate_model predicts the 20 test PNGs and reports at the card's threshold."""
    model, card = tiny_display
    report = evaluate_model(model, card, head_ct_index, split="test", batch_size=8)
    assert (report.n, report.positives, report.n_failed) == (21, 11, 0)
    assert report.threshold == card.threshold and report.split == "test"
    assert report.study_max is None and report.rsna_log_loss is None
    assert report.roc_auc is not None and 0.0 <= report.roc_auc <= 1.0
    broken = head_ct_index.copy()
    first_test = broken.index[broken["split"] == "test"][0]
    broken.loc[first_test, "path"] = str(Path(broken.loc[first_test, "path"]).with_name("no.png"))
    partial = evaluate_model(model, card, broken, split="test")
    assert (partial.n, partial.n_failed) == (20, 1) and "no such file" in partial.failed[0]
    assert any("1 image(s) could not be read" in note for note in partial.notes)
    assert not any("could not be read" in note for note in report.notes)
    with pytest.raises(DatasetError, match="the index has no 'holdout' rows"):
        evaluate_model(model, card, head_ct_index, split="holdout")


def test_evaluate_model_on_phantom_series_has_study_level_and_rsna(tmp_path: Path) -> None:
    """A six-label HU model on phantom series reports study-level results and the RSNA loss."""
    from hemo.model import load_model
    from hemo.phantom import write_demo_dataset

    index = write_demo_dataset(tmp_path, n_studies=6, seed=0, slices_per_study=4, size=64)
    index["path"] = [str(tmp_path / p) if not Path(p).is_absolute() else p for p in index["path"]]
    model, card = load_model(tiny_model_path("hu", config.RSNA_LABELS))
    report = evaluate_model(model, card, index, split="val")
    assert report.n == int((index["split"] == "val").sum())
    assert report.n_studies == index.loc[index["split"] == "val", "study_uid"].nunique()
    assert report.study_max is not None and report.study_top_k is not None
    assert report.study_max.n == report.n_studies
    assert report.rsna_log_loss is not None and report.rsna_log_loss > 0
    assert set(report.per_label) == set(config.RSNA_LABELS)
    # With a slice range that leaves every slice out, the study scores still pool every slice
    # (none is in range) and the report says how many were outside
    import dataclasses

    from hemo.anatomy import SliceRange

    ranged = dataclasses.replace(card, slice_range=SliceRange(1.0, 0.0, 1.0, 1).to_dict())
    strict = evaluate_model(model, ranged, index, split="val")
    assert strict.study_max.to_dict() == report.study_max.to_dict()
    assert any(f"{report.n} slice(s) outside" in n for n in strict.notes)


# Edge rules pinned (each of these once survived a deliberate bug) ---------------------------------
def test_study_label_is_the_max_over_every_slice_even_outside_the_range() -> None:
    """A study whose only bleed slice lies outside the range is still a positive study: the
    range pools the scores, never the label; slices without a study UID are left out, not
    pooled into a study of their own."""
    uids, labels, p_max, _ = study_scores(
        [1, 0, 0, 1],
        [0.9, 0.2, 0.3, 0.8],
        ["s", "s", "s", None],
        in_range=[False, True, True, True],
    )
    assert uids == ["s"] and labels.tolist() == [1] and p_max.tolist() == [0.3]


def test_study_metrics_need_a_study_of_several_slices() -> None:
    """Every study one slice: the study-level metrics would repeat the slice ones; a note says so."""
    report = evaluate_predictions([0, 1, 0], [0.2, 0.8, 0.3], 0.5, study_uids=["a", "b", "c"])
    assert report.study_max is None
    assert any("every study has one slice" in note for note in report.notes)


def test_calibration_puts_probability_one_in_the_last_bin() -> None:
    """P = 1.0 shares the top bin with 0.9 (ECE 0.45 here; an 11th bin would give 0.55)."""
    assert expected_calibration_error([0, 1], [1.0, 0.9]) == pytest.approx(0.45)


def test_sensitivity_target_met_exactly_keeps_the_higher_threshold() -> None:
    """Sensitivity 0.75 reached exactly at 0.5 (3 of 4 bleeds): that threshold, not a lower one."""
    assert choose_threshold(Y10, P10, "sensitivity", 0.75) == pytest.approx(0.5)


def test_an_unknown_any_label_is_a_dataset_error() -> None:
    with pytest.raises(DatasetError, match="'any' label is unknown"):
        evaluate_predictions([0.0, float("nan")], [0.2, 0.7], 0.5)


def test_rows_without_an_any_label_are_left_out_of_threshold_and_evaluation(
    head_ct_index, tiny_display
) -> None:
    """A val or test row whose ``label_any`` is unknown (NaN) is left out of the threshold
    choice and of the evaluation (both crashed on it), and the rest is used as before."""
    model, card = tiny_display
    unknown = head_ct_index.copy()
    for split in ("val", "test"):
        first = unknown.index[unknown["split"] == split][0]
        unknown.loc[first, "label_any"] = np.nan
    without = head_ct_index.drop(unknown.index[unknown["label_any"].isna()])
    assert select_threshold(model, card, unknown) == select_threshold(model, card, without)
    report = evaluate_model(model, card, unknown, split="test", batch_size=8)
    assert report.n == int((head_ct_index["split"] == "test").sum()) - 1
