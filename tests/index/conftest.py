"""Shared data for index tests: clustered unit vectors (like sentence embeddings), without ties."""
import numpy as np
import pytest


def clustered(n, d, n_clusters=100, noise=1.0, seed=0, centers=None):
    """Unit vectors around random cluster centres: ``noise`` scales the per-vector offset."""
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = rng.standard_normal((n_clusters, d)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    lab = rng.integers(0, len(centers), n)
    x = centers[lab] + noise * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), centers


@pytest.fixture(scope="session")
def data_20k():
    """(docs 20000x384, queries 200x384) from the same 100 clusters."""
    docs, centers = clustered(20000, 384, noise=1.5, seed=0)
    queries, _ = clustered(200, 384, noise=1.5, seed=1, centers=centers)
    return docs, queries


@pytest.fixture(scope="session")
def small():
    """(ids, docs 3000x48, queries 17x48): odd sizes."""
    docs, centers = clustered(3000, 48, n_clusters=30, noise=2.0, seed=2)
    queries, _ = clustered(17, 48, n_clusters=30, noise=2.0, seed=3, centers=centers)
    return [f"doc-{i}" for i in range(len(docs))], docs, queries
