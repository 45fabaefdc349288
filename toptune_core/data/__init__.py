"""Photos in: datasets and their scan (``dataset``), the held-out rule (``split``), one photo (``images``), Eden downloads, zips and uploads."""
