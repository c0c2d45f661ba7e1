"""``python -m hubsdd.cli``."""

from .app import _entry

if __name__ == "__main__":
    _entry()
