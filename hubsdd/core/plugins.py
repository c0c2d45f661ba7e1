"""Extension points: named implementations a recipe picks by name, built in or added by another
package through an entry-point group, the way mergekit's merge methods and lm-eval's tasks work.

A third-party package declares, in its ``pyproject.toml``::

    [project.entry-points."hubsdd.block_scorers"]
    my-scorer = "my_package.scoring:score"

and ``prune.method: my-scorer`` picks it once the package is installed. Built-ins are named by
``"module:attribute"`` strings and imported only when picked, so listing the names (``hubsdd
validate``) imports nothing heavy. A registry is one line here; a new extension point is another
:class:`Registry`.
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata
from typing import Any

log = logging.getLogger("hubsdd.plugins")


class Registry:
    """Implementations of one kind: ``builtins`` (name -> ``"module:attribute"``) and whatever the
    entry-point ``group`` of the installed distributions adds. A built-in name cannot be taken over."""

    def __init__(self, group: str, kind: str, builtins: dict[str, str]) -> None:
        self.group = group
        self.kind = kind
        self.builtins = dict(builtins)

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        # Read each time: a package installed (or put on sys.path) since the last call counts.
        found = {}
        for ep in metadata.entry_points(group=self.group):
            if ep.name in self.builtins:
                log.warning("%s %r from %s ignored: a built-in has that name", self.kind, ep.name, ep.value)
            else:
                found.setdefault(ep.name, ep)
        return found

    def names(self) -> list[str]:
        """Every name a recipe may use: the built-ins, then the installed plug-ins, sorted."""
        return list(self.builtins) + sorted(self._entry_points())

    def check(self, name: str) -> str:
        """``name`` if it is available, else a ValueError naming the available ones (a recipe
        validator raises it, so the message carries the YAML path and line)."""
        if name in self.builtins or name in self._entry_points():
            return name
        raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())} (more come from "
                         f"packages declaring the entry-point group {self.group!r})")

    def load(self, name: str) -> Any:
        """The implementation ``name`` names (imported now)."""
        if name in self.builtins:
            module, _, attr = self.builtins[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        eps = self._entry_points()
        if name not in eps:
            self.check(name)
        return eps[name].load()


BLOCK_SCORERS = Registry("hubsdd.block_scorers", "block scorer", {
    "angular": "hubsdd.stages.prune.scorers.angular:score",
    "bi": "hubsdd.stages.prune.scorers.block_influence:score",
    "perplexity": "hubsdd.stages.prune.scorers.perplexity:score",
})
"""Block scorers for the prune stage (``prune.method``): see :mod:`hubsdd.stages.prune.scorers`."""

RECOVERY_LOSSES = Registry("hubsdd.recovery_losses", "recovery loss", {
    "ce": "hubsdd.stages.finetune.losses.ce:plan",
    "kd": "hubsdd.stages.finetune.losses.kd:plan",
    "gkd": "hubsdd.stages.finetune.losses.gkd:plan",
})
"""Recovery losses for the finetune stage (``finetune.variants.<name>.loss``): see
:mod:`hubsdd.stages.finetune.losses`."""
