"""The max micro-batch finder: its search on a known memory curve, real probes under a
real memory cap in their own processes (RLIMIT_AS on the CPU; on a GPU machine the CUDA
allocator's cap, tests/test_gpu_engine.py has GPU-only ones), and the fp16 probe's
optimizer state when the gradients overflow."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotune.config import TrainConfig
from autotune.engine.memory import parse_size
from autotune.errors import ConfigError, TrialError
from autotune.search.probe import Probe, find_max_batch, isolated_prober, worst_case_indices
from autotune.model.task import load_task

ASSETS = Path(__file__).parent / "assets"
MIB = 2**20
CPU = torch.device("cpu")


def _curve(intercept: float, slope: float, limit: float, headroom: float = 0.0, bend: float = 0.0):
    """A probe over a known memory curve: peak = intercept + slope*b + bend*b^2; a batch
    whose peak is over the limit fails to allocate, as a real one would."""
    calls: list[int] = []

    def probe(b: int) -> Probe:
        calls.append(b)
        peak = intercept + slope * b + bend * b * b
        ok = peak <= limit
        return Probe(b, ok, int(peak) if ok else None, ok and peak <= limit * (1 - headroom))

    return probe, calls


@pytest.mark.parametrize("intercept, slope, bend", [(100, 3, 0), (5000, 0.7, 0), (100, 2, 0.0004), (0, 50, 0)])
@pytest.mark.parametrize("high", [4096, 65536])
def test_the_search_is_exact_and_cheap_on_a_known_curve(intercept, slope, bend, high):
    limit = 10_000
    probe, calls = _curve(intercept, slope, limit, bend=bend)
    result = find_max_batch(probe, limit, headroom=0.0, low=1, high=high, granularity=1)
    true = max(b for b in range(1, high + 1) if intercept + slope * b + bend * b * b <= limit)
    assert result.max_batch == true
    # Linear memory (as measured on real models): within bisection's count plus the two
    # end probes. A strongly curved one costs at most a guided step per bisection step.
    bound = math.ceil(math.log2(high)) + 2 if bend == 0 else 2 * math.ceil(math.log2(high)) + 2
    assert len(calls) <= bound
    assert len(set(calls)) == len(calls)  # never probes the same size twice


def test_relative_tolerance_trades_exactness_for_probes():
    probe, exact_calls = _curve(1000, 1.37, 50_000)
    exact = find_max_batch(probe, 50_000, 0.0, 1, 65536, granularity=1).max_batch
    probe, calls = _curve(1000, 1.37, 50_000)
    rough = find_max_batch(probe, 50_000, 0.0, 1, 65536, granularity=1, rel_tol=0.02)
    assert 0.98 * exact <= rough.max_batch <= exact
    assert len(calls) <= len(exact_calls)


def test_headroom_keeps_memory_free():
    probe, _ = _curve(1000, 10, 11_000, headroom=0.1)
    result = find_max_batch(probe, 11_000, headroom=0.1, low=1, high=4096)
    assert result.max_batch == 890  # 1000 + 10 * 890 = 9900 = 90% of 11000
    assert result.intercept_bytes == pytest.approx(1000) and result.slope_bytes_per_sample == pytest.approx(10)


def test_nothing_fits():
    probe, calls = _curve(20_000, 1, 10_000)
    result = find_max_batch(probe, 10_000, 0.0, low=8, high=512, granularity=8)
    assert result.max_batch == 0 and calls == [8]


def test_everything_fits_in_three_probes():
    probe, calls = _curve(100, 1, 10**9)
    assert find_max_batch(probe, 10**9, 0.1, low=16, high=512, granularity=8).max_batch == 512
    assert calls == [16, 64, 512]  # two small batches give the line, which says: all fit


def test_a_linear_curve_takes_four_probes():
    probe, calls = _curve(70 * 2**20, 0.15 * 2**20, 512 * 2**20)
    result = find_max_batch(probe, 512 * 2**20, 0.0, low=16, high=65536, granularity=8, rel_tol=0.02)
    assert result.max_batch == 2944 and len(calls) == 4


def test_worst_case_batch_takes_the_largest_items_and_repeats_them():
    import torch

    sized = [(torch.zeros(n), 0) for n in (3, 9, 1, 7)]
    assert worst_case_indices(sized, 2) == [1, 3]
    assert worst_case_indices(sized, 6) == [1, 3, 0, 2, 1, 3]


def test_worst_case_scan_of_a_large_dataset_reads_a_sample_that_includes_the_last_item():
    import torch

    class Counting:
        def __init__(self, n):
            self.n, self.read = n, set()

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            self.read.add(i)
            return torch.zeros(1000 if i == self.n - 1 else 10), 0

    data = Counting(100_000)
    assert worst_case_indices(data, 3, scan_limit=500)[0] == 99_999
    assert len(data.read) == 500 and 0 in data.read


@pytest.mark.parametrize("text, expected", [("3GiB", 3 * 2**30), ("512MiB", 512 * MIB), ("1.5GB", 1_500_000_000), ("4096", 4096)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_says_what_it_accepts():
    with pytest.raises(ConfigError, match=r"Cannot read the size '3 gigs': write a number and a unit such as 512MiB"):
        parse_size("3 gigs")


# ----------------------------------------------------------------- real probes, real cap

# Allocates and frees a 4 MiB tensor three times (after one warm-up round) in a fresh
# interpreter, and prints how much address space each round left behind, in KiB.
_ALLOC_FREE = """
import sys, torch
from autotune.engine.memory import fix_mmap_threshold, vm_bytes
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
def round():
    t = torch.empty(4 * 2**20, dtype=torch.uint8)
    t.fill_(1)  # the first fill also starts the thread pool: the warm-up round
    del t
