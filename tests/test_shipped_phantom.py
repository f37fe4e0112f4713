"""Tests for the shipped phantom model models/phantom_rsna3.keras and its card."""

from __future__ import annotations

import json

import pytest

from hemo.config import MODELS_DIR, RSNA_LABELS

MODEL_PATH = MODELS_DIR / "phantom_rsna3.keras"
CARD_PATH = MODELS_DIR / "phantom_rsna3.json"
MAX_MODEL_BYTES = 25 * 1024 * 1024
#: Re-evaluation may differ from the card only by CPU floating-point noise.
METRIC_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def card() -> dict:
    """The shipped card as JSON."""
    return json.loads(CARD_PATH.read_text())


def test_model_file_within_budget_and_card_matches(card: dict) -> None:
    """The model is at most 25 MB, loads safely, and its card matches it (six RSNA labels, HU)."""
    from hemo.model import load_model

    assert MODEL_PATH.stat().st_size <= MAX_MODEL_BYTES
    model, loaded = load_model(MODEL_PATH)
    assert loaded.labels == RSNA_LABELS
    assert loaded.input_spec.mode == "hu"
    assert model.output_shape[-1] == len(RSNA_LABELS)
    assert card["metrics"]["measured_on"]["split"] == "all"
    assert card["metrics"]["measured_on"]["demo_data"]["seed"] != card["training"]["seed"]


@pytest.mark.slow
def test_reevaluated_on_its_seeded_test_set_scores_what_the_card_says(
    card: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Regenerating the unseen seeded phantom set the card names reproduces its test metrics."""
    from hemo.evaluate import evaluate_model
    from hemo.model import load_model
    from hemo.phantom import write_demo_dataset

    recipe = card["metrics"]["measured_on"]["demo_data"]
    out = tmp_path_factory.mktemp("phantom_train")
    index = write_demo_dataset(out, progress=False, **recipe)
    index = index.assign(path=[str(out / p) for p in index["path"]])
    model, loaded = load_model(MODEL_PATH)
    report = evaluate_model(
        model, loaded, index, split=card["metrics"]["measured_on"]["split"]
    ).to_dict()
    expected = card["metrics"]["test"]
    assert report["n"] == expected["n"]
    assert report["positives"] == expected["positives"]
    for metric in (
        "roc_auc",
        "accuracy",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
        "pr_auc",
        "brier",
        "ece",
        "rsna_log_loss",
    ):
        assert report[metric] == pytest.approx(expected[metric], abs=METRIC_TOLERANCE), metric
    assert report["study_max"]["roc_auc"] == pytest.approx(
        expected["study_max_roc_auc"], abs=METRIC_TOLERANCE
    )
    assert report["per_label"].keys() == expected["per_label_roc_auc"].keys()
    for label, auc in expected["per_label_roc_auc"].items():
        got = report["per_label"][label]["roc_auc"]
        assert got == pytest.approx(auc, abs=METRIC_TOLERANCE), label
