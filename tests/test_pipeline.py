"""Tests of hemo.pipeline: one preprocessing path, seeded train-only augmentation, class weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hemo.config import RSNA_LABELS
from hemo.datasets import load_index
from hemo.errors import DatasetError
from hemo.pipeline import (
    Augment,
    class_weights,
    label_matrix,
    labels_for,
    load_inputs,
    make_dataset,
)
from hemo.preprocess import InputSpec

SPEC = InputSpec(size=32)


@pytest.fixture(scope="module")
def index(phantom_dir: Path) -> pd.DataFrame:
    """The phantom fixture's index (absolute paths)."""
    return load_index(phantom_dir)


def _first_batch(ds) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(t) for t in next(iter(ds)))


def test_validation_batches_are_the_preprocessed_inputs(index: pd.DataFrame) -> None:
    """Validation data is to_model_input of each file, in index order, with no augmentation."""
    rows = index.iloc[:8]
    x, y = _first_batch(make_dataset(rows, SPEC, RSNA_LABELS, batch_size=8))
    np.testing.assert_array_equal(x, load_inputs(list(rows["path"]), SPEC))
    np.testing.assert_array_equal(y, label_matrix(rows, RSNA_LABELS))


def test_augmentation_is_seeded(index: pd.DataFrame) -> None:
    """Same seed gives the same augmented batch; another seed gives another one."""

    def batch(seed: int) -> np.ndarray:
        ds = make_dataset(index, SPEC, RSNA_LABELS, 8, True, Augment(seed=seed), seed=seed)
        return _first_batch(ds)[0]

    first, again, other = batch(3), batch(3), batch(4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.min() >= 0.0 and first.max() <= 1.0


def test_augmentation_changes_training_images(index: pd.DataFrame) -> None:
    """With strength 1 the training batch differs from the same rows unaugmented."""
    rows = index.iloc[:8]
    plain = make_dataset(rows, SPEC, ("any",), 8, True, Augment(strength=0.0), seed=1)
    augmented = make_dataset(rows, SPEC, ("any",), 8, True, Augment(strength=1.0), seed=1)
    x_plain, x_aug = _first_batch(plain)[0], _first_batch(augmented)[0]
    assert x_plain.shape == x_aug.shape == (8, *SPEC.input_shape)
    assert not np.allclose(x_plain, x_aug)


def test_class_weights_balance_the_train_split() -> None:
    """Weights are n / (2 n_class) so both classes weigh the same in total."""
    df = pd.DataFrame({"label_any": [0, 0, 0, 1]})
    assert class_weights(df) == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}
    assert class_weights(pd.DataFrame({"label_any": [0, 0]})) == {0: 1.0, 1: 1.0}


def test_training_batches_carry_sample_weights(index: pd.DataFrame) -> None:
    """Training batches are (x, y, w) with w from the class weight of each row's any label."""
    weights = {0: 0.5, 1: 3.0}
    _, y, w = _first_batch(make_dataset(index, SPEC, ("any",), 16, True, None, weights=weights))
    np.testing.assert_array_equal(w, np.where(y[:, 0] == 1, 3.0, 0.5))


def test_labels_follow_the_dataset() -> None:
    """Six RSNA labels when every subtype is known, else the binary any."""
    full = pd.DataFrame({c: [0] for c in ("label_any", *RSNA_LABELS[1:])})
    assert labels_for(full) == RSNA_LABELS
    assert labels_for(full.assign(subdural=[None])) == ("any",)
    assert labels_for(pd.DataFrame({"label_any": [1]})) == ("any",)


def test_unknown_labels_are_refused() -> None:
    """A label column with unknown values cannot be trained on."""
    df = pd.DataFrame({"label_any": [1, 0], "subdural": [1, None]})
    with pytest.raises(DatasetError, match="'subdural' has 1 unknown values"):
        label_matrix(df, ("any", "subdural"))


def test_empty_rows_are_refused() -> None:
    """An empty split gives a DatasetError, not an empty dataset."""
    with pytest.raises(DatasetError, match="no rows"):
        make_dataset(pd.DataFrame({"path": [], "label_any": []}), SPEC, ("any",))
