"""benchmarks/gpu_acceptance.py on the CPU: its options, and the logic that needs no GPU
(datasheets and ratios, the time plan and the clock, the result file, what a finished run
directory says and which single-trial labels its trials covered), on real files, real
Optuna studies, real subprocesses and one real `autotune run`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import _gpu_checks as gc  # noqa: E402
import _gpu_plan as gp  # noqa: E402
import _gpu_runs as runs  # noqa: E402
import gpu_acceptance  # noqa: E402


def _script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# ------------------------------------------------------------------ the command line


def test_help_exits_0_and_documents_every_option_and_check():
    done = _script("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--results", "--profiles", "--work", "--time-limit", "--budget-scale", "--only", "--skip-runs",
                   "--probe-limit", "--parallel-trials", "--trial-timeout", "--cpu-dry-run"):
        assert option in done.stdout
    for check in gpu_acceptance.ORDER:
        assert check in done.stdout.replace("-\n", "-").replace("\n", " ")
    text = " ".join(done.stdout.split())  # argparse wraps the lines to the terminal's width
    assert "default: 480" in text  # the time limit's default is stated
    assert "--trials 42 x this" in text  # what --budget-scale does to the default-budget run
    assert "the digits CNN at autotune's default budget (the main user path, first)" in text


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_2():
    done = _script()
    assert done.returncode == 2
    assert "no GPU" in done.stderr and "--cpu-dry-run" in done.stderr and done.stdout == ""


def test_an_unknown_check_name_is_refused_with_the_names_allowed():
    done = _script("--only", "nvml,bogus")
    assert done.returncode == 2
    assert "unknown check 'bogus'; checks: nvml, matmul, bandwidth" in done.stderr


def test_bad_budget_scale_is_refused():
    with pytest.raises(SystemExit):
        gpu_acceptance.parse_args(["--budget-scale", "0"])


def test_paths_are_absolute_and_a_dry_run_keeps_its_files_under_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = gpu_acceptance.parse_args(["--work", "w", "--cpu-dry-run"])
    assert (args.work, args.results, args.profiles) == (tmp_path / "w", tmp_path / "w" / "results", tmp_path / "w" / "profiles")
    args = gpu_acceptance.parse_args(["--profiles", "p"])
    assert args.results == ROOT / "benchmarks" / "results" and args.profiles == tmp_path / "p"


def _context(tmp_path: Path, *argv: str) -> gpu_acceptance.Context:
    args = gpu_acceptance.parse_args(["--work", str(tmp_path), "--profiles", str(tmp_path / "profiles"), *argv])
    return gpu_acceptance.Context(args, gp.TimeBudget(args.time_limit), tmp_path, gpu_count=1)


def test_only_and_skip_runs_select_checks_in_order(tmp_path):
    assert [n for n, _, _ in gpu_acceptance.plan(_context(tmp_path, "--only", "mfu,nvml,run-digits"))] == [
        "nvml", "run-digits", "mfu"]
    names = [n for n, _, _ in gpu_acceptance.plan(_context(tmp_path, "--skip-runs"))]
    assert names == ["nvml", "matmul", "bandwidth", "probe", "nproc", "trials", "knobs", "mfu"]
    names = [n for n, _, _ in gpu_acceptance.plan(_context(tmp_path))]
    assert names[4:8] == ["run-digits", "run-resnet", "run-sequence", "workers"]  # digits first, single trials after
    assert names.index("trials") > names.index("nproc")


def test_dry_run_skips_what_needs_cuda_and_keeps_one_small_run(tmp_path):
    checks = {n: (estimate, fn) for n, estimate, fn in gpu_acceptance.plan(_context(tmp_path, "--cpu-dry-run"))}
    assert [n for n in checks if n.startswith("run-")] == ["run-digits"]
    for name in ("matmul", "bandwidth", "probe"):
        assert checks[name][1]() == ("SKIP", "CPU dry run: needs CUDA", {})


def _arg(args: list[str], option: str) -> str | None:
    return args[args.index(option) + 1] if option in args else None


def test_run_arguments_keep_the_default_budget_cut_by_timeout_and_write_a_valid_knob_space(tmp_path):
    from autotune.search.space import load_space

    digits, resnet = runs.RUNS[0], runs.RUNS[1]
    ctx = _context(tmp_path)
    cut = gp.fit(digits.cost, digits.trials, 300)
    assert 0 < cut.trials < digits.trials
    args = runs.run_args(digits, ctx, tmp_path / "out", cut)
    assert _arg(args, "--trials") is None and _arg(args, "--epochs") is None  # autotune's default budget
    assert _arg(args, "--timeout") == str(int(cut.timeout_s)) and "--no-warm-start" in args
    args = runs.run_args(resnet, ctx, tmp_path / "out", gp.fit(resnet.cost, resnet.trials, 350))
    assert 3 <= int(_arg(args, "--trials")) < resnet.trials and _arg(args, "--epochs") == "1"  # a smaller budget
    space = load_space(_arg(args, "--space"))
    assert space.searched() and set(gc.GPU_KNOBS) <= set(space.searched())
    ctx = _context(tmp_path, "--budget-scale", "0.5")
    args = runs.run_args(digits, ctx, tmp_path / "out", gp.fit(digits.cost, runs.budget(digits, 0.5), 400))
    assert _arg(args, "--trials") == "21"  # round(42 * 0.5)


def test_a_run_that_cannot_fit_is_skipped_with_the_reason_and_marked_short(tmp_path):
    ctx = _context(tmp_path, "--time-limit", "100")
    status, figure, _ = runs.check_run(runs.RUNS[1], ctx)
    assert status == "SKIP" and figure.startswith("time limit: needs at least 229 s (449 s whole), ")
    assert ctx.short == {"run-resnet": "skipped (time limit)"} and not list(tmp_path.glob("run-resnet*"))


# ------------------------------------------------------------------ the time plan


def _gpu_facts(model: str, capability=(9, 0), cores: int = 16):
    """The gate's facts for ``model`` on a GPU of ``capability`` with ``cores`` CPU cores."""
    from autotune.engine.knobs import optimizer_impls
    from autotune.search.gate import Facts, has_conv2d
    from autotune.model.task import load_task

    task = load_task(model)
    net = task.build_model()
    optimizer = task.make_optimizer(net.parameters(), task.base.lr, task.base.weight_decay)
    return Facts("cuda", {"bf16": None, "fp16": None}, cores, bool(task.blocks(net)), len(task.datasets()[0]),
                 has_conv2d(net), capability, optimizer_impls(optimizer), type(optimizer).__name__)


