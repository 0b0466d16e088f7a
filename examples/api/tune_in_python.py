"""autotune from Python, with the model and the data as objects (no model file).

A small MLP on scikit-learn's bundled wine data (178 rows, 13 features, 3 classes).
Run it from the repository root:

    .venv/bin/python examples/api/tune_in_python.py --trials 12 --out runs/wine

It tunes, trains with the result, exports the tuned config for Lightning and prints the
validation accuracy. The functions are defined at the top level of this file, and the work
happens under ``if __name__ == "__main__":``: trials run in fresh processes, which import
this file (without running that block) to find them.
"""

import argparse

import torch
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

import autotune


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(13, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 3))


def build_datasets():
    x, y = load_wine(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8

    def tensors(a, b):
        return TensorDataset(torch.tensor((a - mean) / std, dtype=torch.float32), torch.tensor(b))

    return tensors(x_train, y_train), tensors(x_val, y_val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default="runs/wine")
    parser.add_argument("--space", default="default", help="a built-in space name or a YAML file")
    args = parser.parse_args()

    run = autotune.run(
        build_model, build_datasets, out=args.out, trials=args.trials, space=args.space, progress=False,
        BASE={"lr": 3e-3, "batch_size": 16, "epochs": args.epochs, "warmup": 0.05, "seed": 0},
        CLASS_NAMES=["class_0", "class_1", "class_2"],
    )
    cfg = run.config
    print(f"tuned: micro-batch {cfg.micro_batch_size} x {cfg.accumulation_steps}, amp {cfg.amp}, lr {cfg.lr:.4g}")
    print(f"validation accuracy: {run.result.evaluation.accuracy:.4f}")
    exported = autotune.export(run.paths["tuned"], "lightning")
    print(f"exported for Lightning; not expressible there: {exported.notes or 'nothing'}")


if __name__ == "__main__":
    main()
