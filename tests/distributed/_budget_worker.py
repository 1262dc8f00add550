"""torchrun worker: rank 1 is out of time, rank 0 is not; both must learn that the loop stops."""
import json
import sys

import torch.distributed as dist

from jmlr.train.budget import all_ranks_agree

dist.init_process_group("gloo")
rank = dist.get_rank()
out = {"mixed": all_ranks_agree(rank == 0), "all_ok": all_ranks_agree(True), "none_ok": all_ranks_agree(False)}
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
