"""Run autotune from a checkout without installing it: ``python cli.py run model.py``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from autotune.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
