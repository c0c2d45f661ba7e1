"""Fault injection: make chosen requests fail the way a real Hub, or the network to it, sometimes does.

A test queues faults per request *kind* (the route's name: ``commit``, ``lfs_upload``, ...) through
:class:`~hubsdd.testing.hub.HubServer` (``fail_next``, ``drop_next``, ``slow_next``); the request
plumbing takes the next fault of the request's kind and acts it out. Three behaviours, each at a
chosen *moment* of the request:

``status``  answer with an error status (and ``Retry-After`` if set) instead of the route's answer.
            ``before``: the request never takes effect. ``after``: the route ran (a commit is made,
            an object stored) and its answer is replaced by the error, as when a server fails
            after doing the work.
``drop``    close the connection without any answer. ``mid_body``: after ``at_byte`` bytes of the
            request body (default half of it; at once when there is no body), so the request never
            takes effect. ``after``: the route ran and the answer is lost.
``slow``    wait ``seconds`` (a client with a shorter timeout gives up). ``before``: the server
            waits, then handles the request anyway (a commit lands after the client gave up).
            ``after``: it handles the request, then holds the answer back.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

# The request kinds a fault can target: the names the router gives its routes.
KINDS = ("commit", "preupload", "lfs_batch", "lfs_upload", "lfs_verify", "resolve", "cdn", "repo_info", "tree",
         "paths_info", "refs", "commits", "create_repo", "delete_repo", "settings", "create_tag", "delete_tag",
         "create_branch", "delete_branch", "validate_yaml", "whoami", "oauth_token")
MOMENTS = {"status": ("before", "after"), "drop": ("mid_body", "after"), "slow": ("before", "after")}


class ConnectionDropped(Exception):
    """Raised inside a request to cut its connection without an answer."""


@dataclass
class Fault:
    status: int = 500
    message: str = "injected fault"
    remaining: int = 1  # requests it still hits
    skip: int = 0  # matching requests let through before the fault fires
    behaviour: str = "status"  # status | drop | slow (see the module docstring)
    when: str = "before"  # the moment, one of MOMENTS[behaviour]
    retry_after: int | None = None  # seconds, sent as Retry-After with a status answer
    at_byte: int | None = None  # drop mid_body: bytes of the request body read before the cut
    seconds: float = 0.0  # slow: how long the server waits

    def __post_init__(self) -> None:
        if self.behaviour not in MOMENTS:
            raise ValueError(f"unknown fault behaviour {self.behaviour!r}: one of {sorted(MOMENTS)}")
        if self.when not in MOMENTS[self.behaviour]:
            raise ValueError(f"a {self.behaviour} fault happens {' or '.join(MOMENTS[self.behaviour])}, "
                             f"not {self.when!r}")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class FaultQueue:
    """Faults waiting for their request kind, in the order they were queued; thread-safe.

    ``fired`` counts, per kind, the requests a fault actually hit, so a test can tell a fault that
    was survived from one that never happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, list[Fault]] = collections.defaultdict(list)
        self.fired: collections.Counter[str] = collections.Counter()

    def add(self, kind: str, fault: Fault) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}: one of {', '.join(KINDS)}")
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
            self.fired[kind] += 1
            return fault

    def pending(self) -> dict[str, int]:
        """Requests per kind that queued faults will still hit."""
        with self._lock:
            return {k: sum(f.remaining for f in q) for k, q in self._queues.items() if q}

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()
