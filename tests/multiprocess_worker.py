"""A tiny multi-process program for tests/test_multiprocess.py (launcher failure, SLURM detection).

  launch/local_multiprocess.sh --num_processes=2 --module=tests.multiprocess_worker [-- fail_on=1]

Every process joins the distributed runtime (distributed.initialize(), settings from the environment),
prints what it sees, and gathers every process's index. With fail_on=I, process I exits with status 3
instead, so the others wait in the gather forever: only the launcher can end them. With hang=1
every process waits forever after start-up (for the launcher's interrupt test).
"""

import os
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmdiff_jax.training import distributed


def main(argv: list[str]) -> None:
  args = dict(arg.split("=", 1) for arg in argv)
  info = distributed.initialize()
  index = jax.process_index()
  print(f"{info.describe()}; process {index} of {jax.process_count()}: {jax.device_count()} "
        f"devices, {jax.local_device_count()} local, pid {os.getpid()}", flush=True)
  if args.get("hang") == "1":
    while True:
      time.sleep(1)
  if index == int(args.get("fail_on", -1)):
    print("failing on purpose", flush=True)
    os._exit(3)  # no atexit: a clean shutdown would wait for the other processes
  gathered = multihost_utils.process_allgather(np.asarray([index]), tiled=True)
  print(f"gathered {gathered.tolist()}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
