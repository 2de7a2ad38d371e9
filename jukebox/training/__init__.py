"""The parts of training that ``jukebox/train.py``'s ``Trainer`` loop is built from, each testable on its own.

- ``state.py``: the training state: builds the model(s), restores a run from one read of its checkpoint, and
  writes checkpoints.
- ``optim.py``: AdamW, the warm-up/decay learning-rate schedule and the loss scaler.
- ``ema.py``: the exponential moving average of the weights (``hps.ema``).
- ``ddp.py``: the DistributedDataParallel wrapper.
"""
