"""What the Training page shows of runs, as plain functions (no Streamlit here).

A new run's configuration from the page's form, the runs table, a run's progress line and
status, its train-vs-validation curves, several runs on one chart, and the chart-ready parts of
a finished run's evaluation report. Runs themselves (status files, history, launching,
stopping) are :mod:`hemo.runs`; this module only turns what they hold into what a page draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Metrics drawn as train-vs-validation curves, in order, when the history has them.
CURVE_METRICS: tuple[str, ...] = ("loss", "auc", "accuracy")
VAL_PREFIX = "val_"
#: Input modes offered for a new run: label -> InputSpec mode.
INPUT_MODES: dict[str, str] = {
    "HU windows (DICOM)": "hu",
    "display grayscale (PNG/JPG or DICOM)": "display",
}
#: Layouts whose images carry no HU (their models must use display grayscale).
DISPLAY_LAYOUTS = frozenset({"kaggle_head_ct", "folders"})
RUN_NAME_FORMAT = "run-%Y%m%d-%H%M%S"


def architectures() -> list[str]:
    """Architecture names a new run can use (the compact CNN first: fast on CPU), without
    importing Keras."""
    from hemo.architectures import architecture_names

    return architecture_names()


def default_input_mode(layout: str) -> str:
    """The input mode that fits a dataset layout (``display`` for PNG layouts, else ``hu``)."""
    return "display" if layout in DISPLAY_LAYOUTS else "hu"


def new_run_name(now: float | None = None) -> str:
    """A fresh run name from the clock, e.g. ``run-20250101-120000``."""
    import time

    return time.strftime(RUN_NAME_FORMAT, time.localtime(now))


def training_config(
    data: str,
    architecture: str,
    weights: str,
    epochs: int,
    image_size: int,
    learning_rate: float,
    input_mode: str,
) -> dict[str, Any]:
    """The configuration of a new run started from the Training page (see :mod:`hemo.train`).

    Args:
        data: Dataset folder or index file.
        architecture: Key of :data:`hemo.model.ARCHITECTURES`.
        weights: ``none``, ``imagenet``, or a ``.keras`` model whose weights initialise the run.
        epochs: Training epochs.
        image_size: Input side in pixels.
        learning_rate: Initial learning rate.
        input_mode: ``hu`` or ``display``.

    Returns:
        Keys of :data:`hemo.train.DEFAULTS` (the rest keep their defaults).
    """
    config: dict[str, Any] = {
        "data": str(data),
        "architecture": architecture,
        "epochs": int(epochs),
        "image_size": int(image_size),
        "learning_rate": float(learning_rate),
        "input": {"mode": input_mode},
    }
    if weights in ("none", "imagenet"):
        config["weights"] = weights
    else:
        config["weights"] = "none"
        config["init"] = str(weights)
    return config


def run_list_signature(runs: Sequence[Any], crossvals: Sequence[Any] = ()) -> tuple[Any, ...]:
    """What the page's lists depend on: each run's name and state, and each cross-validation
    report's name and modification time (:class:`hemo.runs.CrossvalInfo`), sorted by name (a run
    started elsewhere, one that ends, a report written after a crossval's last fold change it)."""
    return (
        tuple(sorted((run.name, run.state) for run in runs)),
        tuple(sorted((cv.name, cv.updated) for cv in crossvals)),
    )


def _phase(run: Any) -> str:
    """The phase of a live run (``train``, ``evaluate`` ...); none once it has ended (a
    finished run's status keeps the last phase it was in)."""
    from hemo.runs import RUNNING

    return str((run.status or {}).get("phase") or "") if run.state == RUNNING else ""


def runs_table(runs: Sequence[Any]) -> pd.DataFrame:
    """One row per run: ``run``, ``state``, ``phase`` (while running), ``epoch`` ("3/10"),
    ``best``, ``message``."""
    rows = []
    for run in runs:
        status = run.status or {}
        epoch, epochs = status.get("epoch"), status.get("epochs")
        best = status.get("best_value")
        rows.append(
            {
                "run": run.name,
                "state": run.state,
                "phase": _phase(run),
                "epoch": f"{epoch or 0}/{epochs or '?'}",
                "best": "" if best is None else f"{status.get('best_metric') or ''} {best:.3f}",
                "message": status.get("message") or "",
            }
        )
    return pd.DataFrame(rows, columns=["run", "state", "phase", "epoch", "best", "message"])


