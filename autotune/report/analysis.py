"""What the report reads out of a study: the Pareto front of throughput against validation
loss, each screened knob's measured effect, and Optuna's parameter importances.

``knob_effects`` and ``param_importances`` take the study (or its trials) and are called
once, when the report data is built; the results are plain dicts stored in report.json.
``pareto_front`` works on plain numbers, so a report can be re-rendered from its JSON.
"""

from __future__ import annotations

import statistics
import warnings
from typing import Any, Sequence

# Roles of the trials that screen one knob at a time (``search/screen.py``).
DEFAULT_ROLE, SCREENING_ROLE, RECHECK_ROLE = "default", "screening", "recheck"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes, the first maximised
    (throughput) and the second minimised (validation loss), in order of the first.

    A point is dominated when another has at least its throughput and at most its loss,
    and is strictly better on one of them; equal points are all on the front.
    """
    front = []
    for i, (x, y) in enumerate(points):
        if not any(xo >= x and yo <= y and (xo > x or yo < y) for xo, yo in points):
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def trial_points(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's trial rows that have both a throughput and a validation loss, and
    were measured by themselves (a repeated proposal points to its earlier trial)."""
    out = []
    for t in trials:
        tps, loss = t.get("throughput_samples_per_s"), t.get("val_loss")
        if t.get("status") == "duplicate" or not _finite(tps) or not _finite(loss):
            continue
        out.append(t)
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def screening_value(trial: Any) -> float | None:
    """A screening trial's objective value: the study's value when it completed; for a
    pruned one, the median of the windows it reported (it was stopped as clearly slow);
    None when it has no measurement (ruled out unrun, out of memory, failed)."""
    from optuna.trial import TrialState

    if trial.state == TrialState.COMPLETE:
        return trial.value
    windows = list(trial.intermediate_values.values())
    if trial.state == TrialState.PRUNED and windows:
        return float(statistics.median(windows))
    return None


def knob_effects(trials: Sequence[Any], default: dict[str, Any] | None, choices: dict[str, list[Any]],
                 base: dict[str, Any] | None = None, lead: str | None = None) -> dict[str, Any]:
    """For each screened knob, the objective value of each of its choices with every other
    knob at its reference, and that value over the reference trial's.

    ``trials`` are the study's frozen trials, ``default`` the knobs the screening started
    from (the study's ``screening_default``), ``choices`` each searched knob's choices.
    A study screened in two stages has a ``base`` (``screening_base``): ``lead`` (the
    micro-batch) was screened around ``default``, every other knob around ``base``.

    A choice's ``relative`` is its value over the mean of the reference config's
    measurements nearest before and after it (``reference_trials``), as the search
    judged it; the reference's own first trial is the row at 1.0. ``pairs`` holds the
    same rows for the knobs screened together as well (``screen.PAIRS``), keyed
    ``"a + b"``, each row's ``choice`` a list of the pair's values.
    """
    from autotune.search.screen import PAIRS, changed_only, reference_level

    if default is None:
        return {"reason": "the study did not screen the knobs one at a time (a warm start, or a study from an "
                          "older version)", "knobs": {}}
    screened = [t for t in trials if t.user_attrs.get("role") in (DEFAULT_ROLE, SCREENING_ROLE) and t.state.is_finished()]
    # The reference configs' measurements: their screening trials and the rechecks
    # measured between the choices.
    measured = [t for t in trials if t.user_attrs.get("role") in (DEFAULT_ROLE, SCREENING_ROLE, RECHECK_ROLE)
                and t.state.is_finished()]
    first = next((t for t in screened if t.user_attrs.get("role") == DEFAULT_ROLE), None)
    if first is None:
        return {"reason": "the default trial has not finished", "knobs": {}}
    base = base or default
    base_trial = next((t for t in screened if _matches(t, base)), first)
    knobs = {}
    for name, options in choices.items():
        if name not in default or len(options) < 2:
            continue
        ref, ref_trial = (default, first) if name == lead or base == default else (base, base_trial)
        # The lead's choices were judged on the first stage's measurements of the default.
        refs = [(t.number, v) for t in measured if _matches(t, ref) and (v := screening_value(t)) is not None
                and not (name == lead and base != default and t.user_attrs.get("stage") == 2)]
        rows = []
        for t in screened:
            if _others_at(t, name, ref):
                level, near = (screening_value(ref_trial), [ref_trial.number]) if t.number == ref_trial.number \
                    else reference_level(refs, t.number)
                rows.append(_effect_row(t, name, level, ref_trial.number, near))
        rows.sort(key=lambda r: options.index(r["choice"]) if r["choice"] in options else len(options))
        if len(rows) > 1:
            knobs[name] = rows
    # Pairs screened together: both knobs changed, every other at the reference.
    pairs = {}
    for pair in PAIRS:
        if not all(n in knobs for n in pair):
            continue
        ref, ref_trial = (default, first) if lead in pair or base == default else (base, base_trial)
        refs = [(t.number, v) for t in measured if _matches(t, ref) and (v := screening_value(t)) is not None]
        rows = []
        for t in screened:
            if changed_only(t, pair, ref):
                level, near = reference_level(refs, t.number)
                row = _effect_row(t, pair[0], level, ref_trial.number, near)
                rows.append({**row, "choice": [t.params.get(n) for n in pair]})
        if rows:
            pairs[" + ".join(pair)] = rows
    reason = None if knobs else "no screening trial has finished yet"
    return {"default_trial": first.number, "default_value": screening_value(first),
            "base_trial": base_trial.number, "base": base, "lead": lead if base != default else None,
            "knobs": knobs, "pairs": pairs, "reason": reason}


