"""Datasets, the views whose VQ codes are extracted, and the memory-mapped code store."""
