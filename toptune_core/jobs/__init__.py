"""Long work behind one view: what lives where.

- ``view.py``: ``JobView`` (the snapshot a page draws) and the job states, shared by every kind of job.
- ``thread.py``: ``Job`` (a worker thread: top-tuning, downloads, unzipping), ``JobRegistry`` and ``registry()``.
- ``process.py``: ``FinetuneJob``, the fine-tune in its own process, recorded in the run store.
- ``queue.py``: ``FinetuneQueue``, the server's fine-tunes one at a time, first come first served.

Both kinds answer ``view()`` with a ``JobView`` and stop on ``cancel()``, so the
dashboard follows them with one loop. Nothing here imports streamlit.
"""
