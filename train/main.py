"""`python -m train.main`: the training command (see train/cli/main.py)."""
from train.cli.main import run

if __name__ == "__main__":
  run()
