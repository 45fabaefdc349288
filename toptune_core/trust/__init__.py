"""Trust in an answer: whether a photo looks like the photos a model was trained on (``familiarity``)."""
