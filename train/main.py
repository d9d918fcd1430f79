"""`python -m train.main` and `pregate-train`: the training command (train/cli/main.py).

A CPU run re-executes itself once with glibc's huge-page tunable (train/runtime/host_memory.py).
Doing it here, before JAX and the rest of the stack are imported, costs a bare interpreter
start rather than a second import of everything (~3 s of each run's start-up on 2 cores)."""
from train.runtime import host_memory


def run() -> None:
  host_memory.reexec_with_tunables()
  from train.cli.main import run as run_training
  run_training()


if __name__ == "__main__":
  run()
