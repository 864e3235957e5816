"""Faust agents: thin loops that decode, call the pure handlers in ``tables``, and emit.

:func:`agents.worker.build` makes the app and installs every agent, task and timer on it.
"""
