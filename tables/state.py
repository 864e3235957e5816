"""The Faust tables (declarations only; their logic lives beside them in plain modules).

Every table is partitioned like ``contact-events`` (``DRIPSTREAM_PARTITIONS``) and written
only from the agent step handling that contact, so a contact's state is changed in
order, by one worker, and recovered from its changelog after a restart or rebalance.
Values are plain JSON-able dicts; pydantic stays at the edges.
"""

from __future__ import annotations

from typing import Any

from streams.app import app, settings

__all__ = ["contacts"]

#: ``"<account>:<contact id>"`` → contact state (see :mod:`tables.contacts`).
contacts: Any = app.Table(
    "contacts",
    default=None,
    partitions=settings.partitions,
    help="Contact state by <account>:<contact id>",
)