def _matches(trial: Any, knobs: dict[str, Any]) -> bool:
    return all(trial.params.get(k) == v for k, v in knobs.items())


def _others_at(trial: Any, name: str, ref: dict[str, Any]) -> bool:
    return all(trial.params.get(k) == v for k, v in ref.items() if k != name)


def _effect_row(trial: Any, name: str, base_value: float | None, base_trial: int, reference_trials: list[int]) -> dict[str, Any]:
    value = screening_value(trial)
    attrs = trial.user_attrs
    note = attrs.get("reason") or ("stopped early as clearly slow" if attrs.get("status") == "pruned" else "")
    if attrs.get("status") == "duplicate":
        note = f"same config as trial {attrs.get('duplicate_of')}"
    return {
        "choice": trial.params.get(name),
        "trial": trial.number,
        "status": attrs.get("status", trial.state.name.lower()),
        "value": value,
        "relative": value / base_value if value is not None and base_value else None,
        "base_trial": base_trial,
        "reference_trials": reference_trials,
        "throughput_samples_per_s": attrs.get("throughput_samples_per_s"),
        "note": str(note),
    }


def param_importances(study: Any) -> dict[str, Any]:
    """Optuna's parameter importances (its default evaluator, PED-ANOVA) of the objective
    over the completed trials measured by themselves (repeated proposals, which copy an
    earlier value, would count that config twice). Only knobs that took more than one value
    in those trials are assessed: one that never changed cannot explain anything, yet the
    evaluator gives it a share. When they cannot be computed (too few trials, no knob that
    varies, an error in the evaluator), ``importances`` is None and ``reason`` says why;
    the run goes on either way."""
    import optuna
    from optuna.trial import TrialState

    method = "optuna.importance.get_param_importances (PED-ANOVA)"
    used = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and t.user_attrs.get("status") != "duplicate"]
    out: dict[str, Any] = {"method": method, "trials": len(used), "importances": None, "reason": None}
    names = sorted({k for t in used for k in t.params})
    varying = [k for k in names if len({repr(t.params.get(k)) for t in used}) > 1]
    if len(used) < 2:
        out["reason"] = f"needs at least 2 completed trials, but the study has {len(used)}"
    elif not varying:
        out["reason"] = "no knob took more than one value in the completed trials"
    if out["reason"]:
        return out
    copy = optuna.create_study(direction=study.direction)
    copy.add_trials(used)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = optuna.importance.get_param_importances(copy, params=varying)
    except (ValueError, RuntimeError, ArithmeticError) as exc:
        out["reason"] = f"Optuna could not compute them: {exc}"
        return out
    out["importances"] = {k: float(v) for k, v in values.items()}
    notes = sorted({str(w.message) for w in caught if "importance" in str(w.message).lower()})
    fixed = [k for k in names if k not in varying]
    if fixed:
        notes.append(f"Left out, as they took one value in every completed trial: {', '.join(fixed)}.")
    out["note"] = " ".join(notes) or None
    return out
