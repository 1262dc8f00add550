"""Fused score + top-k kernels, shipped as ``jmlr.kernels``."""
