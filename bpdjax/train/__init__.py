"""Training: state.py (optimizer, schedule, initialisation), steps.py (jitted train / eval
steps), metrics.py (TensorBoard and metrics.jsonl), loop.py (train_and_evaluate), cli.py (the
train.py command line)."""
