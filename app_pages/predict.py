"""Predict: drag in scans, get the probability of hemorrhage and a Grad-CAM heatmap per image."""

from __future__ import annotations

from functools import partial

import plotly.express as px
import streamlit as st

from hemo import dashboard, reports, ui
from hemo.errors import HemoError

SAMPLE_KEY = "predict_samples"
KEPT_KEY = "predict_kept_upload"
RESTORED_KEY = "predict_kept_restored"
SERIES_SLICE_KEY = "series_slice_{}"
STRIP_COLOR = "#E8574C"
OUT_COLOR = "#B0B0B0"
PERCENT = 100.0
UNCERTAIN_DELTA = "uncertain: refer to a reader"
OUTSIDE_DELTA = "outside the model's range"
BAND_COLOR = "#F0A030"
#: The strip's mark of the slice shown below it.
SHOWN_COLOR = "#2A6FDB"
BAND_OPACITY = 0.25

st.title("Predict")
st.caption(
    "Drop DICOM files (with or without extension, single- or multi-frame), PNG/JPG images, a "
    "zip of a series, or a NIfTI volume (.nii, .nii.gz). "
    "Files stay in memory: nothing you upload is written to disk."
)


def _add_sample(key: str) -> None:
    chosen = st.session_state.setdefault(SAMPLE_KEY, [])
    if key not in chosen:
        chosen.append(key)


def _jump(slider_key: str, index: int) -> None:
    st.session_state[slider_key] = index + 1


def _forget_kept() -> None:
    st.session_state.pop(KEPT_KEY, None)
    st.session_state.pop(RESTORED_KEY, None)


# Streamlit forgets an uploader's files once another page has run: the page keeps its own
# copy (in memory, like the uploader's) and shows it again on return, until replaced or dropped
fresh_visit = "predict_upload" not in st.session_state
ui.hide_upload_names()  # a file named after the patient: only its scrubbed name is shown
uploads = st.file_uploader(
    "Scans", accept_multiple_files=True, key="predict_upload", label_visibility="collapsed"
)
folder = st.file_uploader(
    "Or a whole folder (an exported study: DICOMDIR, hidden and non-scan files are skipped)",
    accept_multiple_files="directory",
    key="predict_folder",
)
st.markdown("**Try a sample**")
sample_cols = st.columns(len(dashboard.SAMPLES) + 1)
for col, (key, label) in zip(sample_cols, dashboard.SAMPLES.items(), strict=False):
    col.button(label, key=f"sample_{key}", on_click=_add_sample, args=(key,), width="stretch")
if st.session_state.get(SAMPLE_KEY):
    sample_cols[-1].button(
        "Clear samples", key="sample_clear", on_click=st.session_state.pop, args=(SAMPLE_KEY,)
    )

files = ui.uploaded_files(uploads)
in_folder, skipped = ui.uploaded_folder(folder)
files += in_folder
kept = st.session_state.get(KEPT_KEY)
if files:
    st.session_state[KEPT_KEY] = (files, skipped)
    st.session_state.pop(RESTORED_KEY, None)
elif kept and (fresh_visit or st.session_state.get(RESTORED_KEY)):
    files, skipped = list(kept[0]), kept[1]
    st.session_state[RESTORED_KEY] = True
    info, forget = st.columns([4, 1])
    # its count, not its names: a name may hold the patient's (the results below are scrubbed)
    info.info(f"Your earlier upload is shown again ({len(files)} file(s)).")
    forget.button("Forget it", key="forget_upload", on_click=_forget_kept, width="stretch")
else:
    _forget_kept()  # the user emptied the uploader
if skipped:
    st.caption(f"{skipped} file(s) of the folder skipped: DICOMDIR, hidden or not scans.")
phantom_samples: set[str] = set()  # names of the phantoms among the samples
for key in st.session_state.get(SAMPLE_KEY, []):
    try:
        sample = dashboard.sample_input(key)
    except HemoError as exc:
        st.error(str(exc))
        continue
    # marked as a sample by name, so that an upload of the same file name is never taken for one
    name = f"{dashboard.SAMPLE_PREFIX}{sample[0]}"
    files.append((name, sample[1]))
    if key != dashboard.SAMPLE_CQ500:
        phantom_samples.add(name)
if not files:
    st.info("Drop scans above or try a sample.")
    st.stop()

predictor = ui.active_predictor()
if predictor is None:
    st.stop()
model_path = ui.model_path()
card = predictor.card
synthetic = dashboard.synthetic_training_message(card)
if synthetic:
    st.warning(synthetic)

with st.expander("Heatmap settings", expanded=False):
    c1, c2, c3, c4 = st.columns(4)
    method = c1.selectbox(
        "Method", dashboard.cam_methods(), key="cam_method", persist_state=ui.PERSIST
    )
    label = c2.selectbox(
        "Explain output", list(card.labels), key="cam_label", persist_state=ui.PERSIST
    )
    alpha = c3.slider("Opacity", 0.0, 1.0, 0.4, 0.05, key="cam_alpha", persist_state=ui.PERSIST)
    colormap = c4.selectbox(
        "Colormap", dashboard.colormaps(), key="cam_colormap", persist_state=ui.PERSIST
    )

