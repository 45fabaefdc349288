"""Features of photos from a frozen backbone: the extractor, the decode-ahead reader and the on-disk cache."""
