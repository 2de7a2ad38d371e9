"""``python tests/helpers/rank_threads.py`` as one rank of a torch.distributed job: prints the number of CPU
threads the rank's set-up gave torch."""
from __future__ import annotations

import torch

from jukebox.utils.dist_utils import setup_dist_from_mpi

if __name__ == "__main__":
    setup_dist_from_mpi()
    print(torch.get_num_threads())
