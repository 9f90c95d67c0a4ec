"""decode.py's configuration: every setting of an evaluation run, with its default.

  python decode.py --workdir=workdirs/small --config.methods=ar,bpd,pbest_0gram \
      --config.options.pbest_0gram.p=8 --output=out/small

Every key can be overridden with --config.KEY=VALUE; the flags of earlier versions (--tasks,
--methods, --k, --p, --alpha, --tree_size, --ngram_backend, ...) still work and set the same
keys. The settings, their defaults, help and checks are declared once in bpdjax/eval/schema.py;
method knobs and their defaults come from the methods' own options (decoding/drafters/,
decoding/policies/); `python decode.py --help` lists the methods and tasks.
"""
from bpdjax.eval import schema


def get_config():
  return schema.config()
