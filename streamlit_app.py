"""hemo dashboard entrypoint: ``streamlit run streamlit_app.py``.

Navigation over the page files in ``pages/``; the sidebar picks the dataset and the model every
page works on. All work is done by the ``hemo`` package; the pages only draw it.
"""

from __future__ import annotations

import streamlit as st

from hemo import ui

#: (page file relative to this script, title, icon), in navigation order; the first is the default.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/eda.py", "EDA", ":material/bar_chart:"),
    ("pages/windowing.py", "Windowing", ":material/contrast:"),
    ("pages/training.py", "Training", ":material/model_training:"),
    ("pages/predict.py", "Predict", ":material/neurology:"),
)

st.set_page_config(page_title="hemo", page_icon=":material/neurology:", layout="wide")
navigation = st.navigation(
    [
        st.Page(path, title=title, icon=icon, default=i == 0)
        for i, (path, title, icon) in enumerate(PAGES)
    ]
)
ui.sidebar()
navigation.run()
