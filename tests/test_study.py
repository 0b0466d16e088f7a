"""The study on a real SQLite storage: budget, duplicates, failed trials, stale trials."""

from __future__ import annotations

import dataclasses

import shutil
import statistics
from pathlib import Path

import pytest
from optuna.trial import TrialState

from autotune.search import SearchBudget, TrialBudget, enqueue_default, fail_stale_trials, open_study, parse_space, run_search
from autotune.model.task import load_task
import autotune.search.optuna_adapter as study_data

ASSETS = Path(__file__).parent / "assets"
FAST = TrialBudget(warmup_steps=1, window_s=0.02, windows=2, max_eval_batches=1, timeout_s=60)


def _space(micro: list[int]):
    data = {"name": "t", "params": {"micro_batch_size": {"choices": micro}, "amp": {"choices": ["off"]}}}
    return parse_space(data, source="test space")


def _open(tmp_path: Path, task, space):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    return open_study(storage, "s", task, space, space, "fp-test", 0)


def test_duplicates_are_answered_from_the_earlier_trial(tiny_task, tmp_path):
    space = _space([8, 16])
    study, space = _open(tmp_path, tiny_task, space)
    run_search(study, tiny_task, space, SearchBudget(n_trials=3, trial=FAST), progress=False)
    measured = [t for t in study.trials if t.user_attrs["status"] == "ok"]
    duplicates = [t for t in study.trials if t.user_attrs["status"] == "duplicate"]
    # Only two configs exist: two measured trials, the rest answered without running.
    assert sorted(t.params["micro_batch_size"] for t in measured) == [8, 16]
    assert duplicates, "the sampler should have proposed a known config"
    for dup in duplicates:
        first = study.trials[dup.user_attrs["duplicate_of"]]
        assert first.params == dup.params and first.value == dup.value
        assert "pid" not in dup.user_attrs  # no process ran for it
    assert len(study.trials) == 2 + len(duplicates) <= 9


def test_a_failing_config_is_recorded_and_the_study_goes_on(tmp_path):
    model = tmp_path / "picky_mlp.py"
    shutil.copy(ASSETS / "picky_mlp.py", model)
    shutil.copy(ASSETS / "tiny_mlp.py", tmp_path / "tiny_mlp.py")
    task = load_task(model)
    space = _space([8, 16])
    study, space = _open(tmp_path, task, space)
    study.enqueue_trial({"micro_batch_size": 16})
    study.enqueue_trial({"micro_batch_size": 8})
    run_search(study, task, space, SearchBudget(n_trials=2, trial=FAST), progress=False)
    failed, ok = study.trials[0], study.trials[1]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["status"] == "error"
    assert failed.user_attrs["reason"] == "ValueError: this model cannot take 16 rows"
    assert "raise ValueError" in failed.user_attrs["traceback"]
    assert ok.state == TrialState.COMPLETE and ok.value > 0


def test_measurements_are_user_attributes_with_units(tiny_task, tmp_path):
    space = _space([8])
    study, space = _open(tmp_path, tiny_task, space)
    run_search(study, tiny_task, space, SearchBudget(n_trials=1, trial=FAST), progress=False)
    attrs = study.trials[0].user_attrs
    assert attrs["throughput_samples_per_s"] == study.trials[0].value
    assert attrs["throughput_min_samples_per_s"] <= attrs["throughput_samples_per_s"] <= attrs["throughput_max_samples_per_s"]
    assert attrs["peak_memory_bytes"] > 2**20
    assert 0 <= attrs["val_accuracy"] <= 1
    assert attrs["config"]["micro_batch_size"] == 8


def test_default_config_is_queued_first_only_in_a_new_study(tiny_task, tmp_path):
    space = parse_space(
        {"name": "t", "params": {"micro_batch_size": {"choices": [8, 32]}, "amp": {"choices": ["off", "bf16"]}}},
        source="test space",
    )
    study, space = _open(tmp_path, tiny_task, space)
    assert enqueue_default(study, space)
    trial = study.ask()
    assert space.suggest(trial) == {"micro_batch_size": 32, "amp": "off"}
    assert trial.user_attrs["role"] == "default"
    study.tell(trial, 1.0)
    assert not enqueue_default(study, space)


