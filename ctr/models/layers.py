"""Dense building blocks shared by the models, with the regularisation the towers offer:
dropout after each layer's activation and batch normalisation before it (FuxiCTR's order)."""

from typing import List, Sequence

import torch
from torch import nn


class ResidualUnit(nn.Module):
    """Deep Crossing's residual unit: dropout(relu(bn(x + W1·relu(W0·x + b0) + b1))).

    The unit's input and output widths are equal (`dim`); `hidden_dim` is the inner width.
    `batch_norm` normalises the sum before its activation; `dropout` (a probability, 0: none)
    drops the unit's outputs while training.

    >>> ResidualUnit(dim=8, hidden_dim=32)(torch.zeros(4, 8)).shape
    torch.Size([4, 8])
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden_dim)
        self.outer = nn.Linear(hidden_dim, dim)
        self.norm = nn.BatchNorm1d(dim) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.norm(x + self.outer(torch.relu(self.inner(x))))))


def mlp(in_dim: int, hidden_dims: Sequence[int], dropout: float = 0.0, batch_norm: bool = False) -> nn.Sequential:
    """Layers of Linear → (BatchNorm) → ReLU → (Dropout), one per width in `hidden_dims`.

    >>> mlp(6, [4, 2], dropout=0.1, batch_norm=True)(torch.zeros(3, 6)).shape
    torch.Size([3, 2])
    """
    layers: List[nn.Module] = []
    for width_in, width in zip([in_dim, *hidden_dims], hidden_dims):
        layers.append(nn.Linear(width_in, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def check_dropout(dropout: float) -> None:
    """`model.dropout` must be a probability below 1 (1 would drop every output)."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout={dropout!r}: expected a probability in [0, 1)")
