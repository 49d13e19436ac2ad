"""Dense building blocks shared by the models."""

import torch
from torch import nn


class ResidualUnit(nn.Module):
    """Deep Crossing's residual unit: relu(x + W1·relu(W0·x + b0) + b1).

    The unit's input and output widths are equal (`dim`); `hidden_dim` is the inner width.

    >>> ResidualUnit(dim=8, hidden_dim=32)(torch.zeros(4, 8)).shape
    torch.Size([4, 8])
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden_dim)
        self.outer = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.outer(torch.relu(self.inner(x))))
