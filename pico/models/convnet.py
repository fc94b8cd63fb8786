"""A small, cheap convolutional encoder for tiny images (8x8 digits, 28x28 MNIST-like)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F


class _Block(nn.Module):
    """``num_convs`` conv3x3-BN-ReLU layers, then a 2x2 max-pool if asked and possible."""

    def __init__(self, in_ch: int, out_ch: int, num_convs: int, pool: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += [
                nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
        self.convs = nn.Sequential(*layers)
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)
        if self.pool and min(x.shape[-2:]) >= 2:
            x = F.max_pool2d(x, 2)
        return x


class SmallConvNet(nn.Module):
    """Blocks of conv3x3-BN-ReLU layers with 2x2 max-pooling between blocks.

    Pooling is skipped once the feature map is smaller than 2x2, so any input from
    1x1 upwards works (8x8 digits: 8 -> 4 -> 2; 28x28: 28 -> 14 -> 7). A global
    average pool gives features of size ``out_dim = widths[-1]``. One convolution per
    block (the default) keeps a forward+backward pass of 64 digits at a few ms on CPU;
    ``convs_per_block=2`` gives a VGG-style, roughly 2.5x slower variant.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_block: int = 1,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1 or in_channels < 1 or convs_per_block < 1:
            raise ValueError(
                "SmallConvNet needs in_channels >= 1, convs_per_block >= 1 and a non-empty "
                f"list of positive widths, got in_channels={in_channels}, widths={widths}, "
                f"convs_per_block={convs_per_block}"
            )
        chans = [in_channels, *widths]
        self.blocks = nn.Sequential(
            *(
                _Block(chans[i], chans[i + 1], convs_per_block, pool=i < len(widths) - 1)
                for i in range(len(widths))
            )
        )
        self.out_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) -> (B, out_dim)."""
        return self.blocks(x).mean(dim=(-2, -1))
