"""Tests of hemo.referral and the ``uncertain`` flag it gives predictions, reports and pages."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from tiny_models import tiny_model_path

from hemo.errors import ConfigError, DatasetError, ModelError
from hemo.evaluate import choose_threshold
from hemo.model import ModelCard
from hemo.referral import (
    band_for_margin,
    choose_band,
    nested_estimate,
    selective_metrics,
)

# The 10-case example of test_evaluate. At threshold 0.5 the two errors are 0.3 (a positive)
# and 0.7 (a negative). Distances |logit(p)| from the threshold, by hand:
#   0.6, 0.4: 0.405   0.3, 0.7: 0.847   0.8, 0.2: 1.386   0.15: 1.735   0.9, 0.1: 2.197   0.05: 2.944
Y10 = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P10 = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.15, 0.05])


#: How far (logit) under the middle image's probability the banded fixture puts its threshold.
TIE_GAP_LOGIT = 1e-3


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_choose_band_by_hand() -> None:
    """Deciding all: 8/10; referring 0.6 and 0.4: 6/8; also 0.3 and 0.7: 6/6. So 0.98 refers
    the four nearest, the margin midway between 0.847 and 1.386; a target of 0.8 refers none."""
    band = choose_band(Y10, P10, 0.5, 0.98)
    margin = (_logit(0.7) + _logit(0.8)) / 2
    assert band.margin_logit == pytest.approx(margin)
    assert (band.low, band.high) == pytest.approx((_sigmoid(-margin), _sigmoid(margin)))
    assert [band.refers(p) for p in P10] == [False, False, True, True, True, True] + [False] * 4
    assert band.target_accuracy == 0.98
    none = choose_band(Y10, P10, 0.5, 0.8)
    assert none.low == none.high == 0.5 and none.margin_logit == 0.0
    assert not any(none.refers(p) for p in P10)


def test_selective_metrics_by_hand() -> None:
    """The 0.98 band: 4 referred (both errors among them), the 6 decided all right."""
    band = choose_band(Y10, P10, 0.5, 0.98)
    m = selective_metrics(Y10, P10, 0.5, band)
    assert m == {
        "n": 10,
        "referred": 4,
        "decided": 6,
        "coverage": 0.6,
        "accuracy": 1.0,
        "sensitivity": 1.0,  # 0.9, 0.8 decided and called positive
        "specificity": 1.0,  # 0.2, 0.1, 0.15, 0.05
        "errors": 2,
        "errors_referred": 2,
        "errors_decided": 0,
        "positives_referred": 2,
        "negatives_referred": 2,
    }
    # At 0.35 the errors are 0.3 (missed), 0.4 and 0.7 (called positive); a band of margin
    # 0.3 in logit around it, (0.285, 0.421), refers 0.3 and 0.4 and decides 0.7 wrongly
    band = band_for_margin(0.35, 0.3, 0.98)
    m = selective_metrics(Y10, P10, 0.35, band)
    assert (m["referred"], m["errors"], m["errors_referred"], m["errors_decided"]) == (2, 3, 2, 1)
    assert m["accuracy"] == pytest.approx(7 / 8)


def test_ties_are_referred_together_and_confident_errors_leave_no_band() -> None:
    """Cases at one distance from the threshold share a fate; a model wrong with its most
    confident calls admits no band (a clear error, not a band that refers everything)."""
    y = np.array([1, 0, 1, 0])
    p = np.array([0.6, 0.4, 0.9, 0.1])  # 0.6 and 0.4 tie; all calls right
    band = choose_band(y, p, 0.5, 1.0)
    assert band.margin_logit == 0.0
    y_wrong_tie = np.array([1, 1, 1, 0])  # 0.4 is a missed positive: the tie goes as one
    band = choose_band(y_wrong_tie, p, 0.5, 1.0)
    assert band.refers(0.6) and band.refers(0.4) and not band.refers(0.9)
    with pytest.raises(DatasetError, match="most confident calls"):
        choose_band(np.array([0, 1, 1]), np.array([0.99, 0.01, 0.6]), 0.5, 0.98)
    with pytest.raises(ConfigError, match=r"\(0.5, 1\]"):
        choose_band(Y10, P10, 0.5, 0.4)
    with pytest.raises(DatasetError, match="without validation predictions"):
        choose_band([], [], 0.5)


def test_nested_estimate_chooses_each_folds_band_without_it() -> None:
    """Each fold's threshold and band come from the other folds: changing a fold's own labels
    leaves its band alone, and the pooled figures count its held-out outcomes."""
    rng = np.random.default_rng(3)
    y = np.repeat([1, 0], 40)
    p = np.clip(np.where(y == 1, rng.beta(4, 2, 80), rng.beta(2, 4, 80)), 0.01, 0.99)
    folds = np.arange(80) % 4
    result = nested_estimate(y, p, folds, "youden", 0.9, 0.9)
    assert [f["fold"] for f in result["per_fold"]] == [0, 1, 2, 3]
    for f in result["per_fold"]:
        rest = folds != f["fold"]
        t = choose_threshold(y[rest], p[rest])
        band = choose_band(y[rest], p[rest], t, 0.9)
        assert f["threshold"] == pytest.approx(t)
        assert (f["low"], f["high"]) == pytest.approx((band.low, band.high))
        held = folds == f["fold"]
        assert f["referred"] == int(np.sum((p[held] > band.low) & (p[held] < band.high)))
    assert result["referred"] == sum(f["referred"] for f in result["per_fold"])
    assert result["errors_decided"] == sum(f["errors_decided"] for f in result["per_fold"])
    assert result["n"] == 80 and result["folds_without_band"] == 0
    flipped = y.copy()
    flipped[folds == 0] = 1 - flipped[folds == 0]
    again = nested_estimate(flipped, p, folds, "youden", 0.9, 0.9)
    assert again["per_fold"][0]["low"] == result["per_fold"][0]["low"]
    assert again["per_fold"][0]["high"] == result["per_fold"][0]["high"]


def test_card_round_trip_and_malformed_bands_refused() -> None:
    """A card keeps its band through JSON; a band that does not hold the threshold, or lacks a
    field, fails when the card is read, naming the problem."""
    card = ModelCard.from_json(tiny_model_path("display").with_suffix(".json").read_text())
    band = band_for_margin(0.5, 1.0, 0.98, "a test")
    with_band = dataclasses.replace(card, referral=band.to_dict())
    again = ModelCard.from_json(with_band.to_json())
    assert again.parse_referral() == band
    assert card.parse_referral() is None
    moved = dataclasses.replace(card, threshold=0.9, referral=band.to_dict())
    with pytest.raises(ModelError, match="does not hold its threshold 0.9"):
        ModelCard.from_json(moved.to_json())
    broken = json.loads(with_band.to_json())
    del broken["referral"]["low"]
    with pytest.raises(ModelError, match="referral band is malformed"):
        ModelCard.from_dict(broken)


def test_config_key_is_checked() -> None:
    """``threshold.referral_accuracy``: 0 (off) or in (0.5, 1]; anything else is refused."""
    from hemo.train import resolve_config

    assert resolve_config({"data": "d"})["threshold"]["referral_accuracy"] == 0.98
    assert resolve_config({"data": "d", "threshold": {"referral_accuracy": 0}})
    for bad in (0.3, 1.5, True, "high"):
        with pytest.raises(ConfigError, match="referral_accuracy"):
            resolve_config({"data": "d", "threshold": {"referral_accuracy": bad}})


@pytest.fixture(scope="module")
def banded(head_ct_dir):
    """The tiny display model with a band drawn around two real images' probabilities: one
    inside it, one outside; (predictor, inside png, outside png)."""
    from hemo.predict import Predictor

    pngs = sorted((head_ct_dir / "head_ct").glob("*.png"))[:12]
    base = Predictor(tiny_model_path("display"), batch_size=4)
    results = base.predict(pngs)
    base_p = {r.source: r.probability for r in results}
    ordered = sorted(pngs, key=lambda f: base_p[str(f)])
    low, mid, high = ordered[0], ordered[len(ordered) // 2], ordered[-1]
    # just under the middle image, not on it: another path to the same probability (explain's
    # reloaded model, another CPU's kernels) differs by ~1e-7 and would flip a call on the tie
    threshold = _sigmoid(_logit(base_p[str(mid)]) - TIE_GAP_LOGIT)
    margin = (
        min(
            abs(_logit(base_p[str(high)]) - _logit(threshold)),
            abs(_logit(base_p[str(low)]) - _logit(threshold)),
        )
        / 2
    )
    assert margin > 2 * TIE_GAP_LOGIT, "the tiny model gives these images distinct probabilities"
    card = dataclasses.replace(
        base.card,
        threshold=threshold,
        referral=band_for_margin(threshold, margin, 0.98, "test").to_dict(),
    )
    predictor = Predictor.from_model(base.model, card, batch_size=4)
    yield predictor, mid, high
    predictor.close()
    base.close()


def test_predictions_reports_and_cli_text_flag_the_band(banded, capsys) -> None:
    """Inside the band ``uncertain`` is true, outside false; the JSON entry, the CSV report
    column and the text table say so."""
    from hemo.commands.predict import _text, payload
    from hemo.reports import prediction_row, report_frame

    predictor, inside, outside = banded
    a, b = predictor.predict([inside, outside])
    assert (a.uncertain, b.uncertain) == (True, False)
    assert a.to_dict()["uncertain"] is True and b.to_dict()["uncertain"] is False
    frame = report_frame([prediction_row(a), prediction_row(b)])
    assert frame["uncertain"].tolist() == [True, False]
    data = payload(
        "tiny", predictor.threshold, predictor.run([inside, outside]), predictor.referral
    )
    assert data["referral"] == predictor.referral.to_dict()
    text = _text(data).splitlines()
    assert text[0].startswith("Research tool, not a medical device")
    assert text[2].startswith(f"calls with P(any) between {predictor.referral.low:.3f}")
    rows = [line for line in text if line.startswith(str(inside)) or line.startswith(str(outside))]
    assert "[uncertain: refer]" in rows[0] and "uncertain" not in rows[1]


def test_explain_gives_the_verdict_and_flag_of_predict(banded, tmp_path, capsys) -> None:
    """``hemo explain`` on the same two images: the same probability, verdict and flag as
    ``hemo predict``, the card's band at the top; the text table marks the uncertain one."""
    import json

    from hemo.cli import main
    from hemo.model import save_model

    predictor, inside, outside = banded
    path = save_model(predictor.model, tmp_path / "banded", predictor.card)
    argv = ["explain", "--model", str(path), str(inside), str(outside), "--out", str(tmp_path)]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["referral"] == predictor.referral.to_dict()
    assert data["threshold"] == pytest.approx(predictor.threshold)
    for entry, expected in zip(data["results"], predictor.predict([inside, outside]), strict=True):
        assert entry["probability"] == pytest.approx(expected.probability, abs=1e-5)
        assert (entry["positive"], entry["uncertain"]) == (expected.positive, expected.uncertain)
    assert [e["uncertain"] for e in data["results"]] == [True, False]
    assert main(argv) == 0
    rows = capsys.readouterr().out.splitlines()[3:]  # the notice, the model, the header
    assert "[uncertain: refer]" in rows[0] and "uncertain" not in rows[1]


