"""The 5-layer CNN student of the instance-based label smoothing paper (`shallownet.Net`).

3 x [conv3x3 -> BN -> maxpool2 -> ReLU] with 32/64/128 channels, then
FC(2048 -> 128) -> BN1d -> ReLU -> dropout 0.5 -> FC(128 -> K). Convolutions keep their bias,
as in the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelenh.models._registry import register_model


class ShallowNet(nn.Module):
    def __init__(self, num_classes: int, in_chans: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        chans = (in_chans, 32, 64, 128)
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 3, stride=1, padding=1) for i in range(3)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in chans[1:])
        # The original flattens the 4x4 map a 32x32 input leaves (128*4*4 = 2048). Adaptive
        # pooling to 4x4 is the identity there and lets other image sizes work too.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(128 * 4 * 4, 128)
        self.fcbn1 = nn.BatchNorm1d(128)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = F.relu(F.max_pool2d(bn(conv(x)), 2))  # [B, C, H/2, W/2]
        x = torch.flatten(self.pool(x), 1)  # [B, 2048]
        x = self.dropout(F.relu(self.fcbn1(self.fc1(x))))  # [B, 128]
        return self.fc2(x)  # [B, K]


@register_model("shallow")
def shallow(num_classes: int, in_chans: int = 3) -> ShallowNet:
    return ShallowNet(num_classes, in_chans=in_chans)
