"""What a trial is scored on: goodput (the default) or raw throughput.

Past the model's critical batch, more samples per step buy little: a batch of B needs
(1 + B / B_noise) times the fewest samples to reach a given loss (``engine.gns``). Goodput
counts a trial's samples/s at their worth relative to the model's reference batch
(``BASE["batch_size"]``): throughput x statistical efficiency. B_noise is measured, not
assumed (``decide_noise_scale``): it is fitted to the sample cost that short branched runs
from the initial weights measured at 4x the reference batch (``search.branches``), and
used only when their repeats agree. Otherwise the efficiency is 1 and goodput equals
throughput, so no pick rests on a coin flip.

The efficiency at any batch but the reference is a prediction, and the pick rests on it
only where it is safe: a config at another effective batch is picked only when its goodput
leads the default's by more than ``LEAVE_MARGIN`` (``Scorer.lead_needed``), so it would
beat the default even with samples costing that much more than predicted. The reference
batch's samples are worth exactly what the model file's own training gets from them.

Every trial also gets its MFU: FLOPs per sample x samples/s over the profile's measured
matmul peak for the dtype the config computes in.

A config that compiles its model pays the compile time once per run, and one with
DataLoader workers pays for starting them; a trial that measured these
(``compile_seconds``, ``start_seconds``, with the final run's ``run_samples``) is scored on
the run's effective throughput, those one-off costs spread over the run's samples.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from autotune.config import TrainConfig
from autotune.engine.flops import PEAK_KEYS, mfu, peak_key, peak_tflops
from autotune.engine.gns import efficiency
from autotune.errors import ConfigError

OBJECTIVES = ("goodput", "throughput")
AGREE = 1.3  # each repeat of the check within this factor of their median: the check is readable
CHECK_FACTOR = 4  # the branched check's large batch over the reference batch
# The error a predicted sample cost is held to (``benchmarks/batch_efficiency.py``'s goal):
# goodput at another batch than the reference may be off by this much.
LEAVE_MARGIN = 0.3
ATTRS = {"goodput": "goodput_samples_per_s", "throughput": "throughput_samples_per_s"}


@dataclass(frozen=True)
class Scorer:
    """Turns a trial's measurements into its scores; one per study, stored with it."""

    objective: str = "goodput"
    reference_batch: int = 32  # the batch whose samples goodput counts in
    b_noise: float | None = None  # gradient noise scale; None: efficiency 1
    flops_per_sample: float | None = None
    peak_tflops: dict[str, float | None] = field(default_factory=dict)  # by ``flops.peak_key``
    basis: str = ""  # why b_noise is what it is (``decide_noise_scale``)
    noise: dict[str, Any] = field(default_factory=dict)  # the estimate, its interval and the check, in short

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"Unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}.")

    @classmethod
    def build(cls, objective: str, reference_batch: int, stats: dict[str, Any], measured: dict[str, Any], device: str) -> Scorer:
        """A scorer from the model's statistics (``model_stats.measure``) and the hardware
        profile's measured peaks."""
        b_noise, basis = decide_noise_scale(stats.get("noise"))
        peaks = {key: peak_tflops(measured, device, key) for key in PEAK_KEYS}
        return cls(objective, reference_batch, b_noise, stats.get("flops_per_sample"), peaks, basis,
                   noise_summary(stats.get("noise")))

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

    def lead_needed(self, batch: int) -> float:
        """The goodput a config at effective batch ``batch`` must reach, over the default's,
        to be picked: 1 + ``LEAVE_MARGIN`` at another batch when goodput weighs samples by
        a measured noise scale; 1 at the reference batch itself, under throughput, or where
        goodput equals throughput."""
        if self.objective != "goodput" or self.b_noise is None or batch == self.reference_batch:
            return 1.0
        return 1.0 + LEAVE_MARGIN

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


def predicted_ratio(b_noise: float, reference: int, batch: int) -> float:
    """Samples a batch of ``batch`` needs over those ``reference`` needs, for one loss drop."""
    return efficiency(reference, reference, b_noise) / efficiency(batch, reference, b_noise)


