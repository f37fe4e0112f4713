"""hemo dashboard entrypoint: ``streamlit run streamlit_app.py``.

Navigation over the page files in ``app_pages/``; the sidebar picks the dataset and the model
every page works on. All work is done by the ``hemo`` package; the pages only draw it.

The folder is deliberately not called ``pages/``: Streamlit treats a ``pages/`` folder beside the
entrypoint as a v1 multipage app until ``st.navigation`` first runs in the process, so a first
visit straight to ``/predict`` would run that page alone, without this entrypoint's sidebar, and
leave the whole server in v1 mode.
"""

from __future__ import annotations

import streamlit as st

from hemo import dashboard, ui

#: (page file relative to this script, title, icon), in navigation order; the first is the default.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("app_pages/home.py", "Home", ":material/home:"),
    ("app_pages/eda.py", "EDA", ":material/bar_chart:"),
    ("app_pages/windowing.py", "Windowing", ":material/contrast:"),
    ("app_pages/training.py", "Training", ":material/model_training:"),
    ("app_pages/predict.py", "Predict", ":material/neurology:"),
)

# The icon is drawn by hemo: a :material/...: page icon makes the browser fetch it from Google
st.set_page_config(page_title="hemo", page_icon=dashboard.favicon(), layout="wide")
navigation = st.navigation(
    [
        st.Page(path, title=title, icon=icon, default=i == 0)
        for i, (path, title, icon) in enumerate(PAGES)
    ]
)
ui.sidebar()
ui.notice()
navigation.run()
