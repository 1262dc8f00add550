"""The bottom layer of jmlr: helpers every other package may use and that import nothing of jmlr.

* :mod:`jmlr.core.fs`: atomic file and folder writes (one implementation, with fsync), writer locks,
  cleanup of stale temporaries, one-line descriptions of OS errors.
* :mod:`jmlr.core.seed`: :func:`~jmlr.core.seed.seed_everything`.
* :mod:`jmlr.core.sampling`: :func:`~jmlr.core.sampling.gumbel_top_k`, sampling without replacement.
* :mod:`jmlr.core.fields`: :func:`~jmlr.core.fields.config_field`, the dataclass field with help text.
* :mod:`jmlr.core.paths`: :func:`~jmlr.core.paths.cache_dir` (``$JMLR_CACHE``).
* :mod:`jmlr.core.lazy`: :func:`~jmlr.core.lazy.lazy_getattr`, the lazy re-exports that keep ``import jmlr`` cheap.
* :mod:`jmlr.core.precision`: the one place that decides the autocast dtype per device (``optim.precision``).
"""
