"""A small residual CNN trained from a folder of PNG files, read the way a real image
pipeline reads them (no download).

On first use the file draws 1,500 training and 300 validation images of ten coloured
shapes (disc, ring, square, ...; each at a random size and place, on a random background,
with noise) from a fixed seed and writes them as PNG files in an ImageFolder layout,
``<cache>/<split>/<class>/<i>.png``. The cache is ``$AUTOTUNE_EXAMPLE_CACHE/image_folder``
when that variable is set, else ``~/.cache/autotune/image_folder``; it is written once,
atomically (into a temporary folder that is then renamed into place), so trials started at
the same moment never read half of it, and later runs reuse it.

Each item is opened and decoded with PIL in ``__getitem__``, converted with numpy and, for
training, augmented with a random crop (4 pixels of reflected padding) and a horizontal
flip (every shape is left-right symmetric). That costs CPU time per item, as decoding and
augmenting do in a real pipeline; where a training step is short (on a GPU), the model
waits for the data unless it loads in parallel, which is what the DataLoader knobs
(workers, pinned memory) are about. Try it:

    autotune run examples/image_folder.py
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

# Reference hyperparameters: `lr` was chosen for an effective batch of `batch_size`.
BASE = {"lr": 3e-3, "batch_size": 32, "epochs": 5, "weight_decay": 5e-4, "warmup": 0.05, "seed": 0}

SIZE, PAD = 32, 4  # image side; padding of the random crop
SPLITS = {"train": 1500, "val": 300}
SEED = 2024
VERSION = 1  # bump when the drawing changes: an older cache is then refused, not reused
MEAN = np.array([0.5, 0.5, 0.5], dtype=np.float32)  # per channel, after scaling to [0, 1]
STD = np.array([0.25, 0.25, 0.25], dtype=np.float32)


# Each shape is a mask over the offsets (dx, dy) from its centre, for a size r (pixels).
# All are left-right symmetric, so a horizontal flip keeps the label.
def _square_frame(dx, dy, r):
    edge = np.maximum(abs(dx), abs(dy))
    return (edge <= 0.8 * r) & (edge >= 0.45 * r)


SHAPES = {
    "bars": lambda dx, dy, r: (abs(dx) <= r) & (abs(abs(dy) - 0.5 * r) <= 0.2 * r),
    "cross": lambda dx, dy, r: (abs(abs(dx) - abs(dy)) <= 0.3 * r) & (np.maximum(abs(dx), abs(dy)) <= 0.8 * r),
    "diamond": lambda dx, dy, r: abs(dx) + abs(dy) <= r,
    "disc": lambda dx, dy, r: dx**2 + dy**2 <= r**2,
    "frame": _square_frame,
    "plus": lambda dx, dy, r: ((abs(dx) <= 0.25 * r) & (abs(dy) <= r)) | ((abs(dy) <= 0.25 * r) & (abs(dx) <= r)),
    "ring": lambda dx, dy, r: (dx**2 + dy**2 <= r**2) & (dx**2 + dy**2 >= (0.55 * r) ** 2),
    "square": lambda dx, dy, r: np.maximum(abs(dx), abs(dy)) <= 0.8 * r,
    "triangle": lambda dx, dy, r: (abs(dy) <= r) & (abs(dx) <= (dy + r) / 2),  # apex up (y grows down)
    "vee": lambda dx, dy, r: (abs(dy) <= r) & (abs(dx) <= (r - dy) / 2),  # apex down
}
CLASS_NAMES = sorted(SHAPES)  # the folder names, sorted: label k is CLASS_NAMES[k], as in ImageFolder


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, added to the input (a 1x1 projection when
    the stride or the width changes)."""

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


