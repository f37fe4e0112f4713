"""Training: runs with their state, live curves, a form to start a run, stop, compare, reports."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from hemo import dashboard, monitor, runs, ui
from hemo.errors import HemoError
from hemo.train import DEFAULTS, check_input_fits, input_spec, resolve_config

#: Seconds between refreshes of a live run's curves and progress.
REFRESH_S = 2.0
#: Seconds between looks for runs started elsewhere (the CLI, another session) while none is live.
IDLE_REFRESH_S = 5.0
SELECTED_KEY = "training_selected"
#: The cross-validation shown, and the run it was last picked for.
CROSSVAL_KEY, CROSSVAL_FOR_KEY = "training_crossval", "training_crossval_for"
CROSSVAL_FIGURES = ("threshold", "accuracy", "roc_auc", "sensitivity", "specificity")
RUN_NAME_KEY = "training_new_name"
SIZES = (64, 128, 192, 256, 384, 512)
MAX_EPOCHS = 500
METRIC_TITLES = {"loss": "Loss", "auc": "AUC", "accuracy": "Accuracy"}
SPLIT_COLORS = {"train": "#4C9BE8", "val": "#F2A541"}
#: Distinct colours for compared runs (the theme's default shades of one hue blur together).
RUN_COLORS = px.colors.qualitative.Set2

st.title("Training")
root = dashboard.runs_dir()


def _curves(run: runs.RunInfo) -> None:
    """Progress and train-vs-validation curves of one run."""
    fraction, text = monitor.run_progress(run)
    st.progress(fraction, text=f"{run.name}: {run.state} · {text}")
    curves = monitor.history_curves(run.history)
    if curves.empty:
        st.caption(monitor.no_curves_text(run))
        return
    cols = st.columns(len(curves["metric"].unique()))
    for col, metric in zip(cols, curves["metric"].unique(), strict=True):
        fig = px.line(
            curves[curves["metric"] == metric],
            x="epoch",
            y="value",
            color="split",
            color_discrete_map=SPLIT_COLORS,
            markers=True,
            title=METRIC_TITLES.get(metric, metric),
            labels={"value": METRIC_TITLES.get(metric, metric)},
            height=300,
        )
        fig.update_xaxes(dtick=monitor.epoch_tick(int(curves["epoch"].max())))
        col.plotly_chart(fig, key=f"curve_{metric}")


def _stop(name: str) -> None:
    try:
        runs.stop_run(name, root)
    except HemoError as exc:
        st.session_state["training_error"] = str(exc)


all_runs = runs.list_runs(root)
if error := st.session_state.pop("training_error", None):
    st.error(error)
sidebar_view = ui.active_dataset()  # a bad sidebar path is named here, as on the other pages

with st.expander("Start a new run", expanded=not all_runs):
    with st.form("new_run"):
        data = st.text_input("Dataset (folder or index)", value=ui.dataset_path() or "")
        c1, c2, c3 = st.columns(3)
        architecture = c1.selectbox("Architecture", monitor.architectures())
        weights = c2.selectbox(
            "Initial weights",
            ["none", "imagenet", *[str(m.path) for m in dashboard.list_models()]],
            help="none: random; imagenet: Keras download (needs network); a model: its weights.",
        )
        view = sidebar_view if data == ui.dataset_path() else None
        mode = monitor.default_input_mode(view.layout) if view is not None else "hu"
        modes = list(monitor.INPUT_MODES)
        input_label = c3.selectbox(
            "Input", modes, index=list(monitor.INPUT_MODES.values()).index(mode)
        )
        c4, c5, c6 = st.columns(3)
        # the form starts from `hemo train`'s defaults, so a run started here and one started
        # from the CLI with the same choices are the same run
        epochs = c4.number_input("Epochs", 1, MAX_EPOCHS, DEFAULTS["epochs"])
        image_size = c5.selectbox(
            "Image size (px)", SIZES, index=SIZES.index(DEFAULTS["image_size"])
        )
        learning_rate = c6.number_input(
            "Learning rate", 1e-6, 1.0, DEFAULTS["learning_rate"], format="%.6f"
        )
        st.session_state.setdefault(RUN_NAME_KEY, monitor.new_run_name())
        name = st.text_input("Run name", key=RUN_NAME_KEY)
        if st.form_submit_button("Start training", type="primary"):
            config = monitor.training_config(
                data,
                architecture,
                weights,
                int(epochs),
                int(image_size),
                float(learning_rate),
                monitor.INPUT_MODES[input_label],
            )
            try:
                # refused here, not by a run that fails on its first batch
                opened = ui.open_dataset(data, ui.mtime_of(data))
                check_input_fits(input_spec(resolve_config(config)), opened.index["path"])
                started = runs.launch_run(config, name.strip(), root)
            except HemoError as exc:
                st.error(str(exc))
            else:
                st.session_state[SELECTED_KEY] = started.name
                del st.session_state[RUN_NAME_KEY]  # the next run gets a fresh name
                st.rerun()

listed = monitor.run_list_signature(all_runs, runs.list_crossvals(root))
any_live = any(r.state == runs.RUNNING for r in all_runs)


@st.fragment(run_every=REFRESH_S if any_live else IDLE_REFRESH_S)
def _runs_table() -> None:
    """The runs table, refreshed on its own; the whole page again when a run appears (started
    from the CLI or another session), goes, or changes state, or a cross-validation report is
    written."""
    current = runs.list_runs(root)
    if monitor.run_list_signature(current, runs.list_crossvals(root)) != listed:
        st.rerun(scope="app")
    if current:
        st.dataframe(monitor.runs_table(current), hide_index=True, key="runs_table")
    else:
        st.info(f"No runs yet in {root}. Start one above.")


if all_runs:
    st.subheader("Runs")
_runs_table()
if not all_runs:
    st.stop()
names = [r.name for r in all_runs]
if st.session_state.get(SELECTED_KEY) not in names:
    st.session_state[SELECTED_KEY] = names[0]
selected = st.selectbox("Run", names, key=SELECTED_KEY, persist_state=ui.PERSIST)
run = runs.read_run(selected, root)

if run.state == runs.RUNNING:
    st.button("Stop this run", key="stop_run", on_click=_stop, args=(run.name,), type="primary")

    @st.fragment(run_every=REFRESH_S)
    def _live() -> None:
        current = runs.read_run(selected, root)
        _curves(current)
        if current.state != runs.RUNNING:
            st.rerun(scope="app")

    _live()
else:
    caption = monitor.status_caption(run)
    if caption is not None:
        st.caption(caption)
    _curves(run)

part = runs.crossval_of(run)
fold_of = part.name if part else None
report = None if part else monitor.run_report(run.report)
if part:
    st.info(monitor.crossval_part_text(run.name, part))
if report is not None:
    st.subheader(f"Evaluation ({report.split or 'test'} split)")
    if report.note:
        st.warning(report.note)
    cols = st.columns(4)
    shown = {"threshold": report.threshold, **report.summary}
    for col, key in zip(cols, ("threshold", "roc_auc", "sensitivity", "specificity"), strict=True):
        value = shown.get(key)
        col.metric(key, "n/a" if value is None else f"{value:.3f}")
    if report.referral:
        st.caption(report.referral)
    left, middle, right = st.columns(3)
    if report.confusion is not None:
        fig = px.imshow(report.confusion, text_auto=True, title="Confusion matrix", height=320)
        left.plotly_chart(fig, key="confusion")
    if not report.roc.empty:
        fig = px.line(report.roc, x="fpr", y="tpr", title="ROC", height=320, range_y=[0, 1])
        middle.plotly_chart(fig, key="roc")
    if not report.pr.empty:
        fig = px.line(report.pr, x="recall", y="precision", title="PR", height=320)
        right.plotly_chart(fig, key="pr")

crossvals = runs.list_crossvals(root)
if crossvals:
    st.subheader("Cross-validations")
    cv_names = [c.name for c in crossvals]
    if fold_of in cv_names and st.session_state.get(CROSSVAL_FOR_KEY) != run.name:
        st.session_state[CROSSVAL_KEY] = fold_of  # a run of a cross-validation picked: it first
    st.session_state[CROSSVAL_FOR_KEY] = run.name
    if st.session_state.get(CROSSVAL_KEY) not in cv_names:
        st.session_state[CROSSVAL_KEY] = cv_names[0]
    chosen_cv = st.selectbox("Cross-validation", cv_names, key=CROSSVAL_KEY)
    picked = crossvals[cv_names.index(chosen_cv)]
    view = monitor.crossval_view(picked.report, picked.error)
    if view.note:
        st.warning(view.note)
    else:
        cols = st.columns(len(CROSSVAL_FIGURES))
        for col, key in zip(cols, CROSSVAL_FIGURES, strict=True):
            value = view.headline.get(key)
            col.metric(f"{key} (pooled)" if key != "threshold" else key,
                       "n/a" if value is None else f"{value:.3f}")  # fmt: skip
        st.dataframe(view.folds, hide_index=True, key="crossval_folds")
        st.caption(view.caption)
        if view.referral:
            st.caption(view.referral)

if len(all_runs) >= 2:
    st.subheader("Compare runs")
    # A run that appeared since the last visit (one just launched) joins the comparison; the
    # runs the user picked stay picked, and gone ones leave it
    seen = st.session_state.get("compare_runs_seen")
    if seen is not None and "compare_runs" in st.session_state:
        new = [n for n in names if n not in seen]
        kept = [n for n in st.session_state["compare_runs"] if n in names]
        st.session_state["compare_runs"] = new + [n for n in kept if n not in new]
    st.session_state["compare_runs_seen"] = list(names)
    chosen = st.multiselect(
        "Runs", names, default=names[:2], key="compare_runs", persist_state=ui.PERSIST
    )
    metric = st.selectbox(
        "Metric",
        ["val_auc", "val_loss", "auc", "loss", "val_accuracy"],
        key="compare_metric",
        persist_state=ui.PERSIST,
    )
    frame = monitor.compare_runs([r for r in all_runs if r.name in chosen], metric)
    if frame.empty:
        st.caption(f"No {metric} recorded for these runs yet.")
    else:
        fig = px.line(
            frame,
            x="epoch",
            y="value",
            color="run",
            markers=True,
            title=metric,
            color_discrete_sequence=RUN_COLORS,
            labels={"value": metric},
        )
        fig.update_xaxes(dtick=monitor.epoch_tick(int(frame["epoch"].max())))
        st.plotly_chart(fig, key="compare")