def _screening_order(space) -> list[dict]:
    """The configs a cold study measures first, in order (screen.py): the default, the
    micro-batch's choices, then the other knobs' (around the default: the order when the
    micro-batch does not win, one recheck earlier than when it does), each stage's
    reference measured again after every REFERENCE_EVERY choices and after the last."""
    from autotune.search import screen
    from autotune.search.study import default_knobs

    default = default_knobs(space)
    screened = screen.screened_knobs(space)
    first = [screen.LEAD] if screen.LEAD in screened and len(screened) > 1 else screened
    order = [default]
    for knobs in (first, [n for n in screened if n not in first]):
        configs = screen.screening_configs(space, default, knobs) + screen.pair_configs(space, default, knobs)
        for i, config in enumerate(configs, 1):
            order += [config] + ([default] if i % screen.REFERENCE_EVERY == 0 or i == len(configs) else [])
    return order


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_runs_budget_and_costed_trials_match_what_autotune_queues_on_a_gpu(index):
    import dataclasses

    from autotune.config import TrainConfig
    from autotune.search.gate import gate
    from autotune.search.screen import sized_trials
    from autotune.search.space import load_space, parse_space
    from autotune.model.task import load_task

    spec = runs.RUNS[index]
    raw = parse_space(spec.space(), "acceptance") if spec.space else load_space("default")
    facts = _gpu_facts(spec.model)
    space = gate(raw, facts)
    if spec.default_budget:
        assert spec.trials == sized_trials(24, space)  # what autotune run sizes it to without --trials
    order = _screening_order(space)
    compiled = {i: c["compile"] for i, c in enumerate(order) if c.get("compile", "off") != "off"}
    assert compiled == spec.cost.compiles or (
        not spec.cost.compiles and min(compiled) >= spec.trials + len(spec.cost.free))  # none reached in its budget
    base = load_task(spec.model).base
    base = dataclasses.replace(base, epochs=spec.epochs) if spec.epochs else base
    free = {i for i, c in enumerate(order) if space.infeasible(TrainConfig.from_base(base, **c), facts.train_size)}
    assert free == spec.cost.free  # ruled out unrun (too few optimizer steps): no time, and not counted


def test_a_run_gets_its_whole_budget_where_it_fits_and_stops_before_what_does_not():
    cost = gp.RunCost(setup_s=10, final_s=5, trial_s=8, compiles={4: "max-autotune-no-cudagraphs"}, race_s=20)
    assert cost.whole_s(6) == 10 + 5 * 8 + gp.COMPILE_S["max-autotune-no-cudagraphs"] + 20 + 5 + gp.REPORT_S
    whole = gp.fit(cost, 6, 1000)
    assert (whole.trials, whole.cut, whole.seconds) == (6, False, cost.whole_s(6))
    assert whole.timeout_s >= cost.search_s(6)  # the budget ends the search, not the timeout
    cut = gp.fit(cost, 6, cost.whole_s(5) - 1)  # the compiled 5th trial does not fit: stop before it
    assert (cut.trials, cut.cut) == (4, True) and cost.search_s(3) < cut.timeout_s < cost.search_s(4)
    assert gp.fit(cost, 6, cost.whole_s(2)).trials == 0  # fewer than MIN_TRIALS: skipped
    free = gp.RunCost(setup_s=10, final_s=5, trial_s=8, compiles={4: "default"}, free=frozenset({1, 2}))
    assert free.search_s(2) == 16 and free.search_s(3) == 16 + gp.COMPILE_S["default"]  # two counted trials reach the compiled one


