"""A Hugging Face Hub-compatible HTTP server for tests and the offline demo.

No installable server implements the Hub's *write* API, and this project has no network, so the push
and pull paths are exercised against this server with the **unmodified** ``huggingface_hub`` client::

    HF_ENDPOINT=http://127.0.0.1:PORT HF_HUB_DISABLE_XET=1 python ...

``HF_HUB_DISABLE_XET=1`` makes the client use the classic protocol this server speaks:
``preupload`` (regular vs LFS, and the remote oid so unchanged files are skipped) -> LFS batch API
(upload + verify actions) -> one NDJSON ``commit``. Downloads use ``/resolve`` with the headers the
client relies on (``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``, ``X-Linked-Size``, ranges) and the
``X-Error-Code`` values it turns into typed exceptions.

Where each concern lives:

:mod:`.server`      :class:`HubServer`, the Python API tests use (start/stop, inspection, fault injection)
:mod:`.storage`     repositories with real history on disk: blobs, LFS objects, commits, refs
:mod:`.routes`      the HTTP routes, one module per concern, composed by :mod:`.routes.router`
:mod:`.validation`  card metadata checks (``/api/validate-yaml``)
:mod:`.faults`      injected failures
:mod:`.oidc`        trusted publishing (the OIDC token exchange)
:mod:`.protocol`    names, limits and error answers shared by storage and routes
:mod:`.cli`         ``python -m hubsdd.testing.hub`` for the demo script
"""

from .faults import Fault
from .protocol import HubHTTPError
from .server import HubServer
from .storage import CommitRecord, HubStorage
from .validation import validate_card_metadata

__all__ = ["CommitRecord", "Fault", "HubHTTPError", "HubServer", "HubStorage", "validate_card_metadata"]
