"""Page identity, once: each page's file, title, icon and section, read by app.py (``st.navigation``) and home.py.

Also ``through_router()``, which every page calls first: Streamlit runs a
``pages/`` file on its own until some session has called ``st.navigation``.
"""

from __future__ import annotations

import runpy
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

APP = Path(__file__).resolve().parent.parent / "app.py"


@dataclass(frozen=True)
class Route:
    path: str
    title: str
    icon: str
    section: str = "Steps"


ROUTES = {
    "home": Route("pages/home.py", "Home", ":material/home:", "Toptune"),
    "data": Route("pages/data.py", "Data", ":material/photo_library:"),
    "toptune": Route("pages/toptune.py", "Top-tune", ":material/bolt:"),
    "finetune": Route("pages/finetune.py", "Fine-tune", ":material/model_training:"),
    "compare": Route("pages/compare.py", "Compare", ":material/scatter_plot:"),
    "predictions": Route("pages/predictions.py", "Predictions", ":material/grid_on:"),
    "classify": Route("pages/classify.py", "Classify a photo", ":material/eco:"),
}
#: The file of each page, by key (for ``st.page_link`` and ``st.switch_page``).
PAGES = {key: route.path for key, route in ROUTES.items()}
DEFAULT = "home"


def navigation() -> dict[str, list]:
    """The ``st.Page`` objects, by section, for ``st.navigation``."""
    sections: dict[str, list] = {}
    for key, route in ROUTES.items():
        page = st.Page(route.path, title=route.title, icon=route.icon, default=key == DEFAULT)
        sections.setdefault(route.section, []).append(page)
    return sections


def link(key: str, label: str) -> None:
    """A link to the page ``key``, with that page's icon."""
    st.page_link(PAGES[key], label=label, icon=ROUTES[key].icon)


def through_router() -> None:
    """Make sure this page runs inside app.py (its sidebar, its ``st.navigation``).

    Streamlit runs a ``pages/`` file on its own (its older multipage mode, which
    a ``pages/`` folder switches on) until some session has called
    ``st.navigation``: on a fresh server whose first request is a page's URL (a
    bookmark, a reload after a restart), and in AppTest. Then this switches
    the server to the router, as ``st.navigation`` itself does, and runs app.py
    (and through it this same page) in this same script run, so a click that
    started the run is not lost.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        runpy.run_path(str(APP), run_name="__main__")  # the app, this page included, via st.navigation
        st.stop()
