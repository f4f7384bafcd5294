"""``python -m training.core …`` is the same as ``python -m training.core.cli …``."""

import sys

from training.core.cli import main

if __name__ == "__main__":
    sys.exit(main())
