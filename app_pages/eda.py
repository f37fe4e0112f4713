"""EDA: distribution, subtypes, splits, pixel statistics and data quality of the active dataset."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from hemo import eda, ui
from hemo.windowing import PRESETS

SAMPLE_SEED = 0
CLASS_COLORS = {"no hemorrhage": "#4C9BE8", "hemorrhage": "#E8574C", "unlabelled": "#999999"}
CLASS_ORDER = {"class": list(CLASS_COLORS)}
GRID_COLUMNS = 4

st.title("EDA")
view = ui.active_dataset()
if view is None:
    st.stop()
index = view.index
counts = eda.summary(index)
st.caption(f"`{view.path}` · layout **{view.layout}**")
cols = st.columns(5)
for col, (name, key) in zip(
    cols,
    [
        ("Images", "images"),
        ("Hemorrhage", "positive"),
        ("No hemorrhage", "negative"),
        ("Studies", "studies"),
        ("Patients", "patients"),
    ],
    strict=True,
):
    if key == "patients" and counts[key] == 0:
        col.metric(name, "n/a", help="The index has no patient ids (e.g. the Kaggle PNGs).")
    elif key == "studies" and counts[key] == 0:
        col.metric(name, "n/a", help=eda.NO_STUDY_IDS)
    else:
        col.metric(name, f"{counts[key]:,}")

left, right = st.columns(2)
with left:
    balance = eda.class_balance(index)
    fig = px.bar(
        balance,
        x="class",
        y="images",
        color="class",
        color_discrete_map=CLASS_COLORS,
        text="images",
        title="Class balance",
    )
    st.plotly_chart(fig, key="class_balance")
with right:
    splits = eda.split_sizes(index)
    fig = px.bar(
        splits,
        x="split",
        y="images",
        color="class",
        barmode="group",
        color_discrete_map=CLASS_COLORS,
        category_orders=CLASS_ORDER,
        title="Split sizes per class",
    )
    st.plotly_chart(fig, key="split_sizes")
    st.caption(eda.split_grouping(index).capitalize() + ".")  # a long title was cut off

subtypes = eda.subtype_counts(index)
if not subtypes.empty and not subtypes["images"].any():
    st.caption(
        f"Subtype labels ({', '.join(subtypes['subtype'])}) are given, and no image is "
        "positive for any of them."
    )
elif not subtypes.empty:
    left, right = st.columns(2)
    with left:
        fig = px.bar(subtypes, x="subtype", y="images", text="images", title="Subtype counts")
        st.plotly_chart(fig, key="subtype_counts")
    with right:
        matrix = eda.subtype_cooccurrence(index)
        fig = px.imshow(
            matrix,
            text_auto=True,
            color_continuous_scale="Reds",
            title="Subtype co-occurrence (images positive for both)",
        )
        st.plotly_chart(fig, key="cooccurrence")
else:
    st.caption("This dataset has no subtype labels (binary: hemorrhage or not).")

if eda.has_study_ids(index):
    studies = eda.slices_per_study(index)
    fig = px.histogram(
        studies,
        x="slices",
        color="class",
        color_discrete_map=CLASS_COLORS,
        category_orders=CLASS_ORDER,
        title=f"Slices per study ({eda.count_text(len(studies), 'study', 'studies')})",
        height=320,
    )
    fig.update_layout(yaxis_title="studies", bargap=0.2)
    st.plotly_chart(fig, key="slices_per_study")

st.subheader("Pixels on a sample")
per_class = st.slider(
    "Images read per class",
    2,
    64,
    eda.SAMPLE_PER_CLASS,
    key="eda_per_class",
    persist_state=ui.PERSIST,
)
bar = st.progress(0.0, text="Reading the sample…")
stats = ui.scan_sample(
    str(view.path),
    ui.mtime_of(view.path),
    per_class,
    SAMPLE_SEED,
    on_progress=ui.progress_callback(bar),
)
bar.empty()
if not stats.histograms.empty:
    unit = stats.histograms["unit"].iloc[0]
    fig = px.line(
        stats.histograms,
        x="value",
        y="fraction",
        color="class",
        color_discrete_map=CLASS_COLORS,
        category_orders=CLASS_ORDER,
        title=(
            "HU histogram per class (brain range: blood sits at 50-90 HU)"
            if unit == "HU"
            else "Intensity histogram per class"
        ),
        labels={"value": "HU" if unit == "HU" else "intensity (0-1)", "fraction": "fraction"},
    )
    st.plotly_chart(fig, key="histograms")
if not stats.geometry.empty:
    left, right = st.columns(2)
    with left:
        fig = px.scatter(
            stats.geometry,
            x="cols",
            y="rows",
            color="class",
            color_discrete_map=CLASS_COLORS,
            title="Image sizes (pixels)",
        )
        st.plotly_chart(fig, key="sizes")
    with right:
        spacing = stats.geometry.dropna(subset=["spacing_row_mm"])
        if spacing.empty:
            st.caption("No pixel spacing in these files (PNG/JPEG carry none).")
        else:
            fig = px.scatter(
                spacing,
                x="spacing_col_mm",
                y="thickness_mm",
                color="class",
                color_discrete_map=CLASS_COLORS,
                title="Pixel spacing vs slice thickness (mm)",
            )
            st.plotly_chart(fig, key="spacing")
    fig = px.strip(
        stats.geometry,
        x="class",
        y="background",
        color="class",
        color_discrete_map=CLASS_COLORS,
        category_orders=CLASS_ORDER,
        title="Background level per image (0: black, as air in a DICOM; above: a flat gray)",
        labels={"background": "background (display gray, 0-1)"},
        height=320,
    )
    st.plotly_chart(fig, key="backgrounds")
    backgrounds = eda.backgrounds_by_class(stats.geometry)
    imbalance = eda.background_imbalance(backgrounds)
    if imbalance:
        st.warning(imbalance)
    else:
        st.caption(
            "Gray backgrounds per class: "
            + ", ".join(
                f"{row['class']} {row['gray_background']} of {row['images']}"
                for row in backgrounds.to_dict("records")
            )
        )

st.subheader("Sample grid")
if eda.display_images_only(index):
    window = next(iter(PRESETS))  # unused by display images; keeps the cache keys stable
    st.caption("PNG/JPEG images are shown as stored: they hold no Hounsfield units to window.")
else:
    window = st.selectbox("Window", list(PRESETS), key="eda_window", persist_state=ui.PERSIST)
tiles = ui.sample_grid(str(view.path), ui.mtime_of(view.path), window, GRID_COLUMNS, SAMPLE_SEED)
for label in dict.fromkeys(t.label for t in tiles):
    st.markdown(f"**{label}**")
    row = [t for t in tiles if t.label == label]
    for col, tile in zip(st.columns(GRID_COLUMNS), row, strict=False):
        col.image(tile.image, caption=tile.caption, clamp=True)

st.subheader("Data quality")
problems = ui.quality_report(str(view.path), ui.mtime_of(view.path))
failures = stats.failures.assign(kind="unreadable")[["kind", "path", "reason"]]
table = eda.concat_problems(problems, failures)
st.dataframe(
    eda.problem_counts(table, ("unreadable", "duplicate", "lookalike", "missing_label")),
    hide_index=True,
    key="quality_counts",
)
st.caption(eda.quality_scope(len(index), len(stats.geometry) + len(stats.failures)))
if table.empty:
    st.success(
        "No unreadable files (among those read), duplicates, look-alike images or missing "
        "labels found."
    )
else:
    st.dataframe(table, hide_index=True, key="quality_table")
lookalikes = ui.lookalike_pairs(str(view.path), ui.mtime_of(view.path), window)
if lookalikes.pairs:
    st.markdown("**Look-alike images**")
    st.caption(
        "The same picture at another size, or neighbouring slices of one head, found from the "
        "pixels in a set without patient ids. The split and cross-validation keep each group "
        "together, so a copy never tests a model trained on its twin. "
        + eda.lookalike_shown(len(lookalikes.pairs), lookalikes.groups)
    )
    for pair in lookalikes.pairs:
        left, right = st.columns(2)
        left.image(pair.first.image, caption=pair.first.caption, clamp=True)
        right.image(
            pair.second.image,
            caption=f"{pair.second.caption} · correlation {pair.similarity:.3f}",
            clamp=True,
        )
