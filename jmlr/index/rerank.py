"""Stale-index mitigations.

1. Over-retrieve then rerank: search a (possibly stale) index for ``K' = overfetch * k`` candidates, embed
   them with the *current* doc tower, rescore, keep the top ``k``. :func:`rescore` does the middle step
   with gradient, for a trainer that scores candidates itself.
2. Query-side-only training: ``dual.freeze_doc_tower()``; the doc embeddings never change, so the index
   never goes stale and :class:`~jmlr.index.refresh.AsyncRefresher` does no refresh.
"""
from __future__ import annotations

import numpy as np

from jmlr.data.lookup import text_lookup


def rescore(dual, q_emb, cand_ids: np.ndarray, text_of, *, grad: bool = True):
    """Score candidates with the current doc tower: ``q_emb (B, d)`` x ``cand_ids (B, K)`` -> ``(B, K)``.

    ``text_of`` maps an id to the text the doc tower sees (a callable, a dict, or a Corpus). Each distinct
    candidate is embedded once. Empty slots (``None`` / ``-1``) score ``-inf``. With ``grad=True`` the
    scores carry gradient to both towers.
    """
    import torch

    lookup = text_lookup(text_of)
    cand_ids = np.asarray(cand_ids, dtype=object)
    B, K = cand_ids.shape
    valid = np.array([[c is not None and not (isinstance(c, (int, np.integer)) and c < 0) for c in row]
                      for row in cand_ids], dtype=bool).reshape(B, K)
    uniq: dict = {}
    for c in cand_ids[valid]:
        uniq.setdefault(c, len(uniq))
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        if uniq:
            docs = dual.embed_docs([lookup(c) for c in uniq])  # (U, d)
        else:
            docs = q_emb.new_zeros((1, q_emb.shape[1]))
        rows = torch.tensor([[uniq.get(c, 0) if v else 0 for c, v in zip(r, vr)] for r, vr in zip(cand_ids, valid)],
                            dtype=torch.long).reshape(B, K)
        d = docs.to(q_emb.dtype)[rows]  # (B, K, d)
        scores = torch.einsum("bd,bkd->bk", q_emb, d)  # (B, K)
        mask = torch.as_tensor(valid, device=scores.device)
        return scores.masked_fill(~mask, float("-inf"))


class RerankSearcher:
    """Search a stale index for ``overfetch * k`` candidates and rerank them with the current doc tower.

    >>> searcher = RerankSearcher(refresher.index, dual, corpus, overfetch=4)   # doctest: +SKIP
    >>> scores, ids = searcher.search(["first-line drug for ..."], k=5)         # (1, 5), (1, 5)
    """

    def __init__(self, index, dual, corpus, *, overfetch: int = 4):
        if overfetch < 1:
            raise ValueError(f"overfetch must be >= 1, got {overfetch}")
        self.index = index
        self.dual = dual
        self.overfetch = int(overfetch)
        self._text_of = text_lookup(corpus)

    def search(self, queries, k: int, *, grad: bool = False):
        """``queries``: texts or query embeddings ``(B, d)``. Returns ``(scores (B, k), ids (B, k))``."""
        import torch

        if isinstance(queries, (list, tuple)) and (not queries or isinstance(queries[0], str)):
            q = self.dual.embed_queries(list(queries)) if grad else self.dual.encode_queries(list(queries),
                                                                                              progress=False)
        else:
            q = torch.as_tensor(queries)
        _, cand = self.index.search(q.detach(), self.overfetch * k)  # (B, K')
        s = rescore(self.dual, q, cand, self._text_of, grad=grad)  # (B, K')
        kk = min(k, s.shape[1])
        top_s, top_j = s.topk(kk, dim=1)  # (B, k)
        ids = np.take_along_axis(np.asarray(cand, dtype=object), top_j.detach().cpu().numpy(), 1)
        if cand.dtype != object:
            ids = ids.astype(cand.dtype)
        return top_s, ids
