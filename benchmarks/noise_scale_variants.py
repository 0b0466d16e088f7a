"""Is the study's noise scale off because of dropout or of AdamW?

``batch_efficiency.py`` found the sequence model's big batches needing 2.5-4x fewer
samples than its noise scale predicts. Two suspects, each measured here the way
``search/model_stats.py`` measures (the reference batch as four micro-batches, 200
steps, the second half pooled), from the same seed:

- ``plain``: as the study measures it.
- ``no-dropout``: the gradients measured in eval mode (dropout off; the steps still
  train in train mode). Each micro-batch draws its own dropout mask, which adds to the
  measured variance.
- ``preconditioned``: each gradient divided by AdamW's current sqrt(v) + eps before its
  norm is taken, the noise scale of the update AdamW makes rather than of the raw
  gradient.

    .venv/bin/python benchmarks/noise_scale_variants.py [--models ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
from pathlib import Path
from typing import Any

from _common import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["examples/digits_cnn.py", "examples/breast_cancer_mlp.py", "examples/sequence_transformer.py"]
VARIANTS = ("plain", "no-dropout", "preconditioned")


def noise_scale(model_path: str, variant: str, steps: int = 200) -> float | None:
    import torch

    from autotune.config import TrainConfig
    from autotune.engine import knobs
    from autotune.engine.gns import NoiseScale, observe_micro_batches
    from autotune.search.model_stats import GNS_GROUP, _step
    from autotune.task import load_task

    task = load_task(model_path, validate=False)
    cfg = TrainConfig.from_base(task.base, micro_batch_size=task.base.batch_size)
    generator = knobs.seed_everything(cfg.seed)
    loader = torch.utils.data.DataLoader(task.datasets()[0], batch_size=max(1, cfg.base_batch_size // GNS_GROUP),
                                         shuffle=True, drop_last=True, collate_fn=task.collate, generator=generator)
    model = task.build_model().train()
    optimizer = task.make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)

    def loss_of(m: torch.nn.Module, inputs: Any, target: Any) -> torch.Tensor:
        return task.loss(task.call(m, inputs), target)

    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    pooled = NoiseScale()
    for step in range(steps):
        group = [tuple(b) for b in itertools.islice(batches, GNS_GROUP)]
        one, hooks = NoiseScale(), []
        if variant == "no-dropout":
            model.eval()
        if variant == "preconditioned":
            group_opts = optimizer.param_groups[0]
            beta2, eps = group_opts["betas"][1], group_opts["eps"]
            for p in model.parameters():
                state = optimizer.state.get(p) or {}
                if "exp_avg_sq" in state:
                    v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
                    hooks.append(p.register_hook(lambda g, s=1.0 / (v_hat.sqrt() + eps): g * s))
        observe_micro_batches(model, loss_of, group, one)
        for h in hooks:
            h.remove()
        model.train()
        if step >= steps // 2:
            pooled = pooled.merge(one)
        _step(model, optimizer, loss_of, group)
    return pooled.b_noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"noise_scale_variants-{dt.date.today()}.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results = {m: {v: noise_scale(m, v) for v in VARIANTS} for m in args.models}
    print(f"machine: {machine()}")
    print("model | " + " | ".join(VARIANTS))
    for m, by in results.items():
        print(f"{Path(m).stem} | " + " | ".join("n/a" if by[v] is None else f"{by[v]:,.0f}" for v in VARIANTS))
    command = f"benchmarks/noise_scale_variants.py --threads {args.threads}"
    command += "" if args.models == MODELS else " --models " + " ".join(args.models)
    write_result(args.out, command, noise_scales=results)


if __name__ == "__main__":
    main()
