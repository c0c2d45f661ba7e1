"""HTTP routes of the test Hub, one module per concern, composed by :mod:`.router`."""

from .router import HubRequestHandler

__all__ = ["HubRequestHandler"]
