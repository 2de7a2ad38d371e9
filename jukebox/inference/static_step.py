"""The whole one-token step of a prior with fixed shapes, replayed as one CUDA graph on CUDA.

A step of the top-level prior launches about a thousand small kernels; on a GPU their launch cost
exceeds their work. ``StaticStep`` puts the step's inputs in fixed buffers and runs
``StepPlan.static_step``, so that, on CUDA, it can be captured once and replayed for every token.
Elsewhere it runs eagerly: the same logic, which is how the tests check it.
"""
from __future__ import annotations

import torch

from jukebox.inference.step_plan import StepPlan

__all__ = ["StaticStep"]


class StaticStep:
    """Embeddings, transformer step and output layer of ``model`` (a ``ConditionalAutoregressive2D``)
    for the positions after those its plan's cache holds. Returns logits ``(N, bins)`` in a buffer that
    the next call overwrites."""

    def __init__(self, model, plan: StepPlan, pos_emb: torch.Tensor, x_cond: torch.Tensor | None) -> None:
        n, device = plan.cache.n_samples, pos_emb.device
        self.model, self.plan, self.pos_emb, self.x_cond = model, plan, pos_emb, x_cond
        self.token = torch.zeros(n, dtype=torch.long, device=device)
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.logits: torch.Tensor | None = None
        self.graph = None

    def _compute(self) -> None:
        m, pos = self.model, self.pos.view(1)
        h = m.x_emb(self.token) + self.pos_emb.index_select(0, pos)
        cond = None
        if self.x_cond is not None:
            cond = self.x_cond[:, 0] if self.x_cond.shape[1] == 1 else self.x_cond.index_select(1, pos)[:, 0]
            h = h + cond
        h = self.plan.static_step(h.to(self.plan.dtype), self.pos)
        self.logits = m.x_out(m.add_output_cond(h.float(), cond))

    def _capture(self) -> None:
        device = self.token.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        # Warm-up runs rewrite the current position's cache slots with the same values, so they are harmless.
        with torch.cuda.stream(side):
            for _ in range(2):
                self._compute()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._compute()

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, bins)`` at the cache's position t, where token ``(N,)`` is the token at t - 1;
        advances the cache by one."""
        self.token.copy_(token)
        self.pos.fill_(self.plan.cache.position)
        if self.token.device.type == "cuda":
            if self.graph is None:
                self._capture()
            self.graph.replay()
        else:
            self._compute()
        self.plan.cache.advance(1)
        return self.logits
