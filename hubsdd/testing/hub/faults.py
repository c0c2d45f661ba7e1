"""Fault injection: make chosen requests fail the way a real Hub sometimes does.

A test queues faults per request *kind* (the route's name: ``commit``, ``lfs_upload``, ...) with
:meth:`HubServer.fail_next`; the request plumbing asks :meth:`FaultQueue.take` for each request and
answers with the fault instead of running the route.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

# The request kinds a fault can target: the names the router gives its routes.
KINDS = ("commit", "preupload", "lfs_batch", "lfs_upload", "lfs_verify", "resolve", "cdn", "repo_info", "tree",
         "paths_info", "refs", "commits", "create_repo", "delete_repo", "settings", "create_tag", "delete_tag",
         "create_branch", "delete_branch", "validate_yaml", "whoami", "oauth_token")


@dataclass
class Fault:
    status: int
    message: str
    remaining: int
    skip: int = 0  # matching requests let through before the fault fires


class FaultQueue:
    """Faults waiting for their request kind, in the order they were queued; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, list[Fault]] = collections.defaultdict(list)

    def add(self, kind: str, fault: Fault) -> None:
        with self._lock:
            self._queues[kind].append(fault)

    def take(self, kind: str) -> Fault | None:
        """The fault this request of ``kind`` must suffer, or None to serve it normally."""
        with self._lock:
            queue = self._queues.get(kind)
            if not queue:
                return None
            fault = queue[0]
            if fault.skip > 0:
                fault.skip -= 1
                return None
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
            return fault
