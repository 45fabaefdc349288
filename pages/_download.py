"""The "download this model" button: the run's model as one zip that classifies photos anywhere (ONNX Runtime,
NumPy and Pillow; ``toptune_core.portable.export``). The zip is made when the button is clicked."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from pages._state import settings, store
from toptune_core.runs.store import RunRecord


def model_download_button(run: RunRecord) -> None:
    """One button that exports ``run`` and downloads ``toptune-model-<run id>.zip``."""
    runs, config = store(), settings()  # read here: the callable runs outside this visitor's script run

    def make_zip() -> bytes:  # runs in Streamlit's download thread, on click
        from toptune_core.portable.export import export_run

        with tempfile.TemporaryDirectory() as tmp:
            return export_run(run.id, Path(tmp) / "model.zip", store=runs, settings=config).read_bytes()

    st.download_button("Download this model (one zip: ONNX model + predict.py)", data=make_zip,
                       file_name=f"toptune-model-{run.id}.zip", mime="application/zip", key=f"download_{run.id}",
                       on_click="ignore",
                       help="Runs anywhere with Python: `pip install onnxruntime numpy pillow`, unzip, then "
                            "`python predict.py photo.jpg`. Includes the unknown-photo check.")
