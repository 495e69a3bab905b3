"""CIFAR ResNets of He et al. 2016: depth 6n+2, BasicBlocks with 16/32/64 channels.

Names: `resnet<depth>` uses shortcut option B (1x1 conv + BN projection where stride or width
changes, as in RepDistiller and the label-enhancement code); `resnet<depth>a` uses the paper's
parameter-free option A (subsample + zero-pad channels, as in Idelbayev's reimplementation).
Depths: 8, 14, 20, 32, 44, 56, 110. Global pooling is adaptive, so any input size works.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelenh.models._registry import register_model

DEPTHS = (8, 14, 20, 32, 44, 56, 110)
WIDTHS = (16, 32, 64)


class PadShortcut(nn.Module):
    """Option A: take every other pixel and zero-pad the new channels evenly on both sides."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # [B, C_in, H/s, W/s]
        return F.pad(x, (0, 0, 0, 0, *self.pad))  # [B, C_out, H/s, W/s]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self, depth: int, num_classes: int, in_chans: int = 3, shortcut: str = "B"
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.depth, self.shortcut = depth, shortcut
        self.conv1 = nn.Conv2d(in_chans, WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        in_planes = WIDTHS[0]
        stages = []
        for i, planes in enumerate(WIDTHS):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if j == 0 else 1, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # [B, 16, H, W]
        x = self.layer3(self.layer2(self.layer1(x)))  # [B, 64, H/4, W/4]
        x = torch.flatten(self.pool(x), 1)  # [B, 64]
        return self.fc(x)  # [B, K]


def _factory(depth: int, shortcut: str, num_classes: int, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(depth, num_classes, in_chans=in_chans, shortcut=shortcut)


for _depth in DEPTHS:
    register_model(f"resnet{_depth}")(functools.partial(_factory, _depth, "B"))
    register_model(f"resnet{_depth}a")(functools.partial(_factory, _depth, "A"))