def test_series_and_study_follow_the_deciding_slice(banded, cq500_dir) -> None:
    """A real series (eight CQ500 slices): the study's ``uncertain`` is its deciding slice's
    flag, and the page's series summary agrees."""
    from hemo import dashboard
    from hemo.io import iter_scans
    from hemo.series import group_series

    predictor, _, _ = banded
    files = sorted(cq500_dir.glob("*.dcm"))[110:118]
    batch = predictor.run(files)
    (study,) = batch.studies
    assert study.uncertain == predictor.referral.refers(study.probability)
    deciding = next(r for r in batch.results if r.source == study.most_suspicious_source)
    assert study.uncertain == deciding.uncertain
    scans = [r.scan for r in iter_scans(files)]
    (series,) = group_series(scans)
    result = dashboard.predict_series(predictor, series)
    assert result.study["uncertain"] == predictor.referral.refers(result.study["probability"])
    assert [p.uncertain for p in result.predictions] == [
        predictor.referral.refers(p.probability) for p in result.predictions
    ]


def test_evaluate_reports_the_band_on_the_data(head_ct_dir, banded) -> None:
    """``hemo evaluate``'s report carries what the card's band does on the evaluated cases."""
    from hemo.datasets import load_index
    from hemo.evaluate import evaluate_model

    predictor, _, _ = banded
    index = load_index(head_ct_dir)
    report = evaluate_model(predictor.model, predictor.card, index, split="test")
    referral = report.to_dict()["referral"]
    assert referral["band"] == predictor.card.referral
    assert referral["n"] == report.n
    assert referral["referred"] + referral["decided"] == report.n
    assert referral["errors"] == report.confusion.fp + report.confusion.fn
    from hemo.commands.evaluate import _text

    line = next(t for t in _text(report.to_dict()).splitlines() if t.startswith("referral band"))
    assert f"{referral['referred']} of {referral['n']} referred" in line


