"""Dataset adapters: every supported source layout -> one index table, split by patient.

Layouts (auto-detected by :func:`detect_layout`):

* ``phantom`` / ``rsna`` -- RSNA-2019 (``stage_2_train.csv`` + ``stage_2_train/``); phantoms add
  ``masks/`` (:mod:`hemo.datasets.rsna`).
* ``kaggle_head_ct`` -- Kaggle "Head CT - hemorrhage" (:mod:`hemo.datasets.kaggle_head_ct`).
* ``cq500`` -- CQ500 with study-level majority-vote labels (:mod:`hemo.datasets.cq500`).
* ``manifest`` -- a CSV with ``path,label_any`` (:mod:`hemo.datasets.manifest`).
* ``folders`` -- a folder per class (:mod:`hemo.datasets.folders`).

The table's columns are described in :mod:`hemo.datasets.schema`. This package never imports
TensorFlow or Streamlit.
"""

from __future__ import annotations

from hemo.datasets.index import (
    INDEX_FILE,
    LAYOUTS,
    IndexResult,
    build_index,
    detect_layout,
    index_dataset,
    load_index,
    quality_report,
    save_index,
    summarize,
)
from hemo.datasets.schema import INDEX_COLUMNS, LABEL_COLUMNS, SPLITS, Problem
from hemo.datasets.split import assign_splits

__all__ = [
    "INDEX_COLUMNS",
    "INDEX_FILE",
    "LABEL_COLUMNS",
    "LAYOUTS",
    "SPLITS",
    "IndexResult",
    "Problem",
    "assign_splits",
    "build_index",
    "detect_layout",
    "index_dataset",
    "load_index",
    "quality_report",
    "save_index",
    "summarize",
]
