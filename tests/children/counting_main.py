"""Child: `python -m train.main ARGS`, writing the number of XLA backend compiles to the file
named by $PREGATE_TEST_COMPILE_COUNT_FILE at exit (atexit also runs when absl's app.run raises
SystemExit). The compile event fires only on a real backend compile (the jax_log_compiles line
also fires on lower), so "0" means nothing was compiled."""
import atexit
import os
import sys

from jax import monitoring

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_n = [0]


def _on_event(event: str, duration_secs: float, **kwargs) -> None:
  del duration_secs, kwargs
  if event == COMPILE_EVENT:
    _n[0] += 1


def _dump() -> None:
  with open(os.environ["PREGATE_TEST_COMPILE_COUNT_FILE"], "w") as f:
    f.write(str(_n[0]))


monitoring.register_event_duration_secs_listener(_on_event)
atexit.register(_dump)
sys.argv = ["train.main"] + sys.argv[1:]
from train.cli import main  # noqa: E402  (the listener must be registered first)

main.run()
