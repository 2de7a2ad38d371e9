"""Building blocks of the transformer: the ``Conv1D`` linear layer, a float32 LayerNorm and the
activation functions.

``Conv1D`` stores its weight as ``w (n_in, n_out)`` (the transpose of ``nn.Linear``) because the
released checkpoints do; ``fp16_params`` keeps only these ``w`` in float16.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Conv1D", "LayerNorm", "ACT_FNS", "quick_gelu", "gelu", "swish", "float16_weight_names",
           "convert_conv_weights_to_fp16"]


class Conv1D(nn.Module):
    """Position-wise linear layer ``(..., n_in) -> (..., n_out)``, computed in the input's dtype."""

    def __init__(self, n_in: int, n_out: int, zero_out: bool = False, init_scale: float = 1.0):
        super().__init__()
        self.n_in = n_in
        self.n_out = n_out
        w = torch.zeros(n_in, n_out)
        if not zero_out:
            nn.init.normal_(w, std=0.02 * init_scale)
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Casting the (possibly float16) weight to x's dtype means float32 activations use
        # float32 maths and half activations use half maths, whatever the weights are stored in.
        out = torch.addmm(self.b.to(x.dtype), x.reshape(-1, self.n_in), self.w.to(x.dtype))
        return out.view(*x.shape[:-1], self.n_out)

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}"


class LayerNorm(nn.LayerNorm):
    """LayerNorm that normalises half-precision inputs in float32 and returns the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).type_as(x)
        return super().forward(x)


class _QuickGelu(torch.autograd.Function):
    """``x * sigmoid(1.702 x)`` that keeps only ``x`` for the backward pass (saves activation memory)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(1.702 * x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        sig = torch.sigmoid(1.702 * x)
        return grad_out * sig * (1.0 + 1.702 * x * (1.0 - sig))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """Sigmoid approximation of GELU: ``x * sigmoid(1.702 x)``."""
    return _QuickGelu.apply(x)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU, ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


ACT_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "swish": swish,
    "gelu": gelu,
    "quick_gelu": quick_gelu,
}


def float16_weight_names(module: nn.Module) -> set[str]:
    """The parameters ``fp16_params`` stores in float16: the ``w`` of every ``Conv1D`` inside ``module``
    (biases, norms and embeddings stay float32)."""
    return {f"{name}.w" if name else "w" for name, m in module.named_modules() if isinstance(m, Conv1D)}


def convert_conv_weights_to_fp16(module: nn.Module) -> nn.Module:
    """Store the ``float16_weight_names`` of ``module`` in float16, as the ``fp16_params`` checkpoints do.
    Returns ``module``."""
    for name in float16_weight_names(module):
        param = module.get_parameter(name)
        param.data = param.data.half()
    return module