def run_progress(run: Any) -> tuple[float, str]:
    """Fraction done and a line of text (epoch, step, ETA while running) from a run's status."""
    from hemo.runs import FINISHED, RUNNING

    status = run.status or {}
    epochs = status.get("epochs") or 0
    epoch = status.get("epoch") or 0  # the epoch under way (1-based), or the last one done
    steps = status.get("steps") or 0
    step = status.get("step") or 0
    done = max(epoch - 1, 0) + (step / steps if steps else 0.0)
    fraction = min(max(done / epochs, 0.0), 1.0) if epochs else 0.0
    if run.state == FINISHED:
        fraction = 1.0  # early stopping ends a run before its last epoch
    eta = status.get("eta_s") if run.state == RUNNING else None  # a finished run has no ETA
    eta_text = f" · ETA {int(eta) // 60} min {int(eta) % 60:02d} s" if eta is not None else ""
    phase = f" · {_phase(run)}" if _phase(run) else ""
    return fraction, f"epoch {epoch}/{epochs or '?'} · step {step}/{steps or '?'}{phase}{eta_text}"


def status_caption(run: Any) -> str | None:
    """A run's state and its status message as one line, the state said once (a finished
    run's message starts ``finished``, a stopped one's ``stopped by``); ``None`` without one."""
    message = str((run.status or {}).get("message") or "").strip()
    if not message:
        return None
    if message.split()[0].rstrip(":") == run.state:  # "finished: ...", "stopped by SIGTERM"
        return message
    return f"{run.state}: {message}"


def no_curves_text(run: Any) -> str:
    """Why a run shows no curves: no epoch finished yet while it runs; else what is wrong with
    its ``history.csv`` (missing, empty, or without a readable epoch row), naming the file."""
    from hemo.runs import HISTORY_FILE, RUNNING

    if run.state == RUNNING:
        return "No finished epoch yet: curves appear after the first one."
    file = run.path / HISTORY_FILE
    if not file.is_file():
        return f"No curves: {file} is missing (the run ended before its first epoch did)."
    if file.stat().st_size == 0:
        return f"No curves: {file} is empty."
    return f"No curves: {file} holds no readable epoch row with loss, AUC or accuracy."


#: Most epoch ticks on a curve's axis (a 3-epoch run was labelled 1, 1.2, 1.4 ...).
MAX_EPOCH_TICKS = 10


def epoch_tick(epochs: int) -> int:
    """Whole-epoch spacing of a curve's axis ticks: every epoch up to :data:`MAX_EPOCH_TICKS`,
    then every second, fifth ... so at most that many."""
    return max(1, math.ceil(max(epochs, 1) / MAX_EPOCH_TICKS))


def history_curves(history: pd.DataFrame) -> pd.DataFrame:
    """Train and validation curves in long form.

    Args:
        history: A run's ``history.csv`` (``epoch``, ``loss``, ``val_loss``, ``auc`` ...).

    Returns:
        Columns ``metric``, ``epoch`` (1-based), ``value``, ``split`` (``train`` / ``val``), for
        the metrics of :data:`CURVE_METRICS` the history has; empty when it has none.
    """
    parts = []
    if history.empty:
        return pd.DataFrame(columns=["metric", "epoch", "value", "split"])
    epochs = (
        history["epoch"].to_numpy() + 1 if "epoch" in history else np.arange(1, len(history) + 1)
    )
    for metric in CURVE_METRICS:
        for column, split in ((metric, "train"), (VAL_PREFIX + metric, "val")):
            if column in history:
                parts.append(
                    pd.DataFrame(
                        {
                            "metric": metric,
                            "epoch": epochs,
                            "value": history[column],
                            "split": split,
                        }
                    )
                )
    if not parts:
        return pd.DataFrame(columns=["metric", "epoch", "value", "split"])
    return pd.concat(parts, ignore_index=True)


