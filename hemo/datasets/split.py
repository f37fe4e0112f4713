"""Patient-grouped, stratified, seeded train/val/test split.

Slices of one head never straddle two splits: the unit of assignment is the group
(``patient_id`` by default, or a study). Groups are stratified by whether any of their rows is
positive, so each split sees both classes where the data allow it. The split depends only on the
set of groups, their strata and the seed, never on the row order of the frame.

Groups are ordered before the seeded shuffle by the smallest file *name* among their rows
(``order_col``, default ``path``), not by the group key: ``patient_id`` is a keyed pseudonym
(:func:`hemo.dicom.pseudonymize`) that differs between installations, while file names (e.g.
RSNA's ``ID_<sop>.dcm``) do not. So the same data and seed give the same split on every machine.
"""

from __future__ import annotations

import logging
from pathlib import PurePath

import numpy as np
import pandas as pd

from hemo.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

#: Split names, in the order groups are handed out within a stratum (test, val, then train).
TRAIN, VAL, TEST = "train", "val", "test"
#: A stratum needs this many groups before val and test are each promised one of them
#: (one group is always left for train).
MIN_GROUPS_FOR_ALL_SPLITS = 3
#: Stratum key of groups whose stratify value is missing.
UNKNOWN_STRATUM = "<NA>"
#: Prefix of the group key given to rows whose group value is missing (each is its own group).
UNGROUPED_PREFIX = "<row>"


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise ConfigError unless both fractions are in [0, 1) and leave room for train."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not np.isfinite(value) or not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be < 1 so that train keeps groups, got "
            f"{val_fraction} + {test_fraction}"
        )


def _group_keys(df: pd.DataFrame, group_col: str) -> pd.Series:
    """One string key per row; rows with a missing group value become groups of their own."""
    if group_col not in df.columns:
        raise DatasetError(
            f"cannot split: the index has no {group_col!r} column (columns: {', '.join(df.columns)})"
        )
    keys = df[group_col].astype("string")
    missing = keys.isna().to_numpy()
    if missing.any():
        log.debug("%d rows without %s: each is its own group", int(missing.sum()), group_col)
        row_keys = pd.Series(
            [f"{UNGROUPED_PREFIX}{i}" for i in range(len(df))], index=df.index, dtype="string"
        )
        keys = keys.where(~missing, row_keys)
    return keys.astype(str)


def _group_order(df: pd.DataFrame, keys: pd.Series, order_col: str | None) -> dict[str, str]:
    """Map group key -> a machine-independent sort key (smallest file name in the group)."""
    if order_col is None or order_col not in df.columns:
        return {key: key for key in set(keys)}
    names = df[order_col].astype("string").fillna("").map(lambda p: PurePath(str(p)).name)
    first = names.groupby(keys.to_numpy()).min()
    return {str(group): f"{name}\x00{group}" for group, name in first.items()}


def _group_strata(
    df: pd.DataFrame, keys: pd.Series, stratify_col: str | None, order: dict[str, str]
) -> dict[str, list[str]]:
    """Map stratum -> ordered group keys; a group's stratum is the max of its stratify values."""
    if stratify_col is None:
        return {"all": sorted(set(keys), key=order.__getitem__)}
    if stratify_col not in df.columns:
        raise DatasetError(
            f"cannot stratify: the index has no {stratify_col!r} column "
            f"(columns: {', '.join(df.columns)})"
        )
    values = pd.to_numeric(df[stratify_col], errors="coerce")
    per_group = values.groupby(keys.to_numpy()).max()
    strata: dict[str, list[str]] = {}
    for group, value in per_group.items():
        stratum = UNKNOWN_STRATUM if pd.isna(value) else f"{value:g}"
        strata.setdefault(stratum, []).append(str(group))
    return {
        stratum: sorted(groups, key=order.__getitem__) for stratum, groups in sorted(strata.items())
    }


def _stratum_counts(n_groups: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Number of (val, test) groups of one stratum; train gets the rest (at least one)."""
    n_val = round(n_groups * val_fraction)
    n_test = round(n_groups * test_fraction)
    if n_groups >= MIN_GROUPS_FOR_ALL_SPLITS:
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
    # Train keeps at least one group: shrink the larger held-out split first.
    while n_groups > 0 and n_val + n_test > n_groups - 1:
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def assign_splits(
    df: pd.DataFrame,
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    group_col: str = "patient_id",
    stratify_col: str | None = "label_any",
    order_col: str | None = "path",
) -> pd.DataFrame:
    """Assign every row to ``train``, ``val`` or ``test`` by group, stratified and seeded.

    Each group (all rows sharing ``group_col``) goes to exactly one split. Groups are stratified by
    the maximum of ``stratify_col`` over their rows (a patient with any positive slice is a
    positive patient). Within each stratum the groups are sorted by their smallest file name in
    ``order_col`` (machine-independent, see the module docstring), shuffled with
    ``numpy.random.default_rng(seed)`` and dealt out: ``round(n * test_fraction)`` to test,
    ``round(n * val_fraction)`` to val, the rest to train. A stratum with at least
    :data:`MIN_GROUPS_FOR_ALL_SPLITS` groups gives val and test at least one group each (when
    their fraction is > 0), and train always keeps at least one. Rows whose group value is missing
    are groups of their own; groups whose stratify value is missing form their own stratum.

    Args:
        df: Index rows. Not modified.
        seed: Seed of the shuffle; the same seed and groups give the same assignment.
        val_fraction: Target fraction of groups in ``val``, in [0, 1).
        test_fraction: Target fraction of groups in ``test``, in [0, 1); the two sum to < 1.
        group_col: Column naming the group (patient or study).
        stratify_col: 0/1 label column to stratify by, or ``None`` for no stratification.
        order_col: Column whose smallest file name orders the groups before the shuffle
            (``None`` or absent: the group key itself).

    Returns:
        A copy of ``df`` with a ``split`` column (string dtype) set for every row.

    Raises:
        ConfigError: a fraction is out of range or they leave nothing for train.
        DatasetError: ``group_col`` or ``stratify_col`` is not a column of ``df``.
    """
    _check_fractions(val_fraction, test_fraction)
    out = df.copy()
    if out.empty:
        out["split"] = pd.Series(dtype="string")
        return out
    keys = _group_keys(out, group_col)
    strata = _group_strata(out, keys, stratify_col, _group_order(out, keys, order_col))
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    for groups in strata.values():
        order = rng.permutation(len(groups))
        n_val, n_test = _stratum_counts(len(groups), val_fraction, test_fraction)
        for rank, index in enumerate(order):
            if rank < n_test:
                split_of[groups[index]] = TEST
            elif rank < n_test + n_val:
                split_of[groups[index]] = VAL
            else:
                split_of[groups[index]] = TRAIN
    out["split"] = pd.Series(keys.map(split_of).to_numpy(), index=out.index, dtype="string")
    return out
