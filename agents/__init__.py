"""Faust agents: thin loops that decode, call plain logic in ``tables``, and emit.

Importing this package registers every agent with :data:`streams.app.app`.
"""

from agents import ingest

__all__ = ["ingest"]