def compare_runs(runs: Sequence[Any], metric: str) -> pd.DataFrame:
    """One metric of several runs on one chart: columns ``run``, ``epoch``, ``value``."""
    parts = []
    for run in runs:
        curves = history_curves(run.history)
        curve = curves[(curves["metric"] == metric.removeprefix(VAL_PREFIX))]
        curve = curve[curve["split"] == ("val" if metric.startswith(VAL_PREFIX) else "train")]
        parts.append(curve.assign(run=run.name)[["run", "epoch", "value"]])
    if not parts:
        return pd.DataFrame(columns=["run", "epoch", "value"])
    return pd.concat(parts, ignore_index=True)


@dataclass(frozen=True)
class RunReport:
    """What a finished run's evaluation shows.

    Attributes:
        threshold: Operating threshold chosen on validation data.
        split: Split the report was measured on.
        confusion: 2x2 frame (rows truth, columns call) or None.
        roc: Columns ``fpr``, ``tpr`` (empty when not available).
        pr: Columns ``recall``, ``precision``.
        summary: Headline numbers (AUC, sensitivity, specificity, ...).
        note: Why parts are missing, if they are.
        referral: What the run's referral band did on the evaluated split (one sentence,
            :func:`referral_outcome`), or None when the card has no band.
    """

    threshold: float | None
    split: str | None
    confusion: pd.DataFrame | None
    roc: pd.DataFrame
    pr: pd.DataFrame
    summary: dict[str, float]
    note: str | None = None
    referral: str | None = None


def crossval_part_text(run_name: str, part: Any) -> str:
    """What the Training page says of a run a cross-validation trained (``part``: a
    :class:`hemo.runs.CrossvalPart`) in place of its own evaluation."""
    if part.fold is None:
        return (
            f"{run_name} is the final model of the cross-validation '{part.name}', trained on all "
            "its images (its validation curve is on those same images): nothing is left to test "
            "it on, so the model exported from it carries that cross-validation's threshold and "
            "figures (Cross-validations, below)."
        )
    return (
        f"{run_name} is fold {part.fold} of the cross-validation '{part.name}': trained on the "
        "other folds, its held-out fold is scored with the others in that cross-validation's "
        "report (Cross-validations, below), at a threshold chosen on all folds' held-out "
        "predictions."
    )


@dataclass(frozen=True)
class CrossvalView:
    """What the Training page shows of one cross-validation report (``crossval.json``).

    Attributes:
        headline: Pooled out-of-fold figures at the report's threshold: ``threshold``,
            ``accuracy``, ``roc_auc``, ``sensitivity``, ``specificity`` (None when undefined).
        folds: One row per fold (``fold``, ``run``, ``train images``, ``held out`` and the
            summary metrics at the pooled threshold), then ``mean`` and ``sd`` rows.
        caption: What it was measured on and how the threshold was chosen.
        referral: The referral band's held-out (nested) outcome, or None.
        note: Why parts are missing (a damaged report), or None.
    """

    headline: dict[str, float | None]
    folds: pd.DataFrame
    caption: str
    referral: str | None = None
    note: str | None = None


def crossval_view(report: Mapping[str, Any] | None, error: str | None = None) -> CrossvalView:
    """Chart-ready parts of a cross-validation report (``hemo crossval``'s ``crossval.json``).

    Args:
        report: The report's JSON object, or None when it could not be read.
        error: Why it could not be read.

    Returns:
        A :class:`CrossvalView`; a damaged report gives an empty one with ``note`` set.
    """
    try:
        if report is None:
            raise ValueError(error or "no report")
        return _crossval_view(report)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return CrossvalView(
            headline={},
            folds=pd.DataFrame(),
            caption="",
            note=error or f"crossval.json is malformed ({type(exc).__name__}: {exc})",
        )


