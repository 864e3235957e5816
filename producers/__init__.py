"""The edges other people run: the publisher SDK for upstream systems (and, later, the
channel-worker SDK)."""