def test_single_trials_fit_in_priority_order_leaving_out_what_does_not():
    costs = {"bf16": 8.0, "compile max-autotune-no-cudagraphs": 90.0, "tf32": 8.0, "fused optimizer": 8.0}
    assert gp.pooled_s(costs.values(), 4) == 90 + 24 / 4
    assert gp.fit_labels(costs, 20, 4) == ["bf16", "tf32", "fused optimizer"]
    assert gp.fit_labels(costs, 200, 4) == list(costs)
    assert gp.fit_labels(costs, 5, 4) == []


def test_the_default_plan_puts_digits_first_and_fits_the_limit(tmp_path):
    rows = gpu_acceptance.plan_rows(_context(tmp_path))
    names = [name for name, _, _ in rows]
    assert names[:5] == ["nvml", "matmul", "bandwidth", "probe", "run-digits"]
    expected = dict((name, seconds) for name, seconds, _ in rows)
    assert sum(expected.values()) <= 480
    digits = runs.RUNS[0]
    fit = gp.fit(digits.cost, digits.trials, 480 - sum(gp.CHECK_S[n] for n in names[:4]))
    assert expected["run-digits"] == fit.seconds > 0  # digits gets what the cheap checks leave
    notes = {name: note for name, _, note in rows}
    if fit.cut:  # what is left after it is too little for the other runs: skipped, saying why
        assert notes["run-digits"].startswith(f"{fit.trials} of 42 trials") and "--timeout" in notes["run-digits"]
        assert expected["run-resnet"] == 0 and notes["run-resnet"].startswith("skip: needs at least")
    big = dict((n, note) for n, _, note in gpu_acceptance.plan_rows(_context(tmp_path, "--time-limit", "5000")))
    assert big["run-digits"] == "42 trials" and big["run-resnet"] == "14 trials" and big["run-sequence"] == "8 trials"
    lines = gp.plan_lines(rows, 480)
    assert lines[0].startswith("plan for --time-limit 480 s") and lines[-1].split()[0] == "total"
    readme = (ROOT / "benchmarks" / "README.md").read_text()  # its table of the default plan is this plan
    assert (f"| run-digits | {fit.seconds:.0f} s | {fit.trials} of its 42 trials: `--timeout {fit.timeout_s:.0f}` "
            in readme)


# ------------------------------------------------------------------ datasheets and verdicts


@pytest.mark.parametrize("name, card, tflops, tbps", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989, 3.35),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756, 2.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835, 3.9),
    ("NVIDIA H200", "H200 SXM", 989, 4.8),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM", 312, 2.039),
    ("NVIDIA A100-SXM4-40GB", "A100 40GB SXM", 312, 1.555),
    ("NVIDIA A100-PCIE-40GB", "A100 40GB PCIe", 312, 1.555),
    ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe", 312, 1.935),
])
def test_datasheet_by_nvml_name(name, card, tflops, tbps):
    sheet = gc.datasheet_for(name)
    assert (sheet.card, sheet.bf16_dense_tflops, sheet.memory_tbps) == (card, tflops, tbps)


def test_a_card_not_listed_has_no_datasheet():
    assert gc.datasheet_for("Tesla V100-SXM2-16GB") is None
    assert gc.datasheet_for("NVIDIA L40") is None  # not the L4, nor the L40S
    assert gc.datasheet_for("NVIDIA GH200 480GB") is None  # not an H200


def test_ratio_against_the_datasheet_meets_the_goal_or_not():
    # What an H200 measured: 788 TFLOP/s bf16 (FACTS.md), 4.3 TB/s copying.
    assert gc.ratio_verdict(788, 989) == ("FAIL", pytest.approx(0.797, abs=1e-3))
    assert gc.ratio_verdict(4300, 4800)[0] == "PASS"
    assert gc.ratio_verdict(0.8 * 989, 989)[0] == "PASS"
    with pytest.raises(ValueError, match="positive datasheet figure, got 1.0 and 0"):
        gc.ratio_verdict(1.0, 0)