def test_the_default_trains_at_the_model_files_batch_where_the_space_holds_it():
    from autotune.search.study import default_knobs

    space = parse_space({"name": "t", "params": {"micro_batch_size": {"choices": [8, 16, 32]}}}, source="test space")
    assert default_knobs(space, 16)["micro_batch_size"] == 16
    assert default_knobs(space, 64)["micro_batch_size"] == 32  # not in the space: TrainConfig's default
    assert default_knobs(space)["micro_batch_size"] == 32


def _abandon(trial) -> None:
    """Make ``trial`` look like one whose tuner, on this machine, was killed."""
    import subprocess
    import sys

    from autotune.search.stale import _here

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    trial.set_user_attr("worker", f"{_here()}:{gone.pid}")


def test_stale_running_trials_are_marked_failed(tiny_task, tmp_path):
    space = _space([8])
    study, _ = _open(tmp_path, tiny_task, space)
    _abandon(study.ask())  # left running, as by a tuner that was killed
    reopened, _ = _open(tmp_path, tiny_task, space)
    assert fail_stale_trials(reopened) == 1
    assert reopened.trials[0].state == TrialState.FAIL
    assert fail_stale_trials(reopened) == 0


def test_resume_keeps_the_gated_space_it_started_with(tiny_task, tmp_path):
    raw = _space([8, 16])
    gated = raw.without("micro_batch_size", 16, "a test reason")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(storage, "s", tiny_task, raw, gated, "fp-test", 0)
    _, resumed = open_study(storage, "s", tiny_task, raw, raw, "fp-test", 0)
    assert resumed.params["micro_batch_size"].choices == (8,)
    assert resumed.gated == {"micro_batch_size": {"16": "a test reason"}}


def test_resume_refuses_other_hardware(tiny_task, tmp_path):
    space = _space([8])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(storage, "s", tiny_task, space, space, "fp-a", 0)
    with pytest.raises(Exception, match=r"was measured on other hardware \(fp-a, this machine is fp-b\)"):
        open_study(storage, "s", tiny_task, space, space, "fp-b", 0)


def test_a_study_is_scored_by_its_own_scorer_and_refuses_another_objective(tiny_task, tmp_path):
    from autotune.config import TrainConfig
    from autotune.search.objective import Scorer

    space = _space([8, 16])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    scorer = Scorer("goodput", reference_batch=8, b_noise=8.0)
    study, space = open_study(storage, "s", tiny_task, space, space, "fp-test", 0, scorer)
    run_search(study, tiny_task, space, SearchBudget(n_trials=2, trial=FAST), progress=False)
    for t in (t for t in study.trials if t.user_attrs["status"] == "ok"):
        cfg = TrainConfig.from_dict(t.user_attrs["config"])
        efficiency = (1 + 8 / 8.0) / (1 + cfg.effective_batch_size / 8.0)
        assert t.user_attrs["statistical_efficiency"] == pytest.approx(efficiency)
        assert t.value == pytest.approx(t.user_attrs["throughput_samples_per_s"] * efficiency)
    with pytest.raises(Exception, match="maximises goodput, not throughput"):
        open_study(storage, "s", tiny_task, space, space, "fp-test", 0, Scorer("throughput"))


def _searched(tiny_task, tmp_path):
    """A study of four measured trials over four micro-batch sizes, the default first."""
    space = _space([8, 16, 24, 32])
    study, space = _open(tmp_path, tiny_task, space)
    enqueue_default(study, space)
    run_search(study, tiny_task, space, SearchBudget(n_trials=4, trial=FAST), progress=False)
    return study


