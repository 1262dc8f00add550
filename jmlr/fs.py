"""Moved to :mod:`jmlr.core.fs`: this re-export stays only until the branches that still import it are merged."""
from jmlr.core.fs import *  # noqa: F401,F403
from jmlr.core.fs import __all__  # noqa: F401
