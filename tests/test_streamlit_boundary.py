"""Streamlit stays at the edge: one hemo module imports it, pages stay thin, settings match hemo."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from hemo.config import MAX_FILE_BYTES, PACKAGE_DIR, PROJECT_DIR

#: The one module of hemo allowed to import Streamlit (the cached loaders the pages use).
CACHE_MODULE = PACKAGE_DIR / "ui.py"
PAGES_DIR = PROJECT_DIR / "app_pages"
PAGE_TITLES = ["Home", "EDA", "Windowing", "Training", "Predict"]
#: Modules pages must not import: pixel math, DICOM parsing and Keras belong to hemo.
HEAVY_MODULES = {"numpy", "pydicom", "keras", "tensorflow", "cv2", "PIL"}
#: Array calls that signal math done in a page.
ARRAY_CALLS = {"clip", "where", "percentile"}
MIB = 1024 * 1024


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_cache_module_imports_streamlit():
    """No module under hemo/ but hemo/ui.py imports streamlit."""
    offenders = [
        str(p.relative_to(PROJECT_DIR))
        for p in sorted(PACKAGE_DIR.rglob("*.py"))
        if p != CACHE_MODULE and "streamlit" in _imported_modules(p)
    ]
    assert offenders == []
    assert "streamlit" in _imported_modules(CACHE_MODULE)


def test_boundary_check_catches_an_import(tmp_path):
    """The import scan sees a nested `from streamlit.x import y` (the check can fail)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from streamlit.runtime import exists\n", encoding="utf-8")
    assert "streamlit" in _imported_modules(module)


def test_pages_are_thin():
    """Pages import no numpy/pydicom/keras and call no np.clip/where/percentile."""
    pages = sorted(PAGES_DIR.glob("*.py"))
    assert len(pages) == len(PAGE_TITLES)
    for page in pages:
        assert not (_imported_modules(page) & HEAVY_MODULES), page.name
        calls = {
            node.func.attr
            for node in ast.walk(ast.parse(page.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        assert not (calls & ARRAY_CALLS), page.name


def test_navigation_titles_in_order():
    """The entrypoint navigates over app_pages/ titled Home, EDA, Windowing, Training, Predict."""
    tree = ast.parse((PROJECT_DIR / "streamlit_app.py").read_text(encoding="utf-8"))
    pages = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PAGES"
    )
    assert [title for _, title, _ in pages] == PAGE_TITLES
    for path, _, _ in pages:
        assert (PROJECT_DIR / path).is_file()


def test_streamlit_settings_match_hemo():
    """Dark theme, no usage stats, the upload limit equal to hemo's MAX_FILE_BYTES, and no
    module reloading under cached predictors (they would keep the old classes)."""
    settings = tomllib.loads((PROJECT_DIR / ".streamlit" / "config.toml").read_text("utf-8"))
    assert settings["theme"]["base"] == "dark"
    assert settings["server"]["fileWatcherType"] == "none"
    assert settings["browser"]["gatherUsageStats"] is False
    assert settings["server"]["maxUploadSize"] * MIB == MAX_FILE_BYTES


def test_no_pages_folder_beside_the_entrypoint():
    """No pages/ folder beside streamlit_app.py (it would switch Streamlit to v1 multipage mode)."""
    assert not (PROJECT_DIR / "pages").exists()
