"""Trains a blockwise parallel LM (see bpdjax/train/cli.py for the flags).

  python train.py --config=configs/tiny.py --workdir=/tmp/tiny --config.num_train_steps=20
"""
from bpdjax.train import cli

if __name__ == "__main__":
  cli.main()
