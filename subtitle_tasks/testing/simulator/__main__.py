"""``python -m subtitle_tasks.testing.simulator``: the same as ``subtitle-tasks simulate``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