def test_referral_message_quotes_the_card() -> None:
    """The page's sentence names the band, the threshold and the held-out figures."""
    from hemo.dashboard import referral_message

    card = ModelCard.from_json(tiny_model_path("display").with_suffix(".json").read_text())
    band = band_for_margin(0.5, 1.0, 0.98)
    card = dataclasses.replace(
        card,
        referral=band.to_dict(),
        metrics={
            "referral": {
                "nested": {
                    "referred": 30,
                    "n": 140,
                    "errors_referred": 6,
                    "errors": 9,
                    "accuracy": 0.9727,
                }  # fmt: skip
            }
        },
    )
    text = referral_message(card, 0.61, "series")
    assert "61.0%" in text and f"{band.low:.1%} to {band.high:.1%}" in text
    assert "Refer this series to a reader" in text
    assert "took 30 of 140 images and 6 of its 9 errors" in text and "97.3% right" in text


def test_crossval_report_section_and_its_text() -> None:
    """``hemo crossval``'s referral section: the band on the pooled OOF predictions, what it
    does there and held out; off with ``referral_accuracy = 0``; an error when out of reach."""
    from hemo.crossval import _referral, _referral_lines
    from hemo.train import resolve_config

    config = resolve_config({"data": "d"})
    folds = np.arange(10) % 2
    section = _referral(config, Y10, P10, 0.5, folds, "ten cases")
    band = choose_band(Y10, P10, 0.5, 0.98)
    assert section["band"] == {
        **band.to_dict(),
        "chosen_on": "pooled out-of-fold predictions: ten cases",
    }
    assert section["out_of_fold"] == selective_metrics(Y10, P10, 0.5, band)
    assert section["nested"] == nested_estimate(Y10, P10, folds, "youden", 0.9, 0.98)
    text = _referral_lines(section)
    assert (
        text[0]
        == f"referral band {band.low:.4f}-{band.high:.4f} (decided calls to reach accuracy 0.98 out-of-fold):"
    )
    assert text[1].startswith("  out-of-fold: 4 of 10 referred, 2 of 2 errors among them")
    off = resolve_config({"data": "d", "threshold": {"referral_accuracy": 0}})
    assert _referral(off, Y10, P10, 0.5, folds, "x") is None
    wrong = _referral(config, 1 - Y10, P10, 0.5, folds, "x")
    assert "most confident calls" in wrong["error"]
    assert _referral_lines(wrong) == [f"no referral band: {wrong['error']}"]


