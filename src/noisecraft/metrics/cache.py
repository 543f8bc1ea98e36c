"""The metrics' cache is noisecraft's general cache (``noisecraft.cache``), re-exported here so
that ``noisecraft.metrics.cache`` imports keep working; new code imports ``noisecraft.cache``."""

from ..cache import cache_dir, content_hash, load_arrays, save_arrays, sha256_of_file

__all__ = ["cache_dir", "content_hash", "load_arrays", "save_arrays", "sha256_of_file"]
