"""The command line: ``autotune run | worker | finalize | train | report | export | profile | compare``.

Every error a user can cause is an ``AutotuneError``; it is caught once here, printed as
one line (plus a hint), and the exit status is 1. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from autotune.errors import AutotuneError

EPILOG = """\
examples:
  autotune run examples/digits_cnn.py --trials 8
  autotune train examples/digits_cnn.py --config runs/digits_cnn/tuned.yaml --out runs/again
  autotune profile
  autotune compare profiles/a.yaml profiles/b.yaml --format markdown
  autotune report runs/digits_cnn
  autotune export runs/digits_cnn/tuned.yaml --to lightning
  autotune run examples/digits_cnn.py --workers 2
  autotune run examples/digits_cnn.py --storage postgresql://autotune:pw@db-host/studies --study digits
  autotune worker examples/digits_cnn.py --storage postgresql://autotune:pw@db-host/studies --study digits
"""

STORAGE_HELP = ("where the study lives: sqlite:///PATH (one machine), postgresql://USER:PASSWORD@HOST:PORT/DB "
                "(many machines; needs the `postgres` extra) or journal:PATH (a file on a filesystem all workers share)")


def _number(kind: type, low: float, high: float = float("inf"), open_low: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` in [low, high) (or (low, high))."""
    noun = "a whole number" if kind is int else "a number"
    bounds = f"> {low}" if open_low else f">= {low}"
    if high != float("inf"):
        bounds = f"in {'(' if open_low else '['}{low}, {high})"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun}, but got {text!r}") from None
        if value < low or (open_low and value == low) or value >= high:
            raise argparse.ArgumentTypeError(f"must be {bounds}, but got {value}")
        return value

    return parse


_positive_int = _number(int, 1)
_seed = _number(int, 0, 2**32)
_positive_float = _number(float, 0.0, open_low=True)


def _size(text: str) -> int:
    from autotune.engine.memory import parse_size
    from autotune.errors import ConfigError

    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autotune",
        description="Hardware-aware autotuner for PyTorch training: profiles this machine, "
        "searches the knobs that decide speed and memory with short real trials, writes the "
        "tuned config as YAML, trains with it and reports.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_run(sub)
    _add_worker(sub)
    _add_train(sub)
    _add_report(sub)
    _add_export(sub)
    c = sub.add_parser(
        "compare",
        help="compare saved hardware profiles side by side",
        description="Specs and measured peaks of two or more saved profiles side by side, with "
        "ratios to the first, and what the same model tuned to on each machine.",
    )
    c.add_argument("profiles", nargs="+", type=Path, help="profile YAML files (profiles/<fingerprint>.yaml)")
    c.add_argument("--format", choices=("text", "markdown", "json"), default="text", help="output format (default: text)")
    p = sub.add_parser("profile", help="profile this machine, print a summary and save it as YAML")
    p.add_argument("--out", type=Path, help="where to write the profile (default: profiles/<fingerprint>.yaml)")
    p.add_argument("--no-bench", action="store_true", help="skip the short microbenchmarks")
    return parser


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="tune a model file, train it with the result, and report",
        description="Profile the machine, run an Optuna study of short real trials over the "
        "search space, write tuned.yaml, train the model with it and write the report. "
        "Running the same command again on the same --out resumes the study.",
    )
    p.add_argument("model", type=Path, help="the model file (defines build_model and build_datasets)")
    p.add_argument("--out", type=Path, help="run directory for tuned.yaml, study.db, the report and the weights (default: runs/<model name>)")
    p.add_argument("--trials", type=_positive_int, help="measured trials the study should hold in all, counting earlier runs; a new study spends the first on screening each knob's choices (default: 24, or for a study that screens, what the screening takes plus 5 where that is more, as on a GPU, whose space has more knobs)")
    p.add_argument("--timeout", type=_positive_float, help="start no new trial after this many seconds of search")
    p.add_argument("--max-tuning-share", type=_positive_float, metavar="FRACTION",
                   help="stop tuning once its time reaches this share of the full run's time at the default config, "
                        "estimated from the default's trial (e.g. 0.5: tune for at most half as long as the run takes)")
    p.add_argument("--space", default="default", help="a built-in search space name or a YAML file (default: default)")
    p.add_argument("--epochs", type=_positive_int, help="epochs of the final run (default: the model file's BASE['epochs'])")
    p.add_argument("--seed", type=_seed, help="seed for the sampler and the training runs (default: BASE['seed'])")
    p.add_argument("--profiles", type=Path, default=Path("profiles"), help="folder of saved hardware profiles: the result is recorded in <fingerprint>.yaml there, and a new study starts from the most similar machine's results for this model (default: profiles)")
    p.add_argument("--memory-limit", type=_size, metavar="SIZE", help="memory the tuner may use, e.g. 3GiB or 512MiB: the largest micro-batch is probed under it and trials run under it (on a GPU the card's share, on the CPU a real process limit); default: the GPU's memory, or the host's available memory, for the probe only")
    p.add_argument("--headroom", type=_number(float, 0.0, 0.9), default=0.1, metavar="FRACTION", help="share of the memory limit the probed micro-batch leaves free (default: 0.1)")
    p.add_argument("--objective", choices=("goodput", "throughput"), default="goodput", help="what trials are scored on: goodput (samples/s weighted by how much each sample is worth at that effective batch, from the model's gradient noise scale) or raw throughput (samples/s) (default: goodput)")
    p.add_argument("--no-warm-start", action="store_true", help="start the study from scratch even when saved results exist")
    p.add_argument("--storage", metavar="URL", help=STORAGE_HELP + " (default: sqlite:///OUT/study.db)")
    p.add_argument("--study", metavar="NAME", help="the study's name in the storage (default: the model file's name)")
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N", help="run trials in N worker processes at once: one per GPU, or on the CPU each on its share of the cores; more workers elsewhere can join with `autotune worker` (default: 1, trials one at a time in this process)")
    _add_final_run_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="join a study on a shared storage and run its trials",
        description="Join a study created by `autotune run --storage URL` (waiting while its creator sets it up) "
        "and run trials until the study's budget is spent. The first worker to find no trial running then selects, "
        "writes tuned.yaml, trains and reports into its --out, unless --no-finalize.",
    )
    p.add_argument("model", type=Path, help="the model file: the same file the study was made for")
    _add_study_args(p)
    p.add_argument("--trials", type=_positive_int, default=24, help="the study's budget in measured trials, used only when this worker creates the study (it does where there is none; default: 24)")
    p.add_argument("--space", default="default", help="the search space, used only when this worker creates the study (default: default)")
    p.add_argument("--no-finalize", action="store_true", help="only run trials; leave the selection and the final run to another process or `autotune finalize`")
    p.add_argument("--cpus", type=_cpu_list, metavar="LIST", help="run trials on these CPUs only, e.g. 0-3 or 0,2 (`autotune run --workers` sets it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p = sub.add_parser(
        "finalize",
        help="select, write tuned.yaml, train and report from a study whose trials are done",
        description="What a study's last worker does once the budget is spent, by hand: re-measure the best "
        "few configs side by side, write tuned.yaml, train with it and write the report.",
    )
    p.add_argument("model", type=Path, help="the model file the study was made for")
    _add_study_args(p)
    p.add_argument("--epochs", type=_positive_int, help="epochs of the final run (default: the model file's BASE['epochs'])")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL", required=True, help=STORAGE_HELP)
    p.add_argument("--study", metavar="NAME", help="the study's name in the storage (default: the model file's name)")
    p.add_argument("--out", type=Path, help="run directory for tuned.yaml, the report and the weights (default: runs/<model name>)")


