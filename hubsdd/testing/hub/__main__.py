"""``python -m hubsdd.testing.hub``: see :mod:`hubsdd.testing.hub.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
