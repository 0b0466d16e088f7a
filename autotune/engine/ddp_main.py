"""One rank of a final run under torchrun; started by ``engine.distributed.launch``.

    python -m torch.distributed.run --standalone --nproc_per_node N \\
        -m autotune.engine.ddp_main --model M --config OUT/final_config.json --out OUT

Every rank loads the model file and the config, joins the group and trains its share
(``final.run_rank``); rank 0 writes the weights, the checkpoints and OUT/final_result.pt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from autotune.config import TrainConfig
from autotune.engine import distributed
from autotune.errors import AutotuneError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autotune.engine.ddp_main", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True, help="final_config.json written by the launcher")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from autotune.workflow.final import RESULT_FILE, FinalOptions, run_rank, save_result
    from autotune.model.task import load_task

    d = distributed.from_env()
    finished = False
    try:
        saved = json.loads(args.config.read_text())
        cfg = TrainConfig.from_dict(saved["config"], source=str(args.config))
        final = FinalOptions(**saved["final"])
        task = load_task(args.model)
        device = distributed.join(d)
        result = run_rank(task, cfg, args.out, not args.no_progress, print, final, d, device)
        if d.main:
            save_result(result, args.out / RESULT_FILE)
        finished = True
    except AutotuneError as exc:
        print(f"autotune (rank {d.rank}): error: {exc}", file=sys.stderr)
        return 1
    finally:
        distributed.leave(finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
