"""The search: spaces, gating, isolated trials, the Optuna study and selection."""

from autotune.search.gate import Facts, gate, gpu_facts, has_conv2d
from autotune.search.select import Selection, best_trial, select
from autotune.search.space import SearchSpace, load_space, parse_space
from autotune.search.opening import open_study
from autotune.search.stale import fail_stale_trials
from autotune.search.study import SearchBudget, enqueue_default, run_search
from autotune.search.trial import TrialBudget

__all__ = [
    "Facts",
    "SearchBudget",
    "SearchSpace",
    "Selection",
    "TrialBudget",
    "best_trial",
    "enqueue_default",
    "fail_stale_trials",
    "gate",
    "gpu_facts",
    "has_conv2d",
    "load_space",
    "open_study",
    "parse_space",
    "run_search",
    "select",
]
