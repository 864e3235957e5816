"""Faust agents: thin loops that decode, call plain logic in ``tables``, and emit.

Importing this package registers every agent, task and timer with :data:`streams.app.app`.
"""

from agents import contacts, timers

__all__ = ["contacts", "timers"]