def _cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            cpus += list(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be CPU numbers like 0-3 or 0,2, but got {text!r}") from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"must be CPU numbers like 0-3 or 0,2, but got {text!r}")
    return sorted(set(cpus))


def _add_final_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="go on with the final run from its last checkpoint (OUT/checkpoints/last.pt) instead of starting it afresh; it must use the same config and epochs")
    p.add_argument("--target-accuracy", type=_number(float, 0.0, 1.0, open_low=True), metavar="FRACTION", help="record the final run's time to reach this validation accuracy: wall time from the first training batch, evaluations included")
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="STEPS", help="also save the last checkpoint every STEPS optimizer steps within an epoch (default: every 10 minutes, and at the end of every epoch)")
    p.add_argument("--nproc", type=_positive_int, default=1, metavar="N", help="train on N devices with DistributedDataParallel, started through torchrun: one process per GPU (nccl), or N processes on the CPU (gloo); the tuned micro-batch is per process and the learning rate is scaled to the N times larger batch (default: 1, this process)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model file with a saved tuned.yaml and report",
        description="Train the model with the knobs of a tuned config and write the weights and the report.",
    )
    p.add_argument("model", type=Path, help="the model file")
    p.add_argument("--config", type=Path, required=True, help="a tuned.yaml written by `autotune run`")
    p.add_argument("--out", type=Path, help="output directory (default: runs/<model name>-train)")
    p.add_argument("--epochs", type=_positive_int, help="override the config's epochs")
    _add_final_run_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write report.md and report.html again from a run directory's report.json",
        description="Render the report of a finished run again (Markdown and self-contained HTML with figures) "
        "from RUN_DIR/report.json, without training or tuning.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory written by `autotune run` or `autotune train`")