key = dashboard.content_key(files)
decoded = ui.decode(key, files)
for name, message in decoded.errors:
    st.error(message if name in message else f"{name}: {message}")
for _, message in decoded.notices:  # every slice was read: no error, no report row
    st.warning(message)

# One report row per uploaded file: those that could not be read carry their error
rows: list[dict] = [reports.error_row(name, message) for name, message in decoded.errors]
studies: list[dict] = []


def _uncertain_delta(uncertain: bool | None) -> dict:
    """Metric arguments that mark a verdict in the referral band (none otherwise)."""
    if not uncertain:
        return {}
    return {"delta": UNCERTAIN_DELTA, "delta_color": "orange", "delta_arrow": "off"}


def _show_analysis(
    result: dashboard.Analysis,
    item: str,
    outside_range: str | None = None,
    slice_number: int | None = None,
    seen: tuple[str, float] | None = None,
    referred_above=False,
    phantom_note: str | None = None,
) -> None:
    """Probability, verdict, subtypes, and the plain slice beside the overlay (``slice_number``:
    the slice's place in its series, 1-based; ``referred_above``: the series' warning above
    already gives this slice's referral; ``phantom_note``: a phantom sample shown to a model
    trained on real scans)."""
    p = result.prediction
    in_series = slice_number is not None
    if seen:
        st.info(dashboard.training_match_message(seen))
    if phantom_note:
        st.info(phantom_note)
    reason = outside_range or p.outside_range
    if reason:
        counts = " and does not count for the series verdict" if in_series else ""
        st.warning(
            f"Outside the model's range: {reason}. The model never saw such slices in training, "
            f"so its probability here is not a finding{counts}."
        )
    elif p.uncertain and not referred_above:  # out of range: no call, uncertain or not
        st.warning(dashboard.referral_message(card, p.probability))
    m1, m2, m3 = st.columns(3)
    m1.metric("Probability of hemorrhage", f"{p.probability * PERCENT:.1f}%")
    if reason:
        m2.metric(
            "Verdict", reports.NO_VERDICT, delta=OUTSIDE_DELTA, delta_color="off", delta_arrow="off"
        )
    else:
        m2.metric("Verdict", reports.verdict(p.positive), **_uncertain_delta(p.uncertain))
    m3.metric("Threshold", f"{p.threshold * PERCENT:.1f}%")
    if synthetic and not in_series:  # a series says it once, under its own verdict
        st.caption(dashboard.PHANTOM_ONLY_CAPTION)
    picture = dashboard.overlay_image(result, alpha, colormap)
    left, right = st.columns(2)
    shown = dashboard.slice_caption(slice_number, p) if in_series else "slice"
    left.image(result.display, caption=shown, clamp=True, width="stretch")
    caption = f"{result.method} · {result.label}" + (" · flat map" if result.flat else "")
    right.image(picture, caption=caption, width="stretch")
    unlikely = dashboard.unlikely_map_note(result, p.threshold)
    if unlikely:
        right.caption(unlikely)
    blended = dashboard.density_caption(card, result.label)
    if blended:
        right.caption(blended)
    subtypes = dashboard.subtype_frame(p)
    if not subtypes.empty:
        st.dataframe(
            subtypes,
            hide_index=True,
            key=f"subtypes_{item}",
            column_config={
                "label": st.column_config.TextColumn("Subtype"),
                "probability": st.column_config.ProgressColumn(
                    "Probability", min_value=0.0, max_value=1.0, format="percent"
                ),
            },
        )
    st.download_button(
        "Download overlay PNG",
        partial(reports.png_bytes, picture),
        file_name=dashboard.overlay_file_name(result.name, result.method, slice_number),
        mime="image/png",
        key=f"png_{item}",
        on_click="ignore",
    )


for i, scan in enumerate(decoded.singles):
    with st.container(border=True):
        st.subheader(scan.source)
        try:
            result = ui.analyse(model_path, key, f"s{i}", method, label, scan)
        except HemoError as exc:
            st.error(str(exc))
            rows.append(reports.error_row(scan.source, str(exc)))
            continue
        seen = ui.training_match(model_path, scan)
        phantom = dashboard.phantom_sample_message(card) if scan.source in phantom_samples else None
        _show_analysis(result, f"s{i}", seen=seen, phantom_note=phantom)
        note = dashboard.training_match_note(seen)
        if phantom:
            note = "; ".join(n for n in (dashboard.PHANTOM_SAMPLE_NOTE, note) if n)
        rows.append(reports.prediction_row(result.prediction, note=note))

