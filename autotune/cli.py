"""The command line: ``autotune run | train | profile``.

Every error a user can cause is an ``AutotuneError``; it is caught once here, printed as
one line (plus a hint), and the exit status is 1. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Sequence

from autotune.errors import AutotuneError

EPILOG = """\
examples:
  autotune run examples/digits_cnn.py --trials 8
  autotune train examples/digits_cnn.py --config runs/digits_cnn/tuned.yaml --out runs/again
  autotune profile
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, but got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, but got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), but got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, but got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, but got {value}")
    return value


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
    _add_train(sub)
    p = sub.add_parser("profile", help="profile this machine and print a summary")
    p.add_argument("--out", type=Path, help="also write the profile as YAML to this file")
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
    p.add_argument("--trials", type=_positive_int, default=12, help="trials the study should hold in all, counting earlier runs (default: 12)")
    p.add_argument("--timeout", type=_positive_float, help="start no new trial after this many seconds of search")
    p.add_argument("--space", default="default", help="a built-in search space name or a YAML file (default: default)")
    p.add_argument("--epochs", type=_positive_int, help="epochs of the final run (default: the model file's BASE['epochs'])")
    p.add_argument("--seed", type=_seed, help="seed for the sampler and the training runs (default: BASE['seed'])")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "profile":
        from autotune.hardware import collect_profile

        profile = collect_profile(measure=not args.no_bench)
        print(profile.summary())
        if args.out:
            print(f"wrote {profile.save(args.out)}")
        return 0
    from autotune import pipeline
    from autotune.search import SearchBudget

    if args.command == "run":
        opts = pipeline.RunOptions(
            out=args.out or pipeline.default_out(args.model),
            space=args.space,
            budget=SearchBudget(n_trials=args.trials, timeout_s=args.timeout),
            seed=args.seed,
            epochs=args.epochs,
            progress=not args.no_progress,
        )
        pipeline.run(args.model, opts)
        return 0
    out = args.out or Path("runs") / f"{args.model.stem}-train"
    pipeline.train(args.model, args.config, out, epochs=args.epochs, progress=not args.no_progress)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