round()
base = vm_bytes()
left = []
for _ in range(3):
    round()
    left.append((vm_bytes() - base) // 1024)
print(left)
"""


def _left_behind(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _ALLOC_FREE, mode], capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and /proc are Linux's")
def test_a_fixed_mmap_threshold_gives_freed_tensors_back_every_time():
    # With glibc's default, freeing the first mapped 4 MiB raises the threshold, so the
    # next 4 MiB comes from the heap and stays there: the address space depends on what
    # was allocated before. That is the control: it shows the test can see the difference.
    assert max(_left_behind("default")) >= 2048
    assert _left_behind("fixed") == [0, 0, 0]


CAP = 256 * MIB


@pytest.fixture(scope="module")
def wide_task():
    return load_task(ASSETS / "wide_mlp.py")


@pytest.mark.slow
def test_found_batch_trains_under_the_cap_and_one_step_more_does_not(wide_task):
    prober = isolated_prober(wide_task, TrainConfig(), CAP, headroom=0.0)
    result = find_max_batch(prober, CAP, headroom=0.0, low=64, high=8192, granularity=64)
    assert 64 <= result.max_batch < 8192
    assert len(result.probes) <= math.ceil(math.log2(8192 / 64)) + 2
    again = prober(result.max_batch)
    assert again.ok and again.peak_bytes <= CAP
    over = prober(result.max_batch + 64)
    assert not over.ok  # a real allocation failure at the cap, in its own process


@pytest.mark.slow
def test_an_oom_probe_leaves_the_next_probe_clean(wide_task):
    prober = isolated_prober(wide_task, TrainConfig(), CAP, headroom=0.0)
    before = prober(128)
    assert not prober(65536).ok
    after = prober(128)
    assert after.ok
    assert after.peak_bytes == pytest.approx(before.peak_bytes, rel=0.1)


@pytest.mark.slow
def test_a_model_error_is_reported_as_the_models_not_as_too_big(tmp_path):
    shutil.copy(ASSETS / "picky_mlp.py", tmp_path / "picky_mlp.py")
    shutil.copy(ASSETS / "tiny_mlp.py", tmp_path / "tiny_mlp.py")
    task = load_task(tmp_path / "picky_mlp.py")
    prober = isolated_prober(task, TrainConfig(), CAP, headroom=0.0)
    assert prober(8).ok
    with pytest.raises(TrialError, match=r"The model failed while probing a micro-batch of 16 .*ValueError: this model cannot take 16 rows"):
        prober(16)


@pytest.mark.slow
def test_limits_skip_checkpointing_when_everything_fits_without_it(tiny_task):
    from autotune.search.limits import apply_limits, probe_limits
    from autotune.search.space import parse_space

    space = parse_space(
        {"name": "t", "params": {"micro_batch_size": {"choices": [8, 32]}, "checkpointing": {"choices": [False, True]}}},
        source="test space",
    )
    found = probe_limits(tiny_task, space, 2**30, 0.1, progress=False)
    assert found["off/false"].max_batch == 32 and len(found["off/false"].probes) >= 2
    assert found["off/true"].inferred_from == "off/false" and found["off/true"].probes == []
    limited = apply_limits(space, {"off/false": found["off/false"], "off/true": found["off/true"]}, 2**30)
    assert limited.max_micro_batch == {"off/false": 32, "off/true": 32}
    tight = apply_limits(space, {"off/false": dataclasses.replace(found["off/false"], max_batch=16)}, 2**20)
    assert tight.params["micro_batch_size"].choices == (8,)
    assert "does not fit in the memory limit" in tight.gated["micro_batch_size"]["32"]
    assert "above the largest that fits" in tight.infeasible(TrainConfig(micro_batch_size=24, epochs=1), 1000)


@pytest.mark.slow
def test_trials_run_under_the_memory_limit(wide_task):
    from autotune.search.trial import TrialBudget, measure
    from autotune.search.worker import run_isolated

    def trial(limit: int):
        budget = TrialBudget(warmup_steps=1, window_s=0.02, windows=1, max_eval_batches=1, memory_limit_bytes=limit)
        kwargs = {"model_path": str(wide_task.path), "config": TrainConfig(micro_batch_size=64).to_dict(), "budget": budget.to_dict()}
        return run_isolated(measure, kwargs, 120)

    assert trial(2**30).status == "ok"
    tight = trial(16 * MIB)  # the model's weights and AdamW state alone need more
    assert tight.status == "oom", tight.reason


@pytest.mark.slow
def test_probes_use_the_longest_items_so_the_found_batch_trains_on_all_of_them(tmp_path):
    from autotune.search.trial import TrialBudget, measure
    from autotune.search.worker import run_isolated

    varlen = load_task(ASSETS / "varlen_seq.py")
    # The same file with every item short: what a probe of the first items would see.
    source = (ASSETS / "varlen_seq.py").read_text().replace("SHORT, LONG = 8, 1024", "SHORT, LONG = 8, 8")
    (tmp_path / "short_seq.py").write_text(source)
    short = load_task(tmp_path / "short_seq.py")

    cfg = TrainConfig(amp="off")
    found = find_max_batch(isolated_prober(varlen, cfg, CAP, 0.0), CAP, 0.0, low=8, high=96, granularity=8)
    assert 8 <= found.max_batch < 96
    assert isolated_prober(short, cfg, CAP, 0.0)(96).fits  # the short items alone would allow all 96

    def trial(batch: int):
        budget = TrialBudget(warmup_steps=1, window_s=0.02, windows=2, max_eval_batches=1, memory_limit_bytes=CAP)
        config = TrainConfig(micro_batch_size=batch, amp="off").to_dict()
        return run_isolated(measure, {"model_path": str(varlen.path), "config": config, "budget": budget.to_dict()}, 120)

    assert trial(found.max_batch).status == "ok"  # shuffled batches, long items among them
    assert trial(96).status == "oom"


# ----------------------------------------------------------------- the optimizer state


def _overflowing(task, factor: float | None):
    """``task`` whose parameters' gradients overflow: each is multiplied by ``factor``
    (1e36: finite at a loss scale of 1, past fp32's 3.4e38 at the run's 2**16), or made
    inf outright with None. The optimizers it makes are kept in the list returned."""
    made: list[torch.optim.Optimizer] = []
    build, make = task.build_model, task.make_optimizer

    def build_model():
        model = build()
        for p in model.parameters():
            p.register_hook(lambda g: torch.full_like(g, float("inf")) if factor is None else g * factor)
        return model

    def make_optimizer(params, lr, wd):
        made.append(make(params, lr, wd))
        return made[-1]

    task.build_model, task.make_optimizer = build_model, make_optimizer
    return made


@pytest.mark.parametrize("factor", [None, 1e36], ids=["always-inf", "inf-at-the-runs-scale"])
def test_an_fp16_probe_allocates_the_optimizer_state_when_its_gradients_overflow(tiny_task, factor):
    from autotune.engine import knobs
    from autotune.search.probe import _two_steps

    cfg = TrainConfig(amp="fp16")
    made = _overflowing(tiny_task, factor)
    x, y = tiny_task.datasets()[0][:8]
    _two_steps(tiny_task, cfg, CPU, lambda: (x, y))
    params = list(made[-1].param_groups[0]["params"])
    assert len(made[-1].state) == len(params)  # AdamW's moments, for every parameter
    assert all(made[-1].state[p]["exp_avg"].shape == p.shape for p in params)
    # The control: at the run's scale the scaler skips both steps and allocates nothing.
    model = tiny_task.build_model()
    optimizer = tiny_task.make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    scaler = knobs.grad_scaler("cpu", "fp16")
    for _ in range(2):
        with knobs.autocast("cpu", "fp16"):
            loss = tiny_task.loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    assert scaler.get_scale() == knobs.INIT_SCALE / 4 and len(optimizer.state) == 0
