"""Run a function in a fresh process, so a crash, a leak or an OOM costs only that call.

On Linux the processes are forked from a fork server that has already imported torch,
autotune and the model file's own imports (``preload_for``), so each call starts in a
fraction of a second, yet shares no state with the tuner or with earlier calls. Elsewhere
they are spawned.

CUDA cannot be used in a process forked from one that has initialised it, and torch
refuses to ("Cannot re-initialize CUDA in forked subprocess") once the parent has even
asked ``torch.cuda.is_available()``, which counts the devices through the CUDA runtime.
Libraries a model file imports may ask that at import (accelerate, bitsandbytes,
deepspeed, ...). So the server runs with ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, under which
torch answers from NVML without touching CUDA; where NVML cannot answer for this
process's devices (``MIG-`` ids in ``CUDA_VISIBLE_DEVICES``, no NVML library) and CUDA is
present, the model file's imports are not preloaded. Each call then runs with the
variable as the caller had it, as the final run will.
"""

from __future__ import annotations

import ast
import multiprocessing as mp
import os
import signal
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

# torch._dynamo is imported lazily by the first optimizer a process builds (1.5 s here);
# optuna by a trial that reports to its study for pruning.
_PRELOAD = ["torch", "torch._dynamo", "optuna", "autotune.search.trial", "autotune.search.probe"]
_context: Any = None
_extra: list[str] = []
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"  # "1": torch.cuda.is_available() asks NVML, not CUDA


def _get_context() -> Any:
    global _context
    if _context is None:
        if sys.platform.startswith("linux"):
            _context = mp.get_context("forkserver")
            _context.set_forkserver_preload(_PRELOAD + (_extra if _nvml_answers_for_cuda() else []))
        else:
            _context = mp.get_context("spawn")
    return _context


def _nvml_answers_for_cuda() -> bool:
    """Whether the fork server's ``torch.cuda.is_available()`` is answered without CUDA:
    there is no CUDA device (nothing to initialise), or NVML counts this process's
    devices (torch falls back to CUDA's own count where it cannot)."""
    import torch

    if not torch.cuda.is_available():
        return True
    count_nvml = getattr(torch.cuda, "_device_count_nvml", None)  # torch's own test for its fallback
    return count_nvml is not None and count_nvml() >= 0


@contextmanager
def _nvml_check() -> Iterator[None]:
    """``PYTORCH_NVML_BASED_CUDA_CHECK=1`` in this process's environment inside the block
    only; what was there before is put back."""
    before = os.environ.get(NVML_CHECK)
    os.environ[NVML_CHECK] = "1"
    try:
        yield
    finally:
        _set_env(NVML_CHECK, before)


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _start_server(ctx: Any) -> None:
    """Start the fork server, where it is not running, with ``NVML_CHECK`` in its
    environment (it inherits this process's at start)."""
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    with _nvml_check():
        forkserver.ensure_running()


def preload_for(model_path: str | Path) -> list[str]:
    """Have the fork server import what the model file imports at its top level, so a
    trial does not pay for it (scikit-learn alone takes 0.8 s here). Only modules this
    process has imported already (by loading the model file) are added, so none can fail
    in the server. Takes effect only before the first call starts the server, and not
    where CUDA is present but NVML cannot answer for it (see the module's docstring).
    Returns the module names added."""
    try:
        tree = ast.parse(Path(model_path).read_text())
    except (OSError, SyntaxError, ValueError):
        return []  # the model file's loader reports these properly
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    added = [n for n in dict.fromkeys(names) if n in sys.modules and n not in _PRELOAD + _extra]
    _extra.extend(added)
    return added


@dataclass
class Outcome:
    """What came back from the isolated call.

    status: "ok", "oom" (out of memory), "error" (an exception in the call),
    "crash" (the process died without answering) or "timeout".
    """

    status: str
    value: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    detail: str = ""  # the traceback, for errors

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _child(conn: Any, fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any], start_method: str,
           nvml_check: str | None = None) -> None:
    from autotune.engine.memory import is_oom

    # A process from the fork server would start its own processes (DataLoader workers)
    # through a fork server too, a fresh one per trial (1.2-1.4 s here); use the start
    # method the tuner has, which the final run's workers will use.
    mp.set_start_method(start_method, force=True)
    _set_env(NVML_CHECK, nvml_check)  # as the caller has it, not as the server had it

    try:
        outcome = Outcome("ok", value=fn(**kwargs))
    except BaseException as exc:  # report everything to the parent, then exit
        status = "oom" if is_oom(exc) else "error"
        outcome = Outcome(status, reason=_one_line(exc), detail=traceback.format_exc())
    try:
        conn.send(outcome)
    except OSError:
        pass  # the parent stopped waiting (interrupted, or gone): nobody to tell
    finally:
        conn.close()


def _one_line(exc: BaseException) -> str:
    """The exception as one line. An error re-raised from a DataLoader worker carries the
    worker's traceback in its message: its first line only says "Caught ValueError in
    DataLoader worker process 0", so the original error's own last line is added."""
    lines = [line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if len(lines) > 1 and "Caught" in text:
        text = f"{text} {lines[-1]}"
    return text[:500]


def run_isolated(fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any], timeout_s: float) -> Outcome:
    """Call ``fn(**kwargs)`` in a fresh process and wait at most ``timeout_s`` seconds.

    ``fn`` must be importable by name (a module-level function) and return a picklable
    dict. The process is killed on timeout; its death without an answer is a "crash".
    """
    ctx = _get_context()
    _start_server(ctx)
    receiver, sender = ctx.Pipe(duplex=False)
    # Not a daemon: the trial's DataLoader may start worker processes of its own.
    args = (sender, fn, kwargs, mp.get_start_method(), os.environ.get(NVML_CHECK))
    proc = ctx.Process(target=_child, args=args, daemon=False)
    proc.start()
    sender.close()
    try:
        outcome = _wait(receiver, proc, timeout_s)
    except BaseException:  # Ctrl-C in the tuner: the call's process goes too, at once
        proc.kill()
        raise
    finally:
        receiver.close()
        _reap(proc)
    return outcome


def _wait(receiver: Any, proc: Any, timeout_s: float) -> Outcome:
    if not receiver.poll(timeout_s):
        proc.kill()
        proc.join(5)
        return Outcome("timeout", reason=f"no result within {timeout_s:.0f} s; the trial process was killed")
    try:
        return receiver.recv()
    except EOFError:
        proc.join(5)
        return Outcome("crash", reason=_describe_exit(proc.exitcode))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the trial process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the trial process was killed by {name}"
    return f"the trial process exited with code {code} without a result"


def _reap(proc: Any) -> None:
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
