"""``python -m lmgen.cli`` is the ``lmgen`` command too."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
