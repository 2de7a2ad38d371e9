"""The DistributedDataParallel wrapper of the model being trained, built from hps."""
from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["make_ddp"]


def make_ddp(model: nn.Module, hps: Mapping[str, Any]) -> DistributedDataParallel:
    """Data-parallel wrapper (needs an initialised process group). Buffers are not re-broadcast every
    forward (the VQ-VAE synchronises its codebooks itself); priors may leave parameters unused (e.g. the
    lyric encoder on some steps)."""
    kwargs = dict(bucket_cap_mb=hps["bucket"], find_unused_parameters=bool(hps["prior"]),
                  gradient_as_bucket_view=True)
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = False  # newer torch: broadcast_buffers is deprecated
    else:
        kwargs["broadcast_buffers"] = False
    # Convolution weights with a size-1 axis get gradients with other (equally valid) strides than
    # the bucket views; DDP's one-time performance note about that is noise here.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, **kwargs)
