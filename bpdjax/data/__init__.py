"""Input pipeline: SentencePiece vocabularies, seqio Tasks and the trainer's batch iterators.

  tokenizers.py  text <-> ids without TensorFlow (SentencePiece, Hugging Face, llama2.c).
  vocabulary.py  seqio views of them (load_vocabulary) for the pipelines.
  vocab.py     ensure_vocabulary: train or copy a run's vocabulary (+ `python -m bpdjax.data.vocab`).
  tasks.py     register_task: seqio Tasks for "wiki", "tiny_shakespeare", "c4" and
               "token_file" (token-id shards, e.g. from `python -m bpdjax.distill`).
  pipeline.py  make_train_iterator / make_eval_iterator: process-local packed numpy batches.

TensorFlow only feeds data here; it is kept off every accelerator (see `hide_accelerators`) so
that it never grabs GPU/TPU memory that JAX needs.
"""


def hide_accelerators() -> None:
  """Makes TensorFlow CPU-only. Safe to call more than once; a no-op once TF devices exist."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for device_type in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError):
      # RuntimeError: TF's devices are already initialised; ValueError: unknown device type.
      pass
