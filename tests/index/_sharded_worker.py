"""Run under torchrun (2 gloo ranks): shard the docs, search, write this rank's results.

Each rank holds a contiguous shard and searches its own query set (rank r has 3 + 2 r queries).
"""
import os
import sys

import numpy as np
import torch.distributed as dist


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from jmlr.index import ExactIndex, ShardedIndex, load_index, shard_range

    rng = np.random.default_rng(0)
    docs = rng.standard_normal((1001, 24)).astype(np.float32)
    queries = rng.standard_normal((3 + 2 * world, 24)).astype(np.float32)
    ids = [f"d{i}" for i in range(len(docs))]
    s, e = shard_range(len(docs))
    local = ExactIndex(24)
    local.add(ids[s:e], docs[s:e])
    index = ShardedIndex(local)
    assert len(index) == len(docs)
    mine = queries[:3] if rank == 0 else queries[3:]
    scores, found = index.search(mine, 10)
    index.save(os.path.join(out_dir, "sharded"))
    again = load_index(os.path.join(out_dir, "sharded"))
    scores2, found2 = again.search(mine, 10)
    assert (found2 == found).all()
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), scores=scores.numpy(), ids=found.astype(str),
             shard=np.array([s, e]))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