for j, series in enumerate(decoded.series):
    with st.container(border=True):
        try:
            result = ui.predict_series(
                model_path, key, f"r{j}", series, f"Predicting {len(series.slices)} slices…"
            )
        except HemoError as exc:
            st.error(str(exc))
            name = dashboard.series_name(series)
            rows.extend(reports.error_row(s.source, str(exc), series=name) for s in series.slices)
            continue
        study = result.study
        seen = ui.training_matches(model_path, key, f"r{j}", series.slices)
        st.subheader(dashboard.series_title(result.name, study["slices"]))
        if study["note"]:  # slices missing: the verdict is on what was given
            st.warning(study["note"][0].upper() + study["note"][1:])
        no_verdict = study["verdict"] == reports.NO_VERDICT  # no slice in the model's range
        if study["uncertain"] and not no_verdict:
            st.warning(dashboard.referral_message(card, study["probability"], "series"))
        m1, m2, m3 = st.columns(3)
        if no_verdict:
            m1.metric(
                "Study verdict",
                reports.NO_VERDICT,
                delta=OUTSIDE_DELTA,
                delta_color="off",
                delta_arrow="off",
            )
        else:
            m1.metric("Study verdict", study["verdict"], **_uncertain_delta(study["uncertain"]))
        outside = study["slices"] - study["slices_in_range"]
        in_range = " in range" if outside and study["slices_in_range"] else ""
        m2.metric(f"Highest slice probability{in_range}", f"{study['probability'] * PERCENT:.1f}%")
        m3.metric(f"Slices over threshold{in_range}", study["positive_slices"])
        if outside:
            st.caption(dashboard.range_caption(study))
        if synthetic:
            st.caption(dashboard.PHANTOM_ONLY_CAPTION)
        slider_key = SERIES_SLICE_KEY.format(j)
        # A series shown here for the first time (another upload, another model) opens at its
        # most suspicious slice; the same one keeps the slice the user chose, also after a visit
        # to another page (the slider persists for the session)
        shown_series = (key, series.series_uid, model_path)
        if st.session_state.get(f"{slider_key}_series") != shown_series:
            st.session_state[f"{slider_key}_series"] = shown_series
            st.session_state[slider_key] = result.most_suspicious + 1
        strip = dashboard.strip_frame(result)
        fig = px.bar(
            strip,
            x="slice",
            y="probability",
            color="status",
            color_discrete_map={
                dashboard.IN_RANGE_LABEL: STRIP_COLOR,
                dashboard.OUT_OF_RANGE_LABEL: OUT_COLOR,
            },
            hover_data=["outside_range"],
            range_y=[0, 1],
            height=220,
        )
        fig.add_hline(y=card.threshold, line_dash="dot")
        fig.add_vline(x=st.session_state[slider_key], line_color=SHOWN_COLOR, line_width=2)
        band = predictor.referral
        if band is not None and band.high > band.low:
            fig.add_hrect(
                y0=band.low,
                y1=band.high,
                fillcolor=BAND_COLOR,
                opacity=BAND_OPACITY,
                line_width=0,
                layer="below",
                annotation_text="referral band",
                annotation_position="bottom right",
            )
        # The legend sits above the plot, not beside it: on a phone it took half the width
        fig.update_layout(
            xaxis_title="slice (inferior → superior)",
            bargap=0,
            legend_title_text="",
            legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
            margin={"r": 10},
        )
        st.plotly_chart(fig, key=f"strip_{j}")
        st.button(
            f"Jump to the most suspicious slice ({result.most_suspicious + 1})",
            key=f"jump_{j}",
            on_click=_jump,
            args=(slider_key, result.most_suspicious),
        )
        position = (
            st.slider("Slice", 1, len(series.slices), key=slider_key, persist_state=ui.PERSIST) - 1
        )
        try:
            shown = ui.analyse(
                model_path, key, f"r{j}-{position}", method, label, series.slices[position]
            )
        except HemoError as exc:
            st.error(str(exc))
        else:
            _show_analysis(
                shown,
                f"r{j}",
                result.predictions[position].outside_range,
                slice_number=position + 1,
                seen=seen[position],
                # the deciding slice of an uncertain series: its warning is the series' one
                referred_above=bool(study["uncertain"]) and position == result.most_suspicious,
            )
        studies.append(study)
        rows.extend(
            reports.prediction_row(
                p,
                slice_number=n,
                series=study["source"],
                note=dashboard.training_match_note(match),
            )
            for n, (p, match) in enumerate(zip(result.predictions, seen, strict=True), start=1)
        )

if rows or studies:
    st.subheader("Report")
    model_info = {
        "name": card.name,
        "architecture": card.architecture,
        "threshold": card.threshold,
        "referral": card.referral,
    }
    left, right = st.columns(2)
    left.download_button(
        "Download CSV report",
        partial(reports.report_csv, rows, studies, model=card.name, note=synthetic),
        file_name="hemo_report.csv",
        mime="text/csv",
        key="report_csv",
        on_click="ignore",
    )
    right.download_button(
        "Download JSON report",
        partial(reports.report_json, rows, model=model_info, studies=studies, note=synthetic),
        file_name="hemo_report.json",
        mime="application/json",
        key="report_json",
        on_click="ignore",
    )
