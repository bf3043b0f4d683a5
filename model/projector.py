"""The MLP projector that feeds sampled binary tokens back into the LLM (``projector.safetensors``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenProjector(nn.Module):
    """``fc2(gelu_tanh(fc1(tokens)))``: ``(B, N, 32) -> (B, N, hidden)``."""

    def __init__(self, token_bits: int, hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(token_bits, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(tokens), approximate="tanh"))