def noise_summary(noise: dict[str, Any] | None) -> dict[str, Any]:
    """What the report shows of ``model_stats.measure``'s noise record: the estimate, its
    interval, how it was measured, and the check's batches and ratios (not its curves)."""
    if not noise:
        return {}
    keep = ("estimate", "low", "high", "method", "method_fallback_reason", "preconditioned", "observations",
            "steps_before", "run_fraction")
    summary = {k: noise.get(k) for k in keep}
    check = noise.get("check")
    if check:
        summary["check"] = {"batches": check["batches"], "samples": check.get("samples"),
                            "ratios": check.get("ratios"), "per_repeat": check.get("per_repeat"),
                            "reason": check.get("reason")}
        if noise.get("estimate") and check.get("ratios"):
            summary["check"]["predicted"] = {str(b): predicted_ratio(noise["estimate"], check["batches"][0], b)
                                             for b in check["batches"][1:]}
    return summary


def fitted_noise_scale(ratio: float, reference: int, batch: int) -> float:
    """The noise scale at which ``predicted_ratio(b_noise, reference, batch)`` equals the
    measured ``ratio``: B0 (k - r) / (r - 1) for k = batch / reference. A ratio of 1 or
    less (no extra samples) is an unbounded noise scale (``math.inf``); one of k or more (no
    progress per sample gained at all) is a noise scale of 1% of the reference batch."""
    k = batch / reference
    if ratio <= 1:
        return math.inf
    if ratio >= k:
        return reference / 100
    return reference * (k - ratio) / (ratio - 1)


def decide_noise_scale(noise: dict[str, Any] | None) -> tuple[float | None, str]:
    """The noise scale goodput uses, or None (efficiency 1: goodput = throughput), and a
    sentence saying why, from ``model_stats.measure``'s ``noise`` record.

    The noise scale is measured, not assumed: branched runs from the initial weights
    (``branches.check``, each with the full run's warmup at its batch) count the samples
    the reference batch and ``CHECK_FACTOR`` times it need for the same loss drop, and the
    noise scale is the one whose efficiency curve gives that ratio (``fitted_noise_scale``).
    The ratio is the median of the check's repeats, used when every repeat is within
    ``AGREE`` times of it; otherwise, or where no loss drop could be read, goodput equals
    throughput. The per-example estimate of the simple noise scale (``engine/gns.py``) is
    reported beside it, not used: the simple noise scale equals the critical batch only for
    a well-conditioned problem, and on most of the bundled models it sat several times
    from the noise scale such branches imply, in both directions.
    """
    check = (noise or {}).get("check")
    estimate = (noise or {}).get("estimate")
    beside = f"; the per-example estimate was {estimate:,.0f}" if estimate else ""
    if not check:
        return None, f"no branched check ran, so goodput equals throughput{beside}"
    if not check.get("ratios"):
        return None, (f"the branched check could not read a loss drop ({check.get('reason')}), so goodput equals "
                      f"throughput{beside}")
    reference, batch = check["batches"][0], check["batches"][-1]
    measured = check["ratios"][str(batch)]
    repeats = [r for r in check.get("per_repeat") or [] if r]
    said = (f"branched runs from the initial weights needed {measured:.2f}x the samples at batch {batch} as at batch "
            f"{reference} for one loss drop" + (f" (repeats {', '.join(f'{r:.2f}x' for r in repeats)})" if len(repeats) > 1 else ""))
    if len(repeats) > 1 and any(max(r, measured) / min(r, measured) > AGREE for r in repeats):
        return None, (f"{said}: a repeat is more than {AGREE:g}x from their median, so goodput equals "
                      f"throughput{beside}")
    fitted = fitted_noise_scale(measured, reference, batch)
    if math.isinf(fitted):
        return None, f"{said}: no extra cost, so goodput equals throughput{beside}"
    return fitted, f"{said}: noise scale {fitted:,.0f} fitted to that{beside}"


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
