"""Pretrained backbones: the catalogue looked up by name (``catalogue``) and the one pixel pipeline (``pixels``)."""