def _crossval_view(report: Mapping[str, Any]) -> CrossvalView:
    """:func:`crossval_view`'s work on a report that may be damaged (it raises then)."""
    from hemo.crossval import SUMMARY_METRICS

    pooled = report.get("pooled") or {}
    headline = {"threshold": float(report["threshold"])}
    headline.update({m: _number(pooled.get(m)) for m in SUMMARY_METRICS})
    rows = [
        {
            "fold": str(f["fold"]),
            "run": f.get("run", ""),
            "train images": f.get("n_train"),
            "held out": f.get("n_test"),
            **{m: _number((f.get("metrics") or {}).get(m)) for m in SUMMARY_METRICS},
        }
        for f in report["folds"]
    ]
    summary = report.get("summary") or {}
    for stat, title in (("mean", "mean"), ("std", "sd")):
        rows.append(
            {
                "fold": title,
                **{m: _number((summary.get(m) or {}).get(stat)) for m in SUMMARY_METRICS},
            }
        )
    caption = (
        f"{report.get('measured_on', '')}; threshold {headline['threshold']:.3f} "
        f"({report.get('threshold_method', '?')}) chosen on the pooled out-of-fold predictions, "
        "so the pooled accuracy, sensitivity and specificity are slightly optimistic (ROC AUC "
        "needs no threshold); per-fold rows use the same threshold."
    )
    nested = (report.get("referral") or {}).get("nested")
    referral = None
    if isinstance(nested, Mapping) and nested.get("n"):
        referral = (
            f"Referral band, chosen on the other folds for each fold (nested): "
            f"{nested['referred']} of {nested['n']} calls referred, "
            f"{nested['errors_referred']} of the {nested['errors']} errors among them; the "
            f"{nested['decided']} decided calls {_share_text(nested.get('accuracy'))} right."
        )
    folds = pd.DataFrame(rows)
    folds["run"] = folds["run"].fillna("")
    for column in ("train images", "held out"):
        folds[column] = pd.to_numeric(folds[column], errors="coerce").astype("Int64")
    return CrossvalView(headline, folds, caption, referral)


def _number(value: Any) -> float | None:
    """A float, or None for a missing or non-numeric value."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if np.isnan(value) else float(value)


def _share_text(value: Any) -> str:
    """A share as a percentage with one decimal (``87.5%``), or ``n/a``."""
    number = _number(value)
    return "n/a" if number is None else f"{number:.1%}"


def referral_outcome(referral: Mapping[str, Any] | None) -> str | None:
    """One sentence on what a referral band did on evaluated cases (the ``referral`` block of
    an evaluation report), or None without one."""
    if not referral or "band" not in referral:
        return None
    band = referral["band"]
    text = (
        f"Referral band P {band['low']:.3f}-{band['high']:.3f} (chosen on "
        f"{band.get('chosen_on') or 'validation data'}): {referral['referred']} of "
        f"{referral['n']} calls referred, {referral['errors_referred']} of the "
        f"{referral['errors']} errors among them"
    )
    if referral.get("accuracy") is not None:
        text += f"; the {referral['decided']} decided calls {referral['accuracy']:.1%} right"
    return text + "."


def run_report(report: Mapping[str, Any] | None) -> RunReport | None:
    """Chart-ready parts of a run's ``report.json`` (None when the run has no report)."""
    if not report:
        return None
    try:
        return _run_report(report)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a damaged report.json
        return RunReport(
            threshold=None,
            split=None,
            confusion=None,
            roc=pd.DataFrame(columns=["fpr", "tpr"]),
            pr=pd.DataFrame(columns=["recall", "precision"]),
            summary={},
            note=f"report.json is malformed ({type(exc).__name__}: {exc}); nothing of it is shown",
            referral=None,
        )


def _run_report(report: Mapping[str, Any]) -> RunReport:
    """:func:`run_report`'s work on a report that may be damaged (it raises then)."""
    classes = ["no hemorrhage", "hemorrhage"]
    matrix = (report.get("confusion") or {}).get("matrix")
    confusion = (
        pd.DataFrame(matrix, index=[f"truth: {c}" for c in classes], columns=classes)
        if matrix
        else None
    )
    roc = report.get("roc") or {}
    pr = report.get("pr") or {}
    summary = {
        k: float(v)
        for k, v in (report.get("summary") or {}).items()
        if isinstance(v, int | float) and v is not None
    }
    threshold = report.get("threshold")
    return RunReport(
        threshold=float(threshold) if isinstance(threshold, int | float) else None,
        split=report.get("split"),
        confusion=confusion,
        roc=pd.DataFrame({"fpr": roc.get("x", []), "tpr": roc.get("y", [])}),
        pr=pd.DataFrame({"recall": pr.get("x", []), "precision": pr.get("y", [])}),
        summary=summary,
        note=report.get("error"),
        referral=referral_outcome(report.get("referral")),
    )