@pytest.mark.slow
def test_selection_remeasures_the_best_few_with_the_default_in_turns(tiny_task, tmp_path):
    from autotune.search.select import select

    study = _searched(tiny_task, tmp_path)
    sel = select(study, tiny_task, FAST, rounds=2, top=2, progress=False, max_rounds=2, run_windows=1)
    assert [c.trial_number for c in sel.candidates] == [t.number for t in sorted(
        (t for t in study.trials if t.user_attrs["status"] == "ok"), key=lambda t: t.value, reverse=True)][:2]
    runs = sel.candidates + ([sel.default] if sel.default not in sel.candidates else [])
    assert all(len(c.values) == 2 for c in runs)
    assert sel.picked.level == max(c.level for c in runs)  # picked on the re-measured levels
    assert all(c.rounds == [0, 1] for c in runs)
    # A race run times fewer windows than the trials did.
    assert all(t.user_attrs["windows"] == FAST.windows == 2 for t in study.trials if t.user_attrs["status"] == "ok")
    assert all(c.windows == [1, 1] for c in runs) and sel.run_windows == 1
    recorded = study_data.attrs(study)["remeasured"]
    assert recorded["run_windows"] == 1 and [c["windows"] for c in recorded["candidates"]] == [[1, 1], [1, 1]]
    assert [c["rounds"] for c in recorded["candidates"]] == [[0, 1], [0, 1]]
    assert [c["level"] for c in recorded["candidates"]] == [c.level for c in sel.candidates]
    assert recorded["picked"] == sel.trial_number and len(recorded["candidates"]) == 2
    assert (recorded["rounds"], recorded["max_rounds"]) == (2, 2)

    # Everyone within a margin of 100% contends: all get the extra round; within 0%, only
    # a tie would, so nobody does.
    everyone = select(study, tiny_task, FAST, rounds=1, top=2, progress=False, max_rounds=2, margin=1.0)
    assert all(len(c.values) == 2 for c in everyone.candidates + [everyone.default])
    nobody = select(study, tiny_task, FAST, rounds=1, top=2, progress=False, max_rounds=3, margin=0.0)
    assert all(len(c.values) == 1 for c in nobody.candidates + [nobody.default])


@pytest.mark.slow
def test_selection_cuts_the_runs_clearly_behind(tiny_task, tmp_path):
    from autotune.search.select import select

    study = _searched(tiny_task, tmp_path)
    # A cut of 0%: after the first round only the leader is left, so the race ends there.
    sel = select(study, tiny_task, FAST, rounds=3, top=2, progress=False, max_rounds=3, cut=0.0, cut_after=1)
    runs = sel.candidates + ([sel.default] if sel.default not in sel.candidates else [])
    assert all(c.rounds == [0] for c in runs)
    assert [c for c in runs if not c.dropped] == [sel.picked]
    recorded = study_data.attrs(study)["remeasured"]
    assert (recorded["cut"], recorded["cut_after"]) == (0.0, 1)
    raced = recorded["candidates"] + ([recorded["default"]] if recorded["default"]["trial"] is None else [])
    assert sum(not c["dropped"] for c in raced) == 1
    # A cut of 100%: nobody is that far behind, so every run gets every round.
    sel = select(study, tiny_task, FAST, rounds=3, top=2, progress=False, max_rounds=3, cut=1.0, cut_after=1)
    runs = sel.candidates + ([sel.default] if sel.default not in sel.candidates else [])
    assert all(c.rounds == [0, 1, 2] and not c.dropped for c in runs)


