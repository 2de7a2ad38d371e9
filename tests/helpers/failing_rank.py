"""``mpiexec -n 2 python tests/helpers/failing_rank.py raise|kill``: rank 1 fails (an exception, or SIGKILL)
after the first barrier; rank 0 then waits at a second barrier for a rank that is gone."""
from __future__ import annotations

import os
import signal
import sys
import time

from jukebox.utils.dist_utils import barrier, setup_dist_from_mpi

if __name__ == "__main__":
    rank, _, _ = setup_dist_from_mpi(port=0)
    barrier()
    if rank == 1:
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("rank 1 failed on purpose")
    time.sleep(0.5)
    barrier()  # gloo's own timeout is 600 s
    print("rank 0 got past the barrier", flush=True)