def test_the_matmul_check_takes_the_burst_to_the_datasheet_and_the_profile_to_the_burst():
    # The H200's figures: a burst at its boost clock of 794 TFLOP/s, the profile's sustained
    # 674 at its power limit (benchmarks/results/matmul_sustained-nvidia-h200-2026-12-04.json).
    status, ratio, share = gc.matmul_verdict(794, 674, 989)
    assert status == "PASS" and ratio == pytest.approx(0.803, abs=1e-3) and share == pytest.approx(0.849, abs=1e-3)
    assert gc.matmul_verdict(0.7 * 989, 0.7 * 989, 989)[0] == "FAIL"  # the card far off its spec
    assert gc.matmul_verdict(794, 0.5 * 794, 989)[0] == "FAIL"  # the profile's figure broken low
    assert gc.matmul_verdict(794, 1.1 * 794, 989)[0] == "FAIL"  # or above what the card can do
    with pytest.raises(ValueError, match="finite sustained figure"):
        gc.matmul_verdict(794, float("nan"), 989)


def test_nvml_fields_that_read_na_are_named():
    gpu = {"name": "NVIDIA H200", "uuid": "GPU-1", "memory_total_bytes": 150_000_000_000, "sm_count": "N/A",
           "max_sm_clock_mhz": 1980, "max_memory_clock_mhz": 3201}
    assert gc.nvml_missing(gpu, "580.159.04") == ["sm_count"]
    assert gc.nvml_missing({**gpu, "sm_count": 132}, "N/A") == ["driver_version"]
    assert gc.nvml_missing({**gpu, "sm_count": 132}, "580.159.04") == []


def test_probe_verdict_needs_the_max_to_fit_and_1_1x_not_to():
    fits, oom, over = {"ok": True, "fits": True}, {"ok": False, "fits": False}, {"ok": True, "fits": False}
    assert gc.probe_verdict(fits, oom) == "PASS" and gc.probe_verdict(fits, over) == "PASS"
    assert gc.probe_verdict(fits, fits) == "FAIL" and gc.probe_verdict(oom, oom) == "FAIL"


def test_trial_verdict_wants_finished_and_finite():
    assert gc.trial_verdict("ok", {"train_loss": 0.5, "val_loss": 0.6}) == ("PASS", "loss 0.5")
    assert gc.trial_verdict("ok", {"train_loss": float("nan"), "val_loss": 0.6}) == ("FAIL", "train_loss nan")
    assert gc.trial_verdict("timeout", {}) == ("FAIL", "timeout")


# ------------------------------------------------------------------ time budget, checks, result file


class _Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_check_that_no_longer_fits_is_skipped_without_running():
    clock, lines, ran = _Clock(), [], []
    budget = gp.TimeBudget(480, clock)
    clock.now += 400
    check = gp.run_check("run-digits", 150, lambda: ran.append(1) or ("PASS", "", {}), budget, lines.append)
    assert ran == [] and check.status == "SKIP"
    assert check.figure == "time limit: needs about 150 s, 80 s left of 480 s (--time-limit)"
    assert gp.run_check("knobs", 0, lambda: ("PASS", "12 of 12", {}), budget, lines.append).status == "PASS"
    assert lines[0].startswith("SKIP  run-digits") and lines[1].startswith("PASS  knobs")


def test_a_check_that_raises_fails_with_the_error_and_the_rest_go_on():
    def broken():
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    check = gp.run_check("matmul", 1, broken, gp.TimeBudget(480), lambda line: None)
    assert check.status == "FAIL" and check.figure == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "Traceback" in check.detail["traceback"]


def test_the_result_file_holds_every_check_the_counts_and_the_facts(tmp_path):
    import datetime as dt

    checks = [gc.Check("nvml", "PASS", "H200", 3.0), gc.Check("matmul", "FAIL", "0.79"), gc.Check("nproc", "SKIP", "1 GPU")]
    path = gc.result_path(tmp_path, gc.slug("NVIDIA H200"), dt.date(2026, 12, 4))
    assert path.name == "gpu_acceptance-nvidia-h200-2026-12-04.json"
    gc.write_result(path, checks, gp.TimeBudget(480), gpu="NVIDIA H200", commit="abc1234")
    data = json.loads(path.read_text())
    assert data["gpu"] == "NVIDIA H200" and data["time_limit_s"] == 480
    assert data["counts"] == {"PASS": 1, "FAIL": 1, "SKIP": 1}
    assert [c["name"] for c in data["checks"]] == ["nvml", "matmul", "nproc"] and data["checks"][0]["seconds"] == 3.0
    assert gc.exit_code(checks) == 1 and gc.exit_code(checks[::2]) == 0


