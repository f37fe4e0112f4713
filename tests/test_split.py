"""Patient-grouped, stratified, seeded splits (hemo.datasets.split)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hemo.datasets import assign_splits  # the contract's import (hemo.datasets.split defines it)
from hemo.errors import ConfigError, DatasetError


def _frame(n_patients: int, seed: int = 0, positive_share: float = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        positive = p < round(n_patients * positive_share)
        for s in range(int(rng.integers(1, 6))):
            rows.append(
                {"patient_id": f"P{p:03d}", "slice": s, "label_any": int(positive and s % 2 == 0)}
            )
    return pd.DataFrame(rows)


def test_no_patient_straddles_two_splits() -> None:
    """Every patient's rows land in exactly one split, and every row gets a split."""
    out = assign_splits(_frame(60), seed=3)
    assert out["split"].notna().all()
    assert set(out["split"]) == {"train", "val", "test"}
    assert out.groupby("patient_id")["split"].nunique().max() == 1


def test_split_is_deterministic_by_seed_and_row_order() -> None:
    """Same seed gives the same split whatever the row order; another seed gives another."""
    df = _frame(60)
    a = assign_splits(df, seed=1)
    shuffled = df.sample(frac=1.0, random_state=0)
    b = assign_splits(shuffled, seed=1).loc[df.index]
    c = assign_splits(df, seed=2)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_split_is_stratified_and_near_its_fractions() -> None:
    """Each split holds positive and negative patients, in about 70/15/15 proportions."""
    out = assign_splits(_frame(100), seed=0)
    per_patient = out.groupby("patient_id").agg(split=("split", "first"), pos=("label_any", "max"))
    counts = per_patient["split"].value_counts()
    assert counts["test"] == counts["val"] == 16 and counts["train"] == 68
    for _, group in per_patient.groupby("split"):
        assert group["pos"].nunique() == 2


def test_six_patients_give_each_split_a_positive_and_a_negative() -> None:
    """With 3 positive and 3 negative patients every split gets one of each."""
    per_patient = (
        assign_splits(_frame(6), seed=9)
        .groupby("patient_id")
        .agg(split=("split", "first"), pos=("label_any", "max"))
    )
    assert per_patient.groupby("split")["pos"].apply(sorted).tolist() == [[0, 1]] * 3


def test_split_does_not_mutate_its_input() -> None:
    """The caller's frame is left untouched."""
    df = _frame(10)
    before = df.copy()
    out = assign_splits(df, seed=0)
    pd.testing.assert_frame_equal(df, before)
    assert "split" not in df and "split" in out


def test_rows_without_a_group_are_their_own_group() -> None:
    """Missing group values do not pool unrelated rows into one group."""
    df = pd.DataFrame({"patient_id": [None] * 40, "label_any": [0, 1] * 20})
    out = assign_splits(df, seed=0)
    assert set(out["split"]) == {"train", "val", "test"}


def test_group_col_and_no_stratification() -> None:
    """Another group column and stratify_col=None are honoured."""
    df = _frame(30).rename(columns={"patient_id": "study_uid"})
    out = assign_splits(df, seed=0, group_col="study_uid", stratify_col=None)
    assert out.groupby("study_uid")["split"].nunique().max() == 1
    assert assign_splits(df.iloc[:0], seed=0)["split"].empty


def test_split_errors_name_the_problem() -> None:
    """Bad fractions raise ConfigError, missing columns DatasetError, with the name in the message."""
    df = _frame(10)
    with pytest.raises(ConfigError, match="val_fraction must be in"):
        assign_splits(df, seed=0, val_fraction=-0.1)
    with pytest.raises(ConfigError, match="must be < 1"):
        assign_splits(df, seed=0, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DatasetError, match="no 'site' column"):
        assign_splits(df, seed=0, group_col="site")
    with pytest.raises(DatasetError, match="no 'label' column"):
        assign_splits(df, seed=0, stratify_col="label")


def test_split_does_not_depend_on_the_pseudonym_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two installations (different pseudonym secrets) split the same files identically."""
    from hemo.dicom import patient_key_secret, pseudonymize

    frame = _frame(30, seed=4)
    frame["path"] = [
        f"/data/{i}/ID_{pid}_{s}.dcm"
        for i, (pid, s) in enumerate(zip(frame["patient_id"], frame["slice"], strict=True))
    ]
    splits, keys = [], []
    for secret in ("installation-a", "installation-b"):
        monkeypatch.setenv("HEMO_PATIENT_KEY_SECRET", secret)
        patient_key_secret.cache_clear()
        keyed = frame.assign(patient_id=frame["patient_id"].map(pseudonymize))
        splits.append(assign_splits(keyed, seed=7)["split"].tolist())
        keys.append(keyed["patient_id"].iloc[0])
    patient_key_secret.cache_clear()
    assert keys[0] != keys[1]
    assert splits[0] == splits[1]
