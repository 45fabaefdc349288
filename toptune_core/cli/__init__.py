"""The command line: ``main`` dispatches to ``toptune``, ``predict``, ``finetune`` and ``bench`` command modules."""
