"""Projection head used in self-distillation: Linear - GELU - Linear - L2 normalise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bids_semantoks.model.layers import init_weights

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """Projection head.

    Parameters
    ----------
    dim : int
        Input width (encoder D).
    hidden : int
        Hidden width (1024 in the released model).
    out : int
        Output width (128); outputs are L2-normalised.
    """

    def __init__(self, dim: int, hidden: int = 1024, out: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc2(F.gelu(self.fc1(x))), dim=-1)
