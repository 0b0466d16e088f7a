"""What a trial is scored on: goodput (the default) or raw throughput.

Past the model's critical batch, more samples per step buy little: a batch of B needs
(1 + B / B_noise) times the fewest samples to reach a given loss (``engine.gns``). Goodput
counts a trial's samples/s at their worth relative to the model's reference batch
(``BASE["batch_size"]``): throughput x statistical efficiency. The estimate is used only
when it can be trusted (``decide_noise_scale``): a narrow interval, and a branched check
(``search.branches``) that measured about the sample cost it predicts. Otherwise the
efficiency is 1 and goodput equals throughput, so no pick rests on a coin flip.

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
AGREE = 1.3  # predicted sample ratios closer than this factor agree (interval ends; estimate and check)
CHECK_FACTOR = 4  # the branched check's large batch over the reference batch
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
    keep = ("estimate", "low", "high", "method", "preconditioned", "observations", "steps_before", "run_fraction")
    summary = {k: noise.get(k) for k in keep}
    check = noise.get("check")
    if check:
        summary["check"] = {"batches": check["batches"], "samples": check.get("samples"),
                            "ratios": check.get("ratios"), "reason": check.get("reason")}
        if noise.get("estimate") and check.get("ratios"):
            summary["check"]["predicted"] = {str(b): predicted_ratio(noise["estimate"], check["batches"][0], b)
                                             for b in check["batches"][1:]}
    return summary


def decide_noise_scale(noise: dict[str, Any] | None) -> tuple[float | None, str]:
    """The noise scale goodput uses, or None (efficiency 1: goodput = throughput), and a
    sentence saying why, from ``model_stats.measure``'s ``noise`` record.

    Used only when the sample ratio it predicts for the check's large batch (``CHECK_FACTOR``
    times the reference) is within ``AGREE`` times at both ends of its 95% interval and,
    where a branched check could read a loss drop, within ``AGREE`` times of the one
    measured.
    """
    if not noise or noise.get("estimate") is None:
        return None, "no positive estimate of the gradient noise scale, so goodput equals throughput"
    est, low, high = noise["estimate"], noise.get("low"), noise.get("high")
    check = noise.get("check")
    reference = check["batches"][0] if check else noise.get("batch") or 1
    large = check["batches"][-1] if check else CHECK_FACTOR * reference
    if not low or not high or predicted_ratio(low, reference, large) / predicted_ratio(high, reference, large) > AGREE:
        span = f"[{low:,.0f}, {high:,.0f}]" if low and high else "unbounded"
        return None, (f"the noise scale's 95% interval ({est:,.0f}, interval {span}) leaves the sample cost of batch "
                      f"{large} over batch {reference} uncertain by more than {AGREE:g}x, so goodput equals throughput")
    if check is None:
        return est, f"noise scale {est:,.0f} (95% interval [{low:,.0f}, {high:,.0f}]); no branched check ran"
    if not check.get("ratios"):
        return None, (f"a branched check could not read a loss drop ({check.get('reason')}), so the noise scale "
                      f"{est:,.0f} is not used and goodput equals throughput")
    reference, batch = check["batches"][0], check["batches"][-1]
    measured = check["ratios"][str(batch)]
    predicted = predicted_ratio(est, reference, batch)
    said = (f"at batch {batch} the noise scale {est:,.0f} predicts {predicted:.2f}x the samples of batch "
            f"{reference} for one loss drop; branched runs measured {measured:.2f}x")
    if not 1 / AGREE <= predicted / measured <= AGREE:
        return None, f"{said}, so the estimate is not used and goodput equals throughput"
    return est, f"{said}, in agreement (95% interval [{low:,.0f}, {high:,.0f}])"


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
