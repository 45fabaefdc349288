"""toptune core: data, backbones, features, classifiers, evaluation and runs. Never imports streamlit."""

__version__ = "0.1.0"
