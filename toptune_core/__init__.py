"""toptune core: data, backbones, features, methods (top-tuning and fine-tuning), experiment, runs, trust.

Never imports streamlit."""

__version__ = "0.2.0"
