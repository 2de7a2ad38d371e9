"""``python tests/helpers/resolve_on_rank.py URL``: one rank of a torch.distributed job (RANK, WORLD_SIZE, ...
in the environment) resolving URL through the download cache; prints the local path."""
from __future__ import annotations

import sys

from jukebox.utils.dist_utils import setup_dist_from_mpi
from jukebox.utils.remote import resolve_path

if __name__ == "__main__":
    setup_dist_from_mpi()
    print(resolve_path(sys.argv[1]))
