"""``python -m toptune_core bench``: measuring tools, model ceiling, camera photos, the report and the run."""
