"""Evaluates decoding methods on a trained workdir (see bpdjax/eval/cli.py; --help lists the
methods and tasks).

  python decode.py --workdir=workdirs/small --tasks=lambada,squad --methods=ar,bpd \
      --num_examples=50 --max_new_tokens=64 --output=out/small
"""
from bpdjax.eval import cli

if __name__ == "__main__":
  cli.main()
