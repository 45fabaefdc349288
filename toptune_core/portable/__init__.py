"""A trained model as portable files that need only ``onnxruntime``, ``numpy`` and ``pillow``.

* ``top``: the top classifier as ONNX (``skl2onnx``, written with every top-tuning
  run) and ``PortableTopTuner``, a top-tuned run predicting through ONNX Runtime
  alone: what a cold ``predict`` uses, so it imports neither torch nor scikit-learn;
* ``export``: ``export_run`` writes one zip (backbone graph, top classifier, class
  names, preprocessing, familiarity data, README, ``predict.py``) for
  ``python -m toptune_core export`` and the Classify page's download button;
* ``predict.py``: the standalone script that goes into the zip.
"""
