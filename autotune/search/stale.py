"""Which processes run a study's trials, and what happens to a trial whose process is gone.

Every trial records its process (``worker``: host, pid namespace, pid) and, from a thread,
a heartbeat. A running trial is stale when its pid on this machine no longer runs, or when
its heartbeat did not change for STALE_AFTER_S while this process watched (so machines'
clocks need not agree); the first process to notice fails it and queues its config again,
once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autotune.search.optuna_adapter import claim
import autotune.search.optuna_adapter as study_data

# A running trial's process writes a heartbeat this often (seconds); AUTOTUNE_STALE_AFTER_S
# overrides how long one may stand still.
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0


def _here() -> str:
    """This machine, as far as process ids mean anything: the host name, and on Linux the
    process-id namespace (containers that share a host name do not share pids)."""
    try:
        return f"{socket.gethostname()}:{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return socket.gethostname()


def owner() -> str:
    """This process, as a trial's ``worker`` attribute names it: host[:pid namespace]:pid."""
    return f"{_here()}:{os.getpid()}"


def _stale_after() -> float:
    return float(os.environ.get("AUTOTUNE_STALE_AFTER_S", STALE_AFTER_S))


# What this process saw of each running trial's heartbeat, and since when (its own
# monotonic clock): a heartbeat is judged by whether it changes, so the clocks of two
# machines never need to agree.
_seen: dict[Any, tuple[Any, float]] = {}


def _is_stale(trial: optuna.trial.FrozenTrial, study_id: int) -> bool:
    """A running trial whose process is gone: on this machine, its pid no longer runs; on
    any, its heartbeat (or, for one with no heartbeat yet, anything about it) has not
    changed for STALE_AFTER_S while this process watched."""
    if gone_here(str(trial.user_attrs.get("worker", ""))):
        return True
    return stood_still((study_id, study_data.trial_id(trial)), trial.user_attrs.get("heartbeat"))


def gone_here(who: str) -> bool:
    """Whether ``who`` (an ``owner()``) is another process on this machine that no longer runs."""
    where, _, pid = who.rpartition(":")
    return where == _here() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))


def stood_still(key: Any, beat: Any) -> bool:
    """Whether the heartbeat ``beat`` of ``key`` has been the same for longer than
    STALE_AFTER_S of this process's watching (the first look starts the watch)."""
    seen, now = _seen.get(key), time.monotonic()
    if seen is None or seen[0] != beat:
        _seen[key] = (beat, now)
        return False
    return now - seen[1] > _stale_after()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_trials(study: optuna.Study) -> int:
    """Fail the trials left RUNNING by a tuner that stopped (killed, or its machine went
    down) with the reason, and queue each one's config again, once (``_is_stale`` says
    which). Returns how many this process failed."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = [t for t in running if _is_stale(t, study_data.study_id(study))]
    return sum(mark_stale(study, t, "the tuner stopped while this trial ran") for t in stale)


def mark_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> bool:
    """Fail one running trial as stale and queue its config again, unless it was itself
    such a retry, or was stopped before it had a config (between Optuna's ask and the
    draw). Safe when several processes find the same trial: one of them does it."""
    try:
        study_data.fail_trial(study, trial, {"status": "stale", "reason": reason})
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # it finished after all, or another process failed it first
    if not claim(study, f"stale-{trial.number}"):
        return False
    study_data.put(study, f"stale_trial_{trial.number}", reason)
    # Its config: the knobs it had drawn, or for a queued trial stopped before drawing
    # them, the ones it was queued with; a trial stopped before either had none.
    knobs = trial.params or trial.system_attrs.get("fixed_params")
    if knobs and trial.user_attrs.get("retry_of") is None:
        attrs = {k: v for k, v in trial.user_attrs.items() if k in ("role", "recheck")}
        study.enqueue_trial(knobs, user_attrs={**attrs, "retry_of": trial.number})
    return True


class Heartbeat:
    """While a piece of work runs, call ``write(time.time())`` every ``interval`` seconds
    from a thread, so other processes can tell it from work whose process is gone.
    ``trial_heartbeat`` and ``setup_heartbeat`` say where it is written."""

    def __init__(self, write: Callable[[float], Any], interval: float | None = None) -> None:
        # At least three beats within the time after which others call the work stale.
        self._write, self._interval = write, interval or min(HEARTBEAT_S, _stale_after() / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="autotune-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._write(time.time())
            except Exception:  # finished meanwhile, or the database blinked: the next beat tries again
                pass


def trial_heartbeat(study: optuna.Study, trial: optuna.Trial) -> Heartbeat:
    """A running trial's heartbeat: its ``heartbeat`` user attribute."""
    return Heartbeat(lambda now: study_data.set_trial_attr(study, trial, "heartbeat", now))


def setup_heartbeat(study: optuna.Study) -> Heartbeat:
    """The heartbeat of the process setting a new study up: its ``setup_heartbeat`` attribute."""
    return Heartbeat(lambda now: study_data.put(study, "setup_heartbeat", now))
