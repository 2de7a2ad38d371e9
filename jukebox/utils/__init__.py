"""Shared helpers: audio I/O and losses, checkpoints and atomic writes, distributed set-up, logging,
downloads, the command-line error wrapper and the transformers-port state_dict mapping."""