@pytest.mark.slow
def test_selection_halves_after_its_first_round(tiny_task, tmp_path):
    from autotune.search.select import select

    study = _searched(tiny_task, tmp_path)
    sel = select(study, tiny_task, FAST, rounds=2, top=3, progress=False, max_rounds=2, keep=2)
    runs = sel.candidates + ([sel.default] if sel.default not in sel.candidates else [])
    assert len(runs) >= 3 and sel.keep == 2
    went_on = [c for c in runs if not c.dropped]
    assert len(went_on) == 2
    assert all(c.rounds == [0, 1] for c in went_on)  # the kept ones: every round
    assert all(c.rounds == [0] for c in runs if c.dropped)  # the rest: the first only
    assert not sel.picked.dropped and sel.picked.level == max(c.level for c in went_on)
    assert all(c.trial_mean is not None for c in sel.candidates)
    recorded = study_data.attrs(study)["remeasured"]
    assert recorded["keep"] == 2
    assert sum(c["dropped"] for c in recorded["candidates"] + [recorded["default"]]) >= 1


def test_halving_ranks_on_the_first_round_and_the_trials_together():
    from autotune.config import TrainConfig
    from autotune.search.race import Candidate, halve

    def run(value, mean):
        return Candidate(None, TrainConfig(), {}, values=[value], rounds=[0], trial_mean=mean)

    # Scores: sqrt(100 * 64) = 80, sqrt(90 * 100) ~ 94.9, 85 (no trials: its round alone), 0.
    lucky_round, steady, untried, failed = run(100.0, 64.0), run(90.0, 100.0), run(85.0, None), Candidate(None, TrainConfig(), {})
    runs = [lucky_round, steady, untried, failed]
    assert halve(runs, 2) == [steady, untried]  # in the runs' order
    assert [c.dropped for c in runs] == [True, False, False, True]
    assert halve([lucky_round, steady], 1) == [steady]  # the best single round is not enough


def test_contenders_are_the_runs_within_the_margin_of_the_best_median():
    from autotune.config import TrainConfig
    from autotune.search.race import Candidate, contenders

    def run(*values):
        return Candidate(None, TrainConfig(), {}, values=list(values))

    lead, close, behind, unmeasured = run(100.0, 90.0, 110.0), run(95.0, 93.0), run(80.0, 85.0, 70.0), run()
    assert contenders([lead, close, behind, unmeasured], 0.08) == [lead, close]
    assert contenders([lead, close, behind], 0.04) == [lead]
    assert contenders([lead, close, behind], 0.25) == [lead, close, behind]
    assert contenders([unmeasured], 0.1) == []
    # A median 25% behind with one lucky measurement above the leader's median: out.
    wide = run(70.0, 101.0, 75.0)
    assert contenders([lead, close, behind, wide], 0.08) == [lead, close]


def test_levels_take_out_each_rounds_speed():
    from autotune.search.race import levels

    speed = [1.0, 0.7, 0.7, 1.0, 1.0]  # the machine in rounds 1 and 2: 30% slow for everyone
    fast = {r: 105.0 * speed[r] for r in (0, 1, 2)}  # 5% faster, but not raced after round 2
    slow = {r: 100.0 * speed[r] for r in range(5)}
    assert statistics.median(fast.values()) < statistics.median(slow.values())  # medians pick the wrong one
    lf, ls, none = levels([fast, slow, {}])
    assert lf / ls == pytest.approx(1.05) and none is None
    assert ls == pytest.approx(100.0)  # in the values' units, at the typical round's speed
    # One run's unlucky round moves its own level only, and less than its mean would move.
    a = {r: 100.0 for r in range(5)}
    b = {r: 90.0 for r in range(5)} | {3: 45.0}
    c = {r: 80.0 for r in range(5)}
    la, lb, lc = levels([a, b, c])
    assert (la, lc) == (pytest.approx(100.0), pytest.approx(80.0))
    assert statistics.fmean(b.values()) < lb <= 90.0


