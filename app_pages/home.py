"""Home: what hemo does, the active model and dataset with their key numbers, links to pages."""

from __future__ import annotations

import streamlit as st

from hemo import dashboard, eda, ui
from hemo.errors import HemoError

METRICS_PER_ROW = 3

st.title("hemo — brain-hemorrhage workbench")
st.markdown(
    "Detect intracranial hemorrhage on head CT, see **where** the model looks (Grad-CAM), "
    "explore datasets, tune CT windows, and train and compare models. Drag a DICOM, a zipped "
    "series or a PNG/JPG into **Predict**; everything runs on this machine."
)

model_col, data_col = st.columns(2)
with model_col:
    st.subheader("Active model")
    model_path = ui.model_path()
    if model_path is None:
        st.warning("No model found: put one in models/ or finish a training run.")
    else:
        try:
            card = dashboard.card_summary(model_path)
        except HemoError as exc:
            st.error(str(exc))
        else:
            st.markdown(f"**{card['name']}** · {card['architecture']} · {card['input']}")
            st.caption("Outputs: " + ", ".join(card["labels"]))
            shown = list({"threshold": card["threshold"], **card["metrics"]}.items())
            # Three to a row: five metrics side by side no longer fit half the page
            for start in range(0, len(shown), METRICS_PER_ROW):
                row = shown[start : start + METRICS_PER_ROW]
                for col, (name, value) in zip(st.columns(METRICS_PER_ROW), row, strict=False):
                    col.metric(name.replace("roc_auc", "ROC AUC"), f"{value:.3f}")
            if card["measured_on"]:
                st.caption(f"Measured on {card['measured_on']}")
            if card["threshold_note"]:
                st.caption(card["threshold_note"])
            if card["referral"]:
                st.caption(card["referral"])

with data_col:
    st.subheader("Active dataset")
    view = ui.active_dataset()
    if view is not None:
        counts = eda.summary(view.index)
        st.markdown(f"`{view.path}` · layout **{view.layout}**")
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Images", f"{counts['images']:,}")
        c2.metric("Hemorrhage", f"{counts['positive']:,}")
        c3.metric("No hemorrhage", f"{counts['negative']:,}")
        if counts["studies"]:
            c4.metric("Studies", f"{counts['studies']:,}")
        else:
            c4.metric("Studies", "n/a", help=eda.NO_STUDY_IDS)

st.subheader("Pages")
links = (
    (
        "app_pages/predict.py",
        "Predict",
        ":material/neurology:",
        "drag in scans: probability + heatmap",
    ),
    (
        "app_pages/eda.py",
        "EDA",
        ":material/bar_chart:",
        "class balance, subtypes, HU, data quality",
    ),
    (
        "app_pages/windowing.py",
        "Windowing",
        ":material/contrast:",
        "level/width, presets, HU probe",
    ),
    (
        "app_pages/training.py",
        "Training",
        ":material/model_training:",
        "launch, watch, compare runs",
    ),
)
for page, label, icon, what in links:
    st.page_link(page, label=f"{label} — {what}", icon=icon)
