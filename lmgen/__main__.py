"""``python -m lmgen`` is the ``lmgen`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
