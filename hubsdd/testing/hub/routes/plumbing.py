"""The request plumbing every route relies on: bodies, answers, errors, and the dispatch loop.

One handler object serves one keep-alive connection (the client pools connections), so each
request's state is reset in :meth:`RequestPlumbing._dispatch` and each request body is read exactly
once, even when the route or a fault never looks at it.
"""

from __future__ import annotations

import json
import logging
import socket
import traceback
import uuid
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from ..faults import ConnectionDropped, Fault
from ..protocol import HubHTTPError, header_value

if TYPE_CHECKING:
    from ..storage import HubStorage

log = logging.getLogger("hubsdd.testing.hub")


class RequestPlumbing(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections
    server_version = "hubsdd-hub-server/1.0"
    server: Any  # the HubHTTPServer (.server imports the routes, so they do not import it)

    # Set per request by _dispatch, and by the route table's match for the path's parts.
    query: dict[str, str]
    segments: list[str]
    scope: str | None
    repo_type: str
    repo_id: str
    rev: str | None
    file_path: str
    ref_name: str
    oid: str

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: tests read logs only on failure
        log.debug("%s %s", self.address_string(), fmt % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def hub(self) -> Any:
        """The :class:`~hubsdd.testing.hub.server.HubServer`: tokens, faults, counters, signing."""
        return self.server.hub

    @property
    def storage(self) -> "HubStorage":
        return self.server.hub.storage

    # -- routing, provided by the route table (.router)

    def _route(self, method: str) -> tuple[str, Callable[[], None]]:
        raise NotImplementedError

    def _cdn(self) -> None:
        raise NotImplementedError

    # -- bodies

    def _iter_body(self) -> Iterator[bytes]:
        """The request body, chunked or with Content-Length, read from the socket exactly once.

        Every request must have its body consumed before the answer, or the next request on the
        same keep-alive connection would start in the middle of it."""
        if self._cached_body is not None:
            yield self._cached_body
            return
        if self._body_consumed:
            return
        self._body_consumed = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    chunk = self._read_body(min(remaining, 1 << 20))
                    if not chunk:
                        raise HubHTTPError(400, "truncated chunked body")
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self._read_body(min(remaining, 1 << 20))
                if not chunk:
                    raise HubHTTPError(400, "truncated body")
                remaining -= len(chunk)
                yield chunk

    def _read_body(self, n: int) -> bytes:
        """Up to ``n`` bytes of the body; a ``drop mid_body`` fault cuts the connection at its byte."""
        if self._drop_at is not None:
            if self._body_read >= self._drop_at:
                raise ConnectionDropped
            n = min(n, self._drop_at - self._body_read)
        data = self.rfile.read(n)
        self._body_read += len(data)
        return data

    def _body(self) -> bytes:
        if self._cached_body is None:
            self._cached_body = b"".join(self._iter_body())
        return self._cached_body

    def _json_body(self) -> Any:
        raw = self._body()
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError:
            raise HubHTTPError(400, "request body is not valid JSON") from None

    # -- answers

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self._answer_gate()
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", content_type)
        headers.setdefault("Content-Length", str(len(body)))
        headers.setdefault("X-Request-Id", self._request_id)
        for k, v in headers.items():
            self.send_header(k, header_value(v))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _json(self, obj: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: HubHTTPError) -> None:
        headers = dict(err.headers)
        # Header values must be latin-1 and single-line; the JSON body keeps the full message.
        headers["X-Error-Message"] = err.message
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json({"error": err.message}, err.status, headers)

    # -- faults

    def _start_fault(self, fault: Fault) -> None:
        """Act out the part of a fault that comes before the route runs."""
        if fault.behaviour == "slow" and fault.when == "before":
            self._wait(fault.seconds)
        elif fault.behaviour == "status" and fault.when == "before":
            raise HubHTTPError(fault.status, fault.message, headers=fault.headers())  # the body is drained below
        elif fault.behaviour == "drop" and fault.when == "mid_body":
            length = self.headers.get("Content-Length")
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            if not chunked and not int(length or 0):
                raise ConnectionDropped  # nothing to cut in the middle of
            default = max(1, int(length) // 2) if length and not chunked else 1
            self._drop_at = fault.at_byte if fault.at_byte is not None else default
            self._fault = fault  # a route that answers without reading the body is cut at its answer
        else:
            self._fault = fault  # acted out by _answer_gate, once the route has run

    def _answer_gate(self) -> None:
        """Called before any answer is written: acts out a fault's ``after`` moment."""
        fault, self._fault = self._fault, None
        if fault is None:
            return
        if fault.behaviour == "drop":
            raise ConnectionDropped
        if fault.behaviour == "slow":
            self._wait(fault.seconds)
        elif fault.behaviour == "status":
            raise HubHTTPError(fault.status, fault.message, headers=fault.headers())

    def _wait(self, seconds: float) -> None:
        if self.hub._stopping.wait(seconds):
            raise ConnectionDropped  # the server is stopping: do not hold its shutdown

    def _cut(self) -> None:
        """Close the connection at once, without an answer (what a dropped connection looks like)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- dispatch

    def _dispatch(self, method: str) -> None:
        self._body_consumed = False
        self.scope = None  # set by _user() for a trusted-publishing token
        self._cached_body: bytes | None = None
        self._status = 0
        self._fault: Fault | None = None  # a fault whose moment is still to come
        self._drop_at: int | None = None
        self._body_read = 0
        self._request_id = uuid.uuid4().hex[:16]
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        # Split on '/' BEFORE unquoting: the client quotes revisions with safe="" (refs%2Fpr%2F1).
        self.segments = [unquote(s) for s in split.path.split("/")[1:]]
        kind = "unknown"
        self.hub._enter()
        try:
            if self.server.role == "cdn":
                kind, handler = "cdn", self._cdn
            else:
                kind, handler = self._route(method)
            self.hub._count(kind)
            fault = self.hub.faults.take(kind)
            if fault is not None:
                self._start_fault(fault)
            handler()
            for _ in self._iter_body():  # a handler that ignored the body must not desync keep-alive
                pass
        except ConnectionDropped:
            self._cut()
        except HubHTTPError as err:
            answer = True
            try:
                for _ in self._iter_body():  # drain whatever the handler did not read
                    pass
            except ConnectionDropped:
                answer = False
                self._cut()
            except Exception:  # noqa: BLE001 - the connection is closed below anyway
                self.close_connection = True
            if answer:
                try:
                    self._answer_gate()  # a fault's "after" moment applies to an error answer too
                except HubHTTPError as replaced:
                    err = replaced
                except ConnectionDropped:
                    answer = False
                    self._cut()
            if answer:
                self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug here must reach the client as a 500, not hang it
            log.error("hub server error on %s %s:\n%s", method, self.path, traceback.format_exc())
            self.close_connection = True
            self._fault = None
            try:
                self._error(HubHTTPError(500, f"internal server error: {exc}"))
            except OSError:
                pass
        finally:
            self.hub._record(method, split.path, kind, self._status)
            self.hub._leave()
