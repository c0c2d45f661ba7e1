"""The ``hubsdd`` command (and ``hf sdd``): :mod:`.app` is the typer app; :mod:`.console`,
:mod:`.progress_lines` and :mod:`.report` print; :mod:`.scaffold` writes a release project.

``python -m hubsdd.cli`` runs it; the console scripts call :func:`_entry`.
"""

from .app import _entry, app, main

__all__ = ["_entry", "app", "main"]
