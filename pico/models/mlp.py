"""MLP encoder for tabular features (e.g. the real-world PLL ``.mat`` sets)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLPEncoder(nn.Module):
    """Stack of Linear(-BN)-ReLU(-Dropout) layers mapping (B, in_dim) to (B, out_dim).

    ``out_dim = hidden[-1]``. With ``batch_norm`` the linear layers carry no bias (the
    BN shift replaces it).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (256, 256),
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        if in_dim < 1 or not hidden or min(hidden) < 1:
            raise ValueError(
                f"MLPEncoder needs in_dim >= 1 and a non-empty list of positive hidden sizes, "
                f"got in_dim={in_dim}, hidden={hidden}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        prev = in_dim
        for width in hidden:
            layers.append(nn.Linear(prev, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        self.net = nn.Sequential(*layers)
        self.out_dim = hidden[-1]

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim); extra trailing dimensions are flattened."""
        return self.net(x.flatten(1))
