"""`vecap filter`: model-based filtering and deduplication of image records."""