class ShapesCNN(nn.Module):
    """A stem, three residual blocks (32x32, 16x16, 8x8), pooling, a classifier."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, inputs = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(ResidualBlock(inputs, width, stride=1 if i == 0 else 2))
            inputs = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, len(CLASS_NAMES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def build_model() -> nn.Module:
    return ShapesCNN()


class ImageFolder(Dataset):
    """The PNG files under ``root/<class>/``, labelled by their sorted class folders;
    each is decoded when it is read. ``train`` turns the random augmentation on."""

    def __init__(self, root: Path, train: bool) -> None:
        self.train = train
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.samples = [
            (path, label)
            for label, name in enumerate(classes)
            for path in sorted((root / name).glob("*.png"), key=lambda p: int(p.stem))
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # H x W x 3
        if self.train:
            pixels = _augment(pixels)
        pixels = (pixels - MEAN) / STD
        return torch.tensor(pixels.transpose(2, 0, 1), dtype=torch.float32), label


def _augment(pixels: np.ndarray) -> np.ndarray:
    """A random crop of the image padded by reflection, flipped left-right half the time.
    The draws come from numpy's global generator, which the DataLoader seeds per worker."""
    padded = np.pad(pixels, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
    top, left = np.random.randint(0, 2 * PAD + 1, size=2)
    crop = padded[top : top + SIZE, left : left + SIZE]
    return crop[:, ::-1] if np.random.rand() < 0.5 else crop


def build_datasets():
    root = _cache()
    return ImageFolder(root / "train", train=True), ImageFolder(root / "val", train=False)


def _cache() -> Path:
    """The image folder, written first if no complete one is there."""
    base = os.environ.get("AUTOTUNE_EXAMPLE_CACHE")
    root = (Path(base) if base else Path.home() / ".cache" / "autotune") / "image_folder"
    if _complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".image_folder-", dir=root.parent))
    try:
        _write_images(staging)
        staging.chmod(0o755)  # mkdtemp made it private; the cache may be shared
        try:
            os.rename(staging, root)  # atomic; fails when another process's folder got there first
        except OSError:
            if not _complete(root):
                raise RuntimeError(
                    f"{root} exists but is not a complete image cache of this version; "
                    "delete it and run again."
                ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename worked
    return root


def _manifest() -> dict:
    return {"version": VERSION, "seed": SEED, "size": SIZE, "splits": SPLITS, "classes": CLASS_NAMES}


def _complete(root: Path) -> bool:
    try:
        return json.loads((root / "manifest.json").read_text()) == _manifest()
    except (OSError, ValueError):
        return False


def _write_images(folder: Path) -> None:
    """Draw every split from one seeded generator and write it as PNG files."""
    rng = np.random.RandomState(SEED)  # RandomState: its streams never change between numpy versions
    start = 0
    for split, count in SPLITS.items():
        labels = rng.permutation(np.arange(count) % len(CLASS_NAMES))  # balanced classes
        for name in CLASS_NAMES:
            (folder / split / name).mkdir(parents=True)
        for i, label in enumerate(labels):
            image = Image.fromarray(_draw(CLASS_NAMES[label], rng))
            image.save(folder / split / CLASS_NAMES[label] / f"{start + i}.png")
        start += count
    (folder / "manifest.json").write_text(json.dumps(_manifest()))


def _draw(shape: str, rng: np.random.RandomState) -> np.ndarray:
    """One SIZE x SIZE RGB image (uint8): the shape in one colour over a shaded background
    of another, with pixel noise."""
    r = rng.uniform(8.0, 12.0)
    cx, cy = rng.uniform(r, SIZE - 1 - r, size=2)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    mask = SHAPES[shape](x - cx, y - cy, r)[..., None]
    corner_a, corner_b = rng.uniform(0.0, 1.0, size=(2, 3))
    shade = ((x + y) / (2 * SIZE - 2))[..., None]  # a diagonal gradient between two colours
    background = corner_a + (corner_b - corner_a) * shade
    colour = rng.uniform(0.0, 1.0, size=3)
    colour = np.where(abs(colour - background.mean(axis=(0, 1))) < 0.3, 1.0 - colour, colour)  # keep some contrast
    pixels = np.where(mask, colour, background) + rng.normal(0.0, 0.05, size=(SIZE, SIZE, 3))
    return (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)
