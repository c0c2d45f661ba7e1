"""The command line of the test Hub, for the offline demo and for trying a self-hosted endpoint::

    python -m hubsdd.testing.hub --storage DIR --port 8765 --token TOKEN:USER \\
        [--token T2:U2] [--org ORG:USER1,USER2] [--ready-file FILE]

prints the base URL, writes it to ``--ready-file`` once listening, and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from ...core.files import atomic_write_text
from .server import HubServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hubsdd.testing.hub",
                                     description="A Hub-compatible server on 127.0.0.1 for offline demos and tests.")
    parser.add_argument("--storage", required=True, type=Path, help="folder holding the repositories")
    parser.add_argument("--port", type=int, default=0, help="API port (0: a free one)")
    parser.add_argument("--cdn-port", type=int, default=0, help="port serving LFS downloads (0: a free one)")
    parser.add_argument("--token", action="append", default=[], metavar="TOKEN:USER",
                        help="accept this bearer token as USER (repeatable)")
    parser.add_argument("--org", action="append", default=[], metavar="ORG:USER[,USER]",
                        help="let these users write to the ORG namespace (repeatable)")
    parser.add_argument("--ready-file", type=Path, help="write the base URL here once listening")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    tokens, orgs = {}, {}
    for spec in args.token:
        token, sep, user = spec.rpartition(":")
        if not sep or not token or not user:
            parser.error(f"--token expects TOKEN:USER, got {spec!r}")
        tokens[token] = user
    for spec in args.org:
        org, sep, users = spec.partition(":")
        if not sep or not org:
            parser.error(f"--org expects ORG:USER[,USER], got {spec!r}")
        orgs[org] = [u for u in users.split(",") if u]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    server = HubServer(args.storage, tokens, args.port, orgs=orgs, cdn_port=args.cdn_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    url = server.start()
    print(url, flush=True)
    if args.ready_file:
        args.ready_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.ready_file, url + "\n")  # atomic: a waiting script never reads half
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)
    return 0
