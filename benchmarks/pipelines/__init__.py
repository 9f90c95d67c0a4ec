"""Python stages of the shell pipelines in this folder (held-out openings, fine-tuning tables)."""