def test_configs_rank_by_the_mean_of_their_measurements_not_their_luckiest():
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from autotune.search.select import ranked_trials

    study = optuna.create_study(direction="maximize")
    dists = {"micro_batch_size": CategoricalDistribution([8, 16, 32])}

    def add(mb, value, status="ok"):
        study.add_trial(create_trial(params={"micro_batch_size": mb}, distributions=dists, value=value,
                                     user_attrs={"config": {"micro_batch_size": mb}, "status": status}))

    add(8, 150.0)  # lucky once ...
    add(16, 120.0)
    add(8, 70.0)  # ... and measured again: mean 110
    add(16, 120.0, status="duplicate")  # a repeat copies trial 1's value: not a second measurement
    add(32, 100.0)
    ranked = ranked_trials(study)
    assert [(t.params["micro_batch_size"], t.number) for t in ranked] == [(16, 1), (8, 0), (32, 4)]


@pytest.mark.parametrize("limit, feasible", [(2**40, True), (2**20, False)])
def test_memory_over_the_budget_is_an_optuna_constraint(tiny_task, tmp_path, limit, feasible):
    space = _space([8])
    study, space = _open(tmp_path, tiny_task, space)
    study_data.put(study, "memory_probe", {"limit_bytes": limit, "headroom": 0.1})
    run_search(study, tiny_task, space, SearchBudget(n_trials=1, trial=FAST), progress=False)
    trial = study.trials[0]
    budget = limit * 0.9
    assert trial.constraints == {"memory": pytest.approx(trial.user_attrs["peak_memory_bytes"] / budget - 1.0)}
    assert (trial.constraints["memory"] <= 0) is feasible


def test_the_default_trial_runs_with_torchs_own_thread_count(tiny_task, tmp_path):
    import torch

    threads = torch.get_num_threads()
    data = {"name": "t", "params": {"micro_batch_size": {"choices": [8, 32]}, "cpu_threads": {"choices": sorted({1, 2, threads})}}}
    space = parse_space(data, source="test space")
    study, space = _open(tmp_path, tiny_task, space)
    assert enqueue_default(study, space)
    run_search(study, tiny_task, space, SearchBudget(n_trials=1, trial=FAST), progress=False)
    first = study.trials[0]
    assert first.params == {"micro_batch_size": 32, "cpu_threads": threads}
    assert first.user_attrs["role"] == "default"


