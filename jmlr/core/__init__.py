"""The bottom layer of jmlr: helpers every other package may use and that import nothing of jmlr.

* :mod:`jmlr.core.precision`: the one place that decides the autocast dtype per device (``optim.precision``).
"""
