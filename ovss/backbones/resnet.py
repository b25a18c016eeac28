"""detectron2-layout ResNets with frozen batch norm (the MaskFormer v1 backbones of ZSSeg and ZegFormer).

Module names follow detectron2 (``stem.conv1``, ``res2.0.conv1.norm``, ``res2.0.shortcut``, ...) so
a released detectron2 checkpoint loads by stripping its ``backbone.`` prefix. Two stems:

* ``basic``: conv 7x7 / 2 + FrozenBN + ReLU, max-pool 3 / 2 / 1 (detectron2 ``BasicStem``; ZegFormer R50/R101);
* ``deeplab``: three 3x3 convs (stride 2, 1, 1; widths C/2, C/2, C) each + FrozenBN + ReLU, then the same
  max-pool (detectron2 ``projects/DeepLab`` ``DeepLabStem``; the "R101c" of ZSSeg).

Bottleneck blocks: 1x1, 3x3 (the stride and dilation), 1x1, shortcut conv + FrozenBN in block 0 of
each stage when the widths differ, ReLU after the sum (detectron2 ``BottleneckBlock``). ``res5_multi_grid``
gives the per-block dilations of res5 (DeepLab ``RES5_MULTI_GRID``); res5 keeps stride 2 when its
dilation is 1. FrozenBN keeps ``torchvision.ops.FrozenBatchNorm2d``'s buffers and evaluates
``F.batch_norm(training=False)`` as detectron2's ``FrozenBatchNorm2d`` does without gradients (the
scale-and-shift form differs by float32 rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

#: blocks per stage (res2..res5) for each depth (detectron2 ``build_resnet_backbone``).
BLOCKS_PER_DEPTH = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@dataclass
class ResNetConfig:
    """Architecture of a detectron2 bottleneck ResNet (``MODEL.RESNETS.*``)."""

    depth: int = 101
    stem_type: str = "basic"  # "basic" or "deeplab"
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    width_per_group: int = 64
    num_groups: int = 1
    stride_in_1x1: bool = False
    res5_dilation: int = 1
    res5_multi_grid: list[int] = field(default_factory=lambda: [1, 1, 1])


class FrozenBN(FrozenBatchNorm2d):
    """Frozen batch norm evaluated as detectron2 does at inference: one fused ``F.batch_norm``
    (``training=False``, eps 1e-5); gradients still flow to the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)


class ConvNorm(nn.Conv2d):
    """detectron2 ``Conv2d`` with a ``norm`` submodule (FrozenBN) and an optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, relu: bool = False) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=False)
        self.norm = FrozenBN(cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class BasicStem(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(cin, cout, 7, stride=2, padding=3, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class DeepLabStem(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(cin, cout // 2, 3, stride=2, padding=1, relu=True)
        self.conv2 = ConvNorm(cout // 2, cout // 2, 3, stride=1, padding=1, relu=True)
        self.conv3 = ConvNorm(cout // 2, cout, 3, stride=1, padding=1, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    def __init__(self, cin: int, cout: int, bottleneck: int, stride: int, groups: int,
                 stride_in_1x1: bool, dilation: int) -> None:
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride) if cin != cout else None
        s1x1, s3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(cin, bottleneck, 1, stride=s1x1, relu=True)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, stride=s3x3, padding=dilation,
                              dilation=dilation, groups=groups, relu=True)
        self.conv3 = ConvNorm(bottleneck, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return F.relu(out)


class ResNet(nn.Module):
    """Bottleneck ResNet returning ``{"res2": s4, "res3": s8, "res4": s16, "res5": s32}`` feature maps.

    Input: float (B, 3, H, W), normalised by the caller. Output channels: res2_out_channels x 1, 2, 4, 8.
    """

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        if cfg.depth not in BLOCKS_PER_DEPTH:
            raise ValueError(f"ResNet depth {cfg.depth} is not a bottleneck ResNet (50, 101, 152)")
        stem_cls = {"basic": BasicStem, "deeplab": DeepLabStem}.get(cfg.stem_type)
        if stem_cls is None:
            raise ValueError(f"unknown ResNet stem {cfg.stem_type!r} (basic or deeplab)")
        self.cfg = cfg
        self.stem = stem_cls(3, cfg.stem_out_channels)
        cin, cout = cfg.stem_out_channels, cfg.res2_out_channels
        bottleneck = cfg.num_groups * cfg.width_per_group
        self.stage_names = ["res2", "res3", "res4", "res5"]
        for idx, (name, n_blocks) in enumerate(zip(self.stage_names, BLOCKS_PER_DEPTH[cfg.depth])):
            dilation = cfg.res5_dilation if name == "res5" else 1
            first_stride = 1 if idx == 0 or dilation > 1 else 2
            if name == "res5":
                dilations = [dilation * m for m in cfg.res5_multi_grid]
                if len(dilations) != n_blocks:
                    raise ValueError(f"RES5_MULTI_GRID needs {n_blocks} values, got {cfg.res5_multi_grid}")
            else:
                dilations = [1] * n_blocks
            blocks = []
            for b in range(n_blocks):
                blocks.append(BottleneckBlock(cin, cout, bottleneck, first_stride if b == 0 else 1,
                                              cfg.num_groups, cfg.stride_in_1x1, dilations[b]))
                cin = cout
            self.add_module(name, nn.Sequential(*blocks))
            cout, bottleneck = cout * 2, bottleneck * 2

    @property
    def out_channels(self) -> dict[str, int]:
        c = self.cfg.res2_out_channels
        return {"res2": c, "res3": 2 * c, "res4": 4 * c, "res5": 8 * c}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return out
