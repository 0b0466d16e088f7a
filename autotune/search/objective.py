"""What a trial is scored on: goodput (the default) or raw throughput.

Past the model's critical batch, more samples per step buy little: a batch of B needs
(1 + B / B_noise) times the fewest samples to reach a given loss (``engine.gns``). Goodput
counts a trial's samples/s at their worth relative to the model's reference batch
(``BASE["batch_size"]``): throughput x statistical efficiency. With no noise-scale
estimate the efficiency is 1 and goodput equals throughput.

Every trial also gets its MFU: FLOPs per sample x samples/s over the profile's measured
matmul peak for the dtype the config computes in.

A config that compiles its model pays the compile time once per run, and one with
DataLoader workers pays for starting them; a trial that measured these
(``compile_seconds``, ``start_seconds``, with the final run's ``run_samples``) is scored on
the run's effective throughput, those one-off costs spread over the run's samples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from autotune.config import TrainConfig
from autotune.engine.flops import PEAK_KEYS, mfu, peak_key, peak_tflops
from autotune.engine.gns import efficiency
from autotune.errors import ConfigError

OBJECTIVES = ("goodput", "throughput")
ATTRS = {"goodput": "goodput_samples_per_s", "throughput": "throughput_samples_per_s"}


@dataclass(frozen=True)
class Scorer:
    """Turns a trial's measurements into its scores; one per study, stored with it."""

    objective: str = "goodput"
    reference_batch: int = 32  # the batch whose samples goodput counts in
    b_noise: float | None = None  # gradient noise scale; None: efficiency 1
    flops_per_sample: float | None = None
    peak_tflops: dict[str, float | None] = field(default_factory=dict)  # by ``flops.peak_key``

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"Unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}.")

    @classmethod
    def build(cls, objective: str, reference_batch: int, stats: dict[str, Any], measured: dict[str, Any], device: str) -> Scorer:
        """A scorer from the model's statistics (``model_stats.measure``) and the hardware
        profile's measured peaks."""
        gns = stats.get("gns") or {}
        peaks = {key: peak_tflops(measured, device, key) for key in PEAK_KEYS}
        return cls(objective, reference_batch, gns.get("b_noise"), stats.get("flops_per_sample"), peaks)

    @property
    def attr(self) -> str:
        """The trial attribute the study maximises."""
        return ATTRS[self.objective]

    def efficiency(self, cfg: TrainConfig) -> float:
        return efficiency(cfg.effective_batch_size, self.reference_batch, self.b_noise)

    def score(self, cfg: TrainConfig, measured: dict[str, Any]) -> dict[str, Any]:
        """Effective throughput, goodput, statistical efficiency and MFU of a trial that
        measured ``measured``. MFU is of the steady-state steps, without compile time."""
        tps = measured.get("throughput_samples_per_s")
        run_tps = effective_throughput(measured)
        eff = self.efficiency(cfg)
        return {
            "statistical_efficiency": eff,
            "effective_throughput_samples_per_s": run_tps,
            "goodput_samples_per_s": run_tps * eff if run_tps is not None else None,
            "mfu": mfu(tps, self.flops_per_sample, self.peak_tflops.get(peak_key(cfg.amp, cfg.fp32_precision))),
        }

    def value(self, cfg: TrainConfig, measured: dict[str, Any]) -> float | None:
        """The objective's value for one measurement of ``cfg``."""
        if self.objective == "throughput":
            return effective_throughput(measured)
        return self.score(cfg, measured)["goodput_samples_per_s"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scorer:
        return cls(**data)


def effective_throughput(measured: dict[str, Any]) -> float | None:
    """Samples/s over the whole final run: ``run_samples / (run_samples / tps +
    compile_seconds + start_seconds)``, the one-off costs a trial measured (compiling, and
    its DataLoaders' starts as the full run will pay them: ``trial.start_seconds``) spread
    over the run's samples; the measured throughput itself when there are none."""
    tps = measured.get("throughput_samples_per_s")
    once = (measured.get("compile_seconds") or 0.0) + (measured.get("start_seconds") or 0.0)
    run_samples = measured.get("run_samples")
    if not tps or once <= 0 or not run_samples:
        return tps
    return run_samples / (run_samples / tps + once)