def _add_export(sub: argparse._SubParsersAction) -> None:
    from autotune.exports import SUFFIX, TARGETS

    p = sub.add_parser(
        "export",
        help="write a tuned.yaml as the config file of Lightning, Hugging Face, Accelerate or DeepSpeed",
        description="Map every knob of a tuned config to the target's own names and write the file it reads: "
        + "; ".join(f"{t} -> {SUFFIX[t]}" for t in TARGETS)
        + ". Knobs the target cannot express are listed in the file's header comment (YAML targets) and "
        "printed as warnings.",
    )
    p.add_argument("tuned", type=Path, help="a tuned.yaml written by `autotune run`")
    p.add_argument("--to", required=True, choices=TARGETS, help="the tool to export for")
    p.add_argument("--out", type=Path, help="the file to write (default: next to the tuned.yaml, named for the target)")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "export":
        from autotune.exports import write_export

        path, result = write_export(args.tuned, args.to, args.out)
        for note in result.notes:
            print(f"autotune: warning: not in the {args.to} file: {note}", file=sys.stderr)
        print(f"wrote {path}")
        return 0
    if args.command == "report":
        from autotune.report import rerender

        for path in rerender(args.run_dir).values():
            print(f"wrote {path}")
        return 0
    if args.command == "compare":
        from autotune.machines.compare import compare_command

        print(compare_command([str(p) for p in args.profiles], args.format), end="")
        return 0
    if args.command == "profile":
        from autotune.hardware import collect_profile

        _check_out_file(args.out, "--out")
        profile = collect_profile(measure=not args.no_bench)
        print(profile.summary())
        from autotune.machines.results import save_profile

        out = args.out or Path("profiles") / f"{profile.fingerprint}.yaml"
        try:
            print(f"wrote {save_profile(out, profile)}")
        except OSError as exc:
            raise AutotuneError(f"Cannot write the profile to {out}: {exc.strerror or exc}.") from exc
        return 0
    from autotune.workflow import pipeline
    from autotune.search import SearchBudget, TrialBudget

    if args.command in ("worker", "finalize"):
        from autotune.workflow import workers

        name = args.study or args.model.stem
        out = args.out or pipeline.default_out(args.model)
        if args.command == "worker":
            create = pipeline.RunOptions(out=out, space=args.space, budget=SearchBudget(n_trials=args.trials), storage=args.storage,
                                         study=name, progress=not args.no_progress, profiles=None)
            workers.work(args.model, args.storage, name, out, finalize=not args.no_finalize, progress=not args.no_progress,
                          cpus=args.cpus, create=create)
        else:
            workers.finalize_study(args.model, args.storage, name, out, progress=not args.no_progress, epochs=args.epochs)
        return 0
    if args.command == "run":
        opts = pipeline.RunOptions(
            out=args.out or pipeline.default_out(args.model),
            space=args.space,
            size_budget=args.trials is None,
            budget=SearchBudget(
                n_trials=args.trials or SearchBudget.n_trials,
                timeout_s=args.timeout,
                max_tuning_share=args.max_tuning_share,
                trial=TrialBudget(memory_limit_bytes=args.memory_limit),
            ),
            memory_limit=args.memory_limit,
            headroom=args.headroom,
            objective=args.objective,
            seed=args.seed,
            epochs=args.epochs,
            progress=not args.no_progress,
            profiles=args.profiles,
            warm_start=not args.no_warm_start,
            final=_final_options(args),
            storage=args.storage,
            study=args.study,
            workers=args.workers,
        )
        pipeline.run(args.model, opts)
        return 0
    out = args.out or Path("runs") / f"{args.model.stem}-train"
    pipeline.train(args.model, args.config, out, epochs=args.epochs, progress=not args.no_progress, final=_final_options(args))
    return 0


def _check_out_file(out: Path | None, option: str) -> None:
    """``out`` (a file to write) must not be a folder: say so before any slow work."""
    if out is None:
        return
    if out.is_dir():
        raise AutotuneError(
            f"{option} {out} is a folder; it must name the YAML file to write.",
            hint=f"Name a file, e.g. {option} {out / 'profile.yaml'}.",
        )
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise AutotuneError(f"{option} {out} cannot be written: {blocker} is a file, not a folder.")


def _final_options(args: argparse.Namespace) -> Any:
    from autotune.workflow.final import FinalOptions

    return FinalOptions(resume=args.resume, target_accuracy=args.target_accuracy, checkpoint_every_steps=args.checkpoint_every,
                        nproc=args.nproc)


def _on_ctrl_c(signum: int, frame: Any) -> None:
    from autotune.search.study import STOP

    STOP.set()
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # not where SIGINT is ignored
        signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        return _main(args)
    finally:
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)


def _main(args: argparse.Namespace) -> int:
    try:
        return _dispatch(args)
    except AutotuneError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"autotune: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        if not args.debug:
            print("(run with --debug for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autotune: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
