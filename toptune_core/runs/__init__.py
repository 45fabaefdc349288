"""Recorded runs: the run record (``record``) and the on-disk store (``store``)."""