def test_a_command_past_its_time_is_killed_with_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    code, seconds = runs.run_command(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], tmp_path / "log", 1.5)
    assert code is None and seconds < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists()
    assert runs.run_command(["sh", "-c", "echo hi; exit 3"], tmp_path / "log", 10) [0] == 3
    assert (tmp_path / "log").read_text() == "hi\n"


# ------------------------------------------------------------------ finished runs


def _trial(number: int, status: str, mfu: float | None = None, **config) -> dict:
    state = {"ok": "complete", "pruned": "pruned", "oom": "pruned"}.get(status, "fail")
    base = {"compile": "off", "fp32_precision": "ieee", "optimizer_impl": "auto", "expandable_segments": False}
    losses = {"train_loss": 0.5, "val_loss": 0.6} if status in ("ok", "duplicate") else {}
    return {"number": number, "state": state, "value": 1.0 if status == "ok" else None, "status": status,
            "config": {**base, **config}, "mfu": mfu, "reason": "boom" if status == "error" else "", **losses}


def _report(run_dir: Path, trials: list[dict], speedup: float = 1.25, final_mfu: float = 0.31,
            gated: dict | None = None, budget: int | None = None) -> Path:
    run_dir.mkdir(parents=True)
    search = {"trials": trials, "gated": gated or {}, **({"budget": {"n_trials": budget}} if budget else {})}
    data = {"search": search, "selection": {"speedup_vs_default": speedup, "mfu": 0.3}, "final": {"mfu": final_mfu}}
    (run_dir / "report.json").write_text(json.dumps(data))
    return run_dir


def test_a_run_with_an_error_trial_fails_naming_it(tmp_path):
    summary = gc.read_run(_report(tmp_path / "run", [_trial(0, "ok", 0.2), _trial(1, "error"), _trial(2, "oom")]))
    status, figure = gc.run_verdict(0, summary)
    assert status == "FAIL"
    assert figure == ("3 trials (error 1, ok 1, oom 1); tuned/default 1.25x; final MFU 0.310; "
                      "trial 1 error: boom")


def test_a_clean_run_passes_and_a_nonzero_exit_does_not(tmp_path):
    summary = gc.read_run(_report(tmp_path / "run", [_trial(0, "ok", 0.2), _trial(1, "pruned"), _trial(2, "oom")]))
    assert gc.run_verdict(0, summary)[0] == "PASS"
    assert gc.run_verdict(1, summary) == ("FAIL", gc.run_verdict(0, summary)[1] + "; autotune exited 1")


def test_a_run_stopped_at_the_time_limit_is_skipped_unless_a_trial_failed(tmp_path):
    clean = gc.read_run(_report(tmp_path / "a", [_trial(0, "ok", 0.2)]))
    assert gc.run_verdict(None, clean) == (
        "SKIP", "stopped at the time limit; 1 trials (ok 1); tuned/default 1.25x; final MFU 0.310")
    failed = gc.read_run(_report(tmp_path / "b", [_trial(0, "ok", 0.2), _trial(1, "crash")]))
    assert gc.run_verdict(None, failed)[0] == "FAIL"