def test_home_page_sentence_on_the_band() -> None:
    """The Home page's line: the band, then the held-out figures when the card has them;
    nothing for a card without a band."""
    from hemo.dashboard import referral_summary

    band = band_for_margin(0.5, 1.0, 0.98).to_dict()
    nested = {"referred": 41, "n": 140, "errors_referred": 10, "errors": 13, "accuracy": 0.97}
    text = referral_summary({"referral": band, "metrics": {"referral": {"nested": nested}}})
    assert text == (
        f"Referral band: calls with P between {band['low']:.1%} and {band['high']:.1%} are "
        "flagged uncertain (refer to a reader); held out, it took 29% of the images and 10 of "
        "13 errors, and the other calls were 97.0% right."
    )
    assert referral_summary({"referral": band}).endswith("(refer to a reader).")
    assert referral_summary({"referral": None}) is None and referral_summary({}) is None


def test_training_page_sentence_on_a_runs_band() -> None:
    """A run's evaluation report with a referral block gives the Training page one sentence;
    a report without one gives none."""
    from hemo.monitor import run_report

    band = band_for_margin(0.5, 1.0, 0.98, "val split (8 images)")
    figures = selective_metrics(Y10, P10, 0.5, band)
    report = run_report({"threshold": 0.5, "referral": {"band": band.to_dict(), **figures}})
    assert report.referral == (
        f"Referral band P {band.low:.3f}-{band.high:.3f} (chosen on val split (8 images)): "
        f"{figures['referred']} of 10 calls referred, {figures['errors_referred']} of the 2 "
        f"errors among them; the {figures['decided']} decided calls "
        f"{figures['accuracy']:.1%} right."
    )
    assert run_report({"threshold": 0.5}).referral is None


