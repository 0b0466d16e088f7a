"""A small ResNet on generated 3x64x64 colour images, 10 classes (no download).

Each class has its own smooth colour pattern; an image is its class's pattern, shifted by
up to 8 pixels either way and mixed into strong noise, so a convolutional network has to
find the pattern wherever it lies. The data are generated from a fixed seed, so every run
sees the same 3,000 training and 600 validation images. At 64x64 the convolutions carry
most of the work, which is what the GPU knobs (TF32, cuDNN benchmark mode, channels_last,
torch.compile) are about. Try it on a GPU (on a 2-core CPU a step of 32 images takes
about a second):

    autotune run examples/resnet_images.py --trials 12
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

# Reference hyperparameters: `lr` was chosen for an effective batch of `batch_size`.
BASE = {"lr": 2e-3, "batch_size": 32, "epochs": 4, "weight_decay": 5e-4, "warmup": 0.05, "seed": 0}
CLASS_NAMES = [f"pattern {k}" for k in range(10)]

SIZE, CLASSES = 64, 10
TRAIN, VAL = 3000, 600
MAX_SHIFT = 8  # pixels a pattern may move each way
NOISE = 2.5  # noise standard deviation; a pattern's is about 0.7


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, added to the input (a 1x1 projection when
    the stride or the width changes), as in He et al. 2016."""

    def __init__(self, inputs: int, outputs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(outputs)
        self.skip = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.skip = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(h)) + self.skip(x))


class SmallResNet(nn.Module):
    """A stem, three stages of residual blocks (64x64, 32x32, 16x16), pooling, a classifier."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, inputs = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(ResidualBlock(inputs, width, stride=1 if i == 0 else 2))
            inputs = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def build_model() -> nn.Module:
    return SmallResNet()


def _patterns(generator: torch.Generator) -> torch.Tensor:
    """One smooth colour pattern per class: random 8x8 values scaled up to 64x64."""
    coarse = torch.randn(CLASSES, 3, 8, 8, generator=generator)
    return F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def _generate(n: int, patterns: torch.Tensor, generator: torch.Generator) -> TensorDataset:
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n, 2), generator=generator)
    images = NOISE * torch.randn(n, 3, SIZE, SIZE, generator=generator)
    for i in range(n):
        images[i] += torch.roll(patterns[labels[i]], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    return TensorDataset(images, labels)


def build_datasets():
    generator = torch.Generator().manual_seed(2024)
    patterns = _patterns(generator)
    return _generate(TRAIN, patterns, generator), _generate(VAL, patterns, generator)