def test_the_sqlite_study_is_in_write_ahead_log_mode(tiny_task, tmp_path):
    import sqlite3

    study, _ = _open(tmp_path, tiny_task, _space([8]))
    study_data.put(study, "x", 1)
    with sqlite3.connect(tmp_path / "study.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_stale_trial_is_queued_again_once_with_its_config(tiny_task, tmp_path):
    space = _space([8, 16])
    study, _ = _open(tmp_path, tiny_task, space)
    study.enqueue_trial({"micro_batch_size": 16, "amp": "off"}, user_attrs={"role": "screening"})
    _abandon(study.ask())  # queued, stopped before drawing its knobs: the queued config is retried
    drawn = study.ask()
    drawn.suggest_categorical("micro_batch_size", [8, 16])  # drew part of its config, then stopped
    _abandon(drawn)
    _abandon(study.ask())  # asked, nothing drawn: nothing to retry
    reopened, _ = _open(tmp_path, tiny_task, space)
    assert fail_stale_trials(reopened) == 3
    retries = [t for t in reopened.trials if t.user_attrs.get("retry_of") is not None]
    assert [(t.user_attrs["retry_of"], t.system_attrs["fixed_params"]) for t in retries] == [
        (0, {"micro_batch_size": 16, "amp": "off"}), (1, drawn.params)]
    assert retries[0].user_attrs["role"] == "screening"
    assert all(reopened.trials[n].user_attrs["status"] == "stale" for n in range(3))
    # A retry stopped in turn is not queued a third time.
    again = reopened.ask()
    _abandon(again)
    assert again.number == retries[0].number
    third, _ = _open(tmp_path, tiny_task, space)
    assert fail_stale_trials(third) == 1
    assert not [t for t in third.trials if t.user_attrs.get("retry_of") == again.number]


def test_the_default_trial_with_its_thread_count_spelled_out_is_the_races_default(tiny_task):
    import optuna
    from optuna.trial import create_trial

    from autotune.config import TrainConfig
    from autotune.search.race import Candidate
    from autotune.search.select import default_run

    batch = tiny_task.base.batch_size  # the default trains at the model file's batch
    plain = TrainConfig.from_base(tiny_task.base, micro_batch_size=batch)
    spelled = TrainConfig.from_base(tiny_task.base, micro_batch_size=batch, cpu_threads=2)  # as the default trial ran it
    other = TrainConfig.from_base(tiny_task.base, cpu_threads=2, micro_batch_size=16)
    study = optuna.create_study(direction="maximize")
    for cfg, role in ((spelled, "default"), (other, "screening")):
        study.add_trial(create_trial(value=1.0, user_attrs={"role": role, "config": cfg.to_dict()}))
    runs = [Candidate(1, other, {}), Candidate(0, spelled, {})]
    assert default_run(study, tiny_task, runs) is runs[1]  # raced once, not as two configs
    assert default_run(study, tiny_task, [Candidate(None, plain, {})]).config == plain
    alone = default_run(study, tiny_task, runs[:1])  # not among the best: raced as the model file gives it
    assert alone.trial_number is None and alone.config == plain


def test_the_search_says_what_tuning_costs_against_the_run_and_stops_at_its_share(tiny_task, tmp_path, capsys):
    space = _space([8, 16, 32])
    study, space = _open(tmp_path, tiny_task, space)
    enqueue_default(study, space)
    # A share of the run so small that the default's trial alone uses it up: the search
    # stops after it, and says so.
    budget = SearchBudget(n_trials=3, trial=FAST, max_tuning_share=1e-6)
    run_search(study, tiny_task, space, budget, progress=False)
    measured = [t for t in study.trials if t.user_attrs.get("status") == "ok"]
    assert [t.user_attrs["role"] for t in measured] == ["default"]
    estimate = study_data.attrs(study)["tuning_estimate"]
    default = measured[0].user_attrs
    assert estimate["full_run_s"] == pytest.approx(default["run_samples"] / default["throughput_samples_per_s"])
    assert estimate["tuning_s"] == pytest.approx(default["trial_seconds"] * 3)
    assert study_data.attrs(study)["stopped_by"] == "max_tuning_share"
    out = capsys.readouterr().out
    assert f"the full run at the default config would take about {estimate['full_run_s']:,.0f} s" in out
    assert "tuning stopped at 1e-06 of the full run's estimated" in out


def test_the_start_of_search_warning_names_the_share_when_tuning_outlasts_the_run():
    from autotune.search.study import estimate_text

    long = estimate_text({"full_run_s": 7.0, "tuning_s": 95.0}, None)
    assert "would take about 7 s; the search's trials will take about 95 s, 13.6x the run itself" in long
    assert "--max-tuning-share 0.5" in long
    assert "x the run itself" not in estimate_text({"full_run_s": 700.0, "tuning_s": 95.0}, None)
    assert "stopped at 0.5 of the run's time (350 s" in estimate_text({"full_run_s": 700.0, "tuning_s": 95.0}, 0.5)


def test_the_search_starts_no_trial_after_its_timeout(tiny_task, tmp_path, capsys):
    space = _space([8, 16, 32])
    study, space = _open(tmp_path, tiny_task, space)
    enqueue_default(study, space)
    # Each trial times two windows of at least 0.3 s, so the first one alone outlasts the
    # 0.5 s timeout: it runs (the search starts at once), and no trial starts after it,
    # where the budget of 50 would otherwise measure all three configs.
    slow = dataclasses.replace(FAST, window_s=0.3)
    budget = SearchBudget(n_trials=50, timeout_s=0.5, trial=slow)
    run_search(study, tiny_task, space, budget, progress=False)
    assert [t.number for t in study.trials if t.state.is_finished()] == [0]
    assert "search timeout of 0.5 s reached" in capsys.readouterr().out