def test_a_run_stopped_before_its_report_is_read_from_its_study(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    storage = f"sqlite:///{run_dir / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="digits_cnn", direction="maximize")
    for t in (_trial(0, "ok", 0.2, compile="default"), _trial(1, "timeout")):
        state = optuna.trial.TrialState.COMPLETE if t["status"] == "ok" else optuna.trial.TrialState.FAIL
        attrs = {k: t[k] for k in ("status", "config", "mfu", "reason")}
        study.add_trial(optuna.trial.create_trial(state=state, value=t["value"], user_attrs=attrs))
    optuna.create_study(storage=storage, study_name="digits_cnn~1~claim~combination")  # bookkeeping, not trials
    (run_dir / "tuned.yaml").write_text(yaml.safe_dump({"measured": {"speedup_vs_default": 1.4, "mfu": 0.25}}))
    summary = gc.read_run(run_dir)
    assert not summary.finished and [t["number"] for t in summary.trials] == [0, 1]
    assert summary.speedup_vs_default == 1.4 and summary.selection_mfu == 0.25
    assert [t["number"] for t in gc.bad_trials(summary)] == [1]
    assert gc.run_verdict(0, summary)[0] == "FAIL"


def test_knob_choices_count_only_measured_trials_across_runs(tmp_path):
    first = gc.read_run(_report(tmp_path / "a", [
        _trial(0, "ok"), _trial(1, "ok", fp32_precision="tf32"), _trial(2, "error", optimizer_impl="plain"),
        _trial(3, "pruned", optimizer_impl="foreach"), _trial(4, "ok", compile=True)]))  # compile: true, as once written
    second = gc.read_run(_report(tmp_path / "b", [
        _trial(0, "ok", optimizer_impl="fused", compile="reduce-overhead", expandable_segments=True),
        _trial(1, "infeasible", compile="max-autotune-no-cudagraphs")]))
    seen = gc.measured_choices([first, second])
    assert seen["compile"] == {"off", "default", "reduce-overhead"}
    missing = gc.missing_choices(seen)
    assert missing == ["optimizer_impl=plain", "compile=max-autotune-no-cudagraphs"]
    assert gc.gated_reasons([first, second], missing) == {}


def test_choices_the_gate_ruled_out_are_named_with_the_reason(tmp_path):
    run = gc.read_run(_report(tmp_path / "a", [_trial(0, "ok")], gated={
        "fp32_precision": {"tf32": "TF32 needs compute capability 8.0 or later; this GPU is 7.0"},
        "expandable_segments": {"True": "no GPU: a setting of the CUDA caching allocator"}}))
    missing = gc.missing_choices(gc.measured_choices([run]))
    assert gc.gated_reasons([run], missing) == {
        "fp32_precision=tf32": "TF32 needs compute capability 8.0 or later; this GPU is 7.0",
        "expandable_segments=True": "no GPU: a setting of the CUDA caching allocator"}


def test_the_knob_space_screens_every_gpu_knob_choice():
    from autotune.search.screen import screening_configs
    from autotune.search.space import parse_space

    space = parse_space(yaml.safe_load(yaml.safe_dump(gc.gpu_knob_space())), source="gpu-knobs")
    default = {name: choices[0] for name, choices in gc.GPU_KNOBS.items()}
    configs = [default, *screening_configs(space, default)]
    seen = {name: {c[name] for c in configs} for name in gc.GPU_KNOBS}
    assert gc.missing_choices(seen) == []
    assert len(configs) == 1 + sum(len(c) - 1 for c in gc.GPU_KNOBS.values())


def test_mfu_must_be_a_fraction(tmp_path):
    good = gc.read_run(_report(tmp_path / "a", [_trial(0, "ok", 0.2), _trial(1, "pruned", 7.0)]))
    assert gc.mfu_verdict(gc.mfu_values(good)) == ("PASS", "3 figures in [0.2, 0.31]")
    bad = gc.read_run(_report(tmp_path / "b", [_trial(0, "ok", 1.3)], final_mfu=0.4))
    assert gc.mfu_verdict(gc.mfu_values(bad)) == ("FAIL", "3 figures in [0.3, 1.3]; outside (0, 1]: trial 0 1.3")
    assert gc.mfu_verdict([]) == ("FAIL", "no MFU figure in any run")


def test_knob_and_mfu_checks_read_the_runs_of_the_invocation(tmp_path):
    ctx = _context(tmp_path)
    assert runs.check_knobs(ctx)[:2] == ("SKIP", "no autotune run in this invocation")
    ctx.summaries["run-resnet"] = gc.read_run(_report(tmp_path / "r", [
        _trial(0, "ok", 0.1, fp32_precision="tf32", optimizer_impl="plain", compile="default"),
        _trial(1, "ok", 0.1, optimizer_impl="foreach", compile="max-autotune-no-cudagraphs", expandable_segments=True),
        _trial(2, "ok", 0.1, optimizer_impl="fused", compile="reduce-overhead")]))
    assert runs.check_knobs(ctx)[:2] == (
        "FAIL", "10 of 12 GPU knob choices measured; missing optimizer_impl=auto, compile=off")
    ctx.summaries["run-digits"] = gc.read_run(_report(tmp_path / "d", [_trial(0, "ok", 0.2)]))
    assert runs.check_knobs(ctx)[:2] == ("PASS", "12 of 12 GPU knob choices measured")
    assert runs.check_mfu(ctx)[0] == "PASS"


def test_missing_knob_choices_are_skipped_not_failed_when_a_run_got_no_time(tmp_path):
    ctx = _context(tmp_path)
    ctx.summaries["run-digits"] = gc.read_run(_report(tmp_path / "d", [_trial(0, "ok", 0.2)], budget=41))
    ctx.short["run-digits"] = "searched 1 of 41 trials (--timeout)"
    ctx.short["run-resnet"] = "skipped (time limit)"
    status, figure, detail = runs.check_knobs(ctx)
    assert status == "SKIP" and figure.endswith("; runs cut short or left out: run-digits searched 1 of 41 "
                                                "trials (--timeout), run-resnet skipped (time limit)")
    assert detail["short"] == ctx.short
    assert gc.knobs_verdict(["compile=default"], {}, ctx.short) == "SKIP"
    assert gc.knobs_verdict(["optimizer_impl=fused"], {"optimizer_impl=fused": "no fused"}, ctx.short) == "FAIL"
    assert gc.knobs_verdict(["compile=default"], {}, {}) == "FAIL"  # every run had its budget: a real gap
    assert gc.knobs_verdict([], {}, ctx.short) == "PASS"


def test_a_search_stopped_before_its_budget_is_counted_and_named(tmp_path):
    trials = [_trial(0, "ok"), _trial(1, "pruned"), _trial(2, "error"), _trial(3, "infeasible"),
              {**_trial(4, "ok"), "status": "duplicate"}, {"number": 5, "state": "waiting"}]
    summary = gc.read_run(_report(tmp_path / "a", trials, budget=41))
    assert summary.counted() == 3 and summary.short()  # ok, pruned and error count; the rest do not
    assert gc.run_verdict(0, summary)[1].endswith("; search stopped after 3 of 41 trials; trial 2 error: boom")
    assert not gc.read_run(_report(tmp_path / "b", trials[:3], budget=3)).short()
    assert not gc.read_run(_report(tmp_path / "c", trials[:1])).short()  # no budget recorded: not judged


# ------------------------------------------------------------------ single-trial labels


def test_a_label_is_covered_only_by_a_completed_trial_with_its_knobs(tmp_path):
    nan = {**_trial(3, "ok", amp="fp16"), "val_loss": float("nan")}
    dup = {**_trial(4, "ok", fp32_precision="tf32"), "status": "duplicate"}
    first = gc.read_run(_report(tmp_path / "d", [
        _trial(0, "ok"), _trial(1, "ok", amp="bf16"), _trial(2, "pruned", checkpointing=True), nan, dup,
        _trial(5, "error", compile="reduce-overhead"), _trial(6, "ok", compile=True)]))
    second = gc.read_run(_report(tmp_path / "r", [_trial(0, "ok", amp="bf16"), _trial(7, "ok", checkpointing=True)]))
    labels = {k: gc.LABELS[k] for k in ("bf16", "checkpointing", "fp16+GradScaler", "tf32", "compile default",
                                        "compile reduce-overhead")}
    assert gc.coverage({"run-digits": first, "run-resnet": second}, labels) == {
        "bf16": "run-digits trial 1",  # the first run in order names it
        "checkpointing": "run-resnet trial 7",  # the pruned trial in run-digits does not count
        "fp16+GradScaler": None,  # its only trial has a NaN validation loss
        "tf32": None,  # a duplicate ran nothing itself
        "compile default": "run-digits trial 6",  # compile: true, as once written
        "compile reduce-overhead": None}  # it errored


def test_the_trials_verdict_names_where_each_label_completed():
    covered = {"bf16": "run-digits trial 14", "tf32": None, "compile default": None}
    ok = {"status": "PASS", "figure": "loss 2.3"}
    assert gc.trials_verdict(covered, {"tf32": ok, "compile default": ok}) == (
        "PASS", "3 of 3 completed (1 in runs): bf16: run-digits trial 14; tf32: direct PASS loss 2.3; "
                "compile default: direct PASS loss 2.3")
    status, figure = gc.trials_verdict(covered, {"tf32": ok})
    assert status == "SKIP" and figure.endswith("compile default: not run (time limit)")
    status, figure = gc.trials_verdict(covered, {"tf32": {"status": "FAIL", "figure": "timeout"}})
    assert status == "FAIL" and "tf32: direct FAIL timeout" in figure


def test_the_trials_check_runs_nothing_for_labels_the_runs_covered_and_skips_what_has_no_time(tmp_path):
    ctx = _context(tmp_path)
    trials = [_trial(i, "ok", **knobs) for i, knobs in enumerate(gc.LABELS.values())]
    ctx.summaries["run-digits"] = gc.read_run(_report(tmp_path / "d", trials))
    status, figure, detail = runs.check_trials(ctx, gc.LABELS, runs.DIGITS)
    assert status == "PASS" and detail["direct"] == {} and figure.startswith("11 of 11 completed (11 in runs): ")
    ctx = _context(tmp_path, "--time-limit", "1")
    ctx.summaries["run-digits"] = gc.read_run(tmp_path / "d")
    labels = {**gc.LABELS, "compile other": {"compile": "max-autotune"}}
    status, figure, detail = runs.check_trials(ctx, labels, runs.DIGITS)  # 1 s: not even a plain trial fits
    assert status == "SKIP" and detail["not_run"] == ["compile other"]
    assert figure.endswith("compile other: not run (time limit)")


# ------------------------------------------------------------------ end to end on the CPU


@pytest.mark.slow
def test_cpu_dry_run_end_to_end(tmp_path):
    """The script itself on the CPU: the plan printed first, a real profile, one tiny
    `autotune run` analysed as a GPU run would be, then the single-trial labels: the one
    the run completed (checkpointing) named with its trial, the other (bf16) run directly in
    a fresh process; the result file and the profile."""
    done = _script("--cpu-dry-run", "--results", str(tmp_path / "results"), "--profiles", str(tmp_path / "profiles"),
                   "--work", str(tmp_path / "work"), timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split()[1]: line.split()[0] for line in done.stdout.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")}
    assert lines["trials"] == "PASS" and lines["run-digits"] == "PASS" and lines["mfu"] == "PASS"
    assert lines["matmul"] == "SKIP" and lines["nproc"] == "SKIP" and lines["knobs"] == "SKIP"
    [result] = (tmp_path / "results").glob("gpu_acceptance-cpu-dry-run-*.json")
    data = json.loads(result.read_text())
    assert data["dry_run"] is True and data["counts"]["FAIL"] == 0
    assert [c["name"] for c in data["checks"]] == [n for n in gpu_acceptance.ORDER if n not in ("run-resnet", "run-sequence")]
    assert done.stdout.splitlines()[1] == "plan for --time-limit 480 s (expected seconds on an H100/H200, from an H200 run where one ran there):"
    assert done.stdout.index("  total ") < done.stdout.index("PASS  run-digits") < done.stdout.index("PASS  trials")
    trials = next(c for c in data["checks"] if c["name"] == "trials")
    # The run's checkpointing trial is slower than the default (35-50% per step on a small
    # CPU) and may be pruned on a busy machine: then it is not coverage, and runs directly.
    number = next((t["number"] for t in gc.read_run(tmp_path / "work" / "run-digits").trials
                   if gc.completed(t) and t["config"]["checkpointing"]), None)
    direct = trials["detail"]["direct"]
    if number is not None:
        assert trials["detail"]["covered"] == {"bf16": None, "checkpointing": f"run-digits trial {number}"}
        assert list(direct) == ["bf16"]
        assert trials["figure"].startswith("2 of 2 completed (1 in runs): bf16: direct PASS loss ")
        assert trials["figure"].endswith(f"; checkpointing: run-digits trial {number}")
    else:
        assert trials["detail"]["covered"] == {"bf16": None, "checkpointing": None}
        assert sorted(direct) == ["bf16", "checkpointing"] and direct["checkpointing"]["status"] == "PASS"
    assert direct["bf16"]["status"] == "PASS"
    from autotune.hardware import load_profile

    [profile] = (tmp_path / "profiles").glob("*.yaml")
    assert load_profile(profile).tuned[0]["model"] == "digits_cnn"  # the run recorded its result there
    assert gc.read_run(tmp_path / "work" / "run-digits").finished


@pytest.mark.slow
def test_probe_check_on_the_cpu_under_a_real_cap(tmp_path):
    """The probe check's own steps with the CPU's address-space cap standing in for the GPU's
    memory fraction: the largest micro-batch of the ResNet example fits when probed again in
    a fresh process, and 1.1 times it does not."""
    status, figure, detail = gpu_acceptance.check_probe(_context(tmp_path, "--probe-limit", "600MiB"))
    assert status == "PASS", figure
    largest = detail["finder"]["max_batch"]
    assert 8 <= largest < 8192 and detail["again"]["batch"] == largest and detail["again"]["fits"]
    assert detail["beyond"]["batch"] >= 1.1 * largest and not detail["beyond"]["fits"]
    assert figure.startswith(f"largest micro-batch {largest} in 600.00 MiB (")


def test_nvml_check_reads_the_profiles_first_gpu(tmp_path):
    import dataclasses

    from autotune.hardware import load_profile

    [saved] = sorted((ROOT / "profiles").glob("cpu-*.yaml"))[:1]
    gpu = {"index": 0, "name": "NVIDIA H200", "uuid": "GPU-5a1b", "memory_total_bytes": 150_754_820_096,
           "sm_count": 132, "max_sm_clock_mhz": 1980, "max_memory_clock_mhz": 3201}
    ctx = _context(tmp_path)
    ctx.profile = dataclasses.replace(load_profile(saved), gpus=[gpu], nvml={"driver_version": "580.159.04"})
    assert gpu_acceptance.check_nvml(ctx)[:2] == ("PASS", "NVIDIA H200, 140 GiB, 132 SMs, 1980 MHz, driver 580.159.04")
    ctx.profile = dataclasses.replace(ctx.profile, gpus=[{**gpu, "uuid": "N/A", "max_sm_clock_mhz": "N/A"}])
    assert gpu_acceptance.check_nvml(ctx)[:2] == ("FAIL", "N/A: uuid, max_sm_clock_mhz")
    ctx.profile = dataclasses.replace(ctx.profile, gpus=[], nvml={"message": "NVML not available (no driver)"})
    assert gpu_acceptance.check_nvml(ctx)[:2] == ("SKIP", "no GPU in the profile: NVML not available (no driver)")