def test_band_edges_are_decided_and_malformed_bands_refused() -> None:
    """Exactly at ``low`` or ``high`` a call is decided (the documented edges); a card whose band
    has a negative margin or an edge above 1 is refused; a target of 0.5 is no target."""
    from hemo.referral import ReferralBand

    band = band_for_margin(0.5, 0.847, 0.98)
    assert not band.refers(band.low) and not band.refers(band.high)
    assert band.refers((band.low + band.high) / 2)
    good = band.to_dict()
    assert ReferralBand.from_dict(good, 0.5) == band
    for broken in ({"margin_logit": -1.0}, {"high": 1.5}):
        with pytest.raises(ModelError, match="referral band"):
            ReferralBand.from_dict({**good, **broken}, 0.5)
    with pytest.raises(ConfigError, match=r"must be in \(0.5, 1\]"):
        choose_band(Y10, P10, 0.5, 0.5)


def test_cases_without_a_probability_are_not_counted() -> None:
    """A NaN probability (an image that failed) is neither decided nor referred."""
    band = band_for_margin(0.5, 0.5, 0.98)
    measured = selective_metrics([1, 0, 1], [0.9, 0.1, float("nan")], 0.5, band)
    assert measured["n"] == 2 and measured["decided"] == 2


def test_a_fold_whose_other_folds_admit_no_band_is_referred_whole() -> None:
    """Nested estimate: when the other folds are confidently wrong (no band reaches the target),
    every case of the held-out fold is referred, counted in ``folds_without_band``; the
    estimate never decides them (which would flatter it)."""
    y = [1, 1, 0, 0, 1, 1, 0, 0]
    p = [0.9, 0.8, 0.2, 0.1, 0.05, 0.1, 0.95, 0.9]  # fold 1 inverted, confidently
    folds = [0, 0, 0, 0, 1, 1, 1, 1]
    out = nested_estimate(y, p, folds, "youden", 0.9)
    assert out["folds_without_band"] >= 1
    fold0 = next(f for f in out["per_fold"] if f["fold"] == 0)
    assert fold0["referred"] == 4 and fold0["decided"] == 0 and fold0["errors_decided"] == 0
