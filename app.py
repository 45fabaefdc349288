"""Toptune dashboard: the entry point (``make run`` = ``streamlit run app.py``).

Routes the pages with ``st.navigation``; each page is one file in ``pages/``
and only lays out widgets and calls ``toptune_core``.

Streamlit runs this file as ``__main__``. A training process that
``multiprocessing`` starts with "spawn" (the fine-tune) re-imports the main
module under the name ``__mp_main__``: there, nothing must be drawn, hence
the guard at the bottom.
"""


def main() -> None:
    import streamlit as st

    from pages import _visitor
    from pages._router import navigation
    from pages._state import active_jobs, current_dataset, visitor
    from pages._versions import dataset_line
    from pages._widgets import friendly_errors

    st.set_page_config(page_title="Toptune · leaf photo diagnosis", page_icon="🌱", layout="wide")
    page = st.navigation(navigation())
    me = visitor()  # who is visiting (on a shared server: may stop here at a password or a login)

    with st.sidebar, friendly_errors():
        choice = current_dataset()
        st.caption("Dataset: " + (dataset_line(choice) if choice else "none chosen yet"))
        for job in active_jobs():
            st.caption(f":material/hourglass_top: {job.title} (running)")
        _visitor.describe(me)

    page.run()


if __name__ == "__main__":
    main()
