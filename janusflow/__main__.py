"""``python -m janusflow``: the same command as ``janusflow``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
