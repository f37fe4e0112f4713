"""Windowing: level/width and presets on a CT slice, HU histogram, composite, pixel probe."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from hemo import config, dashboard, eda, ui
from hemo.errors import HemoError
from hemo.windowing import PRESETS

CENTER_KEY, WIDTH_KEY = "win_center", "win_width"
CENTER_RANGE_HU = (-1000, 3000)
WIDTH_RANGE_HU = (1, 4000)
START_WINDOW = PRESETS["brain"]
MAX_STUDIES = 200
SOURCE_DATASET, SOURCE_UPLOAD = "From the dataset", "Upload DICOM"
BAND_COLOR = "rgba(232, 87, 76, 0.25)"

# The chosen window lives in keys of its own: Streamlit forgets a widget's state after a run
# that does not draw it (an upload with no file yet), and would redraw the sliders at their
# minimum while the page still used the old window.
KEPT = {CENTER_KEY: "win_center_kept", WIDTH_KEY: "win_width_kept"}

st.title("Windowing")
st.session_state.setdefault(KEPT[CENTER_KEY], int(START_WINDOW.center_hu))
st.session_state.setdefault(KEPT[WIDTH_KEY], int(START_WINDOW.width_hu))


def _apply_preset(name: str) -> None:
    st.session_state[KEPT[CENTER_KEY]] = int(PRESETS[name].center_hu)
    st.session_state[KEPT[WIDTH_KEY]] = int(PRESETS[name].width_hu)


def _keep(key: str) -> None:
    st.session_state[KEPT[key]] = st.session_state[key]


source = st.radio(
    "Scan",
    [SOURCE_DATASET, SOURCE_UPLOAD],
    horizontal=True,
    key="win_source",
    persist_state=ui.PERSIST,
)
scan = None
if source == SOURCE_DATASET:
    view = ui.active_dataset()
    if view is None:
        st.stop()
    studies = dashboard.dataset_studies(view.index, limit=MAX_STUDIES)
    if not studies:
        st.warning("The dataset has no images.")
        st.stop()
    labels = [s.label for s in studies]
    study = studies[
        labels.index(st.selectbox("Study", labels, key="win_study", persist_state=ui.PERSIST))
    ]
    position = 0
    if len(study.paths) > 1:
        ui.forget_out_of_range("win_slice", 1, len(study.paths))
        position = (
            st.slider("Slice", 1, len(study.paths), 1, key="win_slice", persist_state=ui.PERSIST)
            - 1
        )
    path = study.paths[position]
    try:
        scan = ui.read_file(path, ui.mtime_of(path))
    except HemoError as exc:
        st.error(str(exc))
else:
    ui.hide_upload_names()  # a file named after the patient: only its scrubbed name is shown
    uploads = st.file_uploader(
        "DICOM file(s), a zip of a series or a NIfTI volume (files without extension are fine)",
        accept_multiple_files=True,
        key="win_upload",
    )
    folder = st.file_uploader(
        "Or a whole folder (DICOMDIR, hidden and non-scan files are skipped)",
        accept_multiple_files="directory",
        key="win_folder",
    )
    files = ui.uploaded_files(uploads)
    in_folder, skipped = ui.uploaded_folder(folder)
    files += in_folder
    if skipped:
        st.caption(f"{skipped} file(s) of the folder skipped: DICOMDIR, hidden or not scans.")
    if not files:
        st.info("Drop a DICOM slice, several slices, a zip of a series or a NIfTI volume.")
        st.stop()
    decoded = ui.decode(dashboard.content_key(files), files)
    for name, message in decoded.errors:
        st.error(f"{name}: {message}" if name not in message else message)
    for _, message in decoded.notices:
        st.warning(message)
    stacks = [(dashboard.series_name(s), s.slices) for s in decoded.series]
    # Scans that can be windowed first (upload order among them), images without HU after
    singles = sorted(decoded.singles, key=lambda s: not hasattr(s, "hu"))
    stacks += [(s.source, (s,)) for s in singles]
    if not stacks:
        st.stop()
    names = [name for name, _ in stacks]
    _, chosen = stacks[
        names.index(st.selectbox("Scan", names, key="win_scan", persist_state=ui.PERSIST))
    ]
    position = 0
    if len(chosen) > 1:
        ui.forget_out_of_range("win_upload_slice", 1, len(chosen))
        position = (
            st.slider("Slice", 1, len(chosen), 1, key="win_upload_slice", persist_state=ui.PERSIST)
            - 1
        )
    scan = chosen[position]

if scan is None:
    st.stop()
if not hasattr(scan, "hu"):
    st.warning(
        f"{scan.source} is a {scan.kind.upper()} image: it carries no Hounsfield units, so it "
        "cannot be windowed. Pick a DICOM."
    )
    st.image(dashboard.display_image(scan), caption=scan.source, clamp=True)
    st.stop()

st.markdown("**Presets**")
for col, name in zip(st.columns(len(PRESETS)), PRESETS, strict=True):
    preset = PRESETS[name]
    col.button(
        f"{name} {preset.center_hu:g}/{preset.width_hu:g}",
        key=f"preset_{name}",
        on_click=_apply_preset,
        args=(name,),
        width="stretch",
    )
for key, kept in KEPT.items():
    st.session_state[key] = st.session_state[kept]
left, right = st.columns(2)
center = left.slider(
    "Level (centre, HU)", *CENTER_RANGE_HU, key=CENTER_KEY, on_change=_keep, args=(CENTER_KEY,)
)
width = right.slider(
    "Width (HU)", *WIDTH_RANGE_HU, key=WIDTH_KEY, on_change=_keep, args=(WIDTH_KEY,)
)

try:
    views = dashboard.window_views(scan, center, width)
except HemoError as exc:
    st.error(str(exc))
    st.stop()

left, right = st.columns(2)
left.image(views.chosen, caption=f"Chosen window {center}/{width} HU", clamp=True, width="stretch")
if views.default is not None:
    right.image(
        views.default, caption=f"Default: {views.default_label}", clamp=True, width="stretch"
    )
else:
    right.info(f"No default window: {views.default_label}.")

# The histogram reaches the window's top (the bone window ends at 2000 HU)
low_hu, high_hu = eda.HIST_RANGE_HU
high_hu = min(config.HU_CEIL, max(high_hu, center + width / 2))
hist = eda.histogram(scan.hu, (low_hu, high_hu), bins=128)
fig = px.bar(hist, x="value", y="fraction", title="HU histogram with the window band")
fig.update_traces(marker_line_width=0)
fig.add_vrect(x0=center - width / 2, x1=center + width / 2, fillcolor=BAND_COLOR, line_width=0)
fig.update_layout(
    xaxis_title="HU", yaxis_title="fraction of pixels (log)", yaxis_type="log", bargap=0
)
st.plotly_chart(fig, key="hu_histogram")

st.subheader("3-window composite (brain, subdural, soft tissue: the input of HU models)")
st.caption(
    "What a model on 3-window HU input sees, e.g. phantom_rsna3; a display-grayscale model "
    "(headct_real) sees the brain window, cropped to the head, with its left-right asymmetry "
    "map as a second channel."
)
cols = st.columns(1 + len(views.channels))
cols[0].image(views.composite, caption="composite (RGB)", clamp=True, width="stretch")
for col, (name, image) in zip(cols[1:], views.channels, strict=True):
    col.image(image, caption=name, clamp=True, width="stretch")

st.subheader("Pixel probe")
rows, cols_n = scan.hu.shape
left, right, out = st.columns(3)
ui.forget_out_of_range("probe_row", 0, rows - 1)
ui.forget_out_of_range("probe_col", 0, cols_n - 1)
row = left.number_input("Row", 0, rows - 1, rows // 2, key="probe_row", persist_state=ui.PERSIST)
col = right.number_input(
    "Column", 0, cols_n - 1, cols_n // 2, key="probe_col", persist_state=ui.PERSIST
)
out.metric("HU at pixel", f"{dashboard.probe_hu(scan.hu, int(row), int(col)):.0f}")

st.subheader("Metadata (PHI-free)")
st.dataframe(dashboard.metadata_frame(scan.metadata), hide_index=True, key="metadata")
