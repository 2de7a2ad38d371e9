"""``mpiexec -n 2 python tests/helpers/failing_train_step.py [train.py options]``: jukebox/train.py whose rank 1
raises at step 3."""
from __future__ import annotations

from jukebox import train
from jukebox.utils.cli import fire_command

_train_step = train.Trainer.train_step


def failing_step(self, *args, **kwargs):
    if self.rank == 1 and self.step == 3:
        raise RuntimeError("injected failure on rank 1")
    return _train_step(self, *args, **kwargs)


if __name__ == "__main__":
    train.Trainer.train_step = failing_step
    fire_command(train.run, prog="python jukebox/train.py")
