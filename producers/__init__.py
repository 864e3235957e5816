"""The edges other people run: the publisher SDK for upstream systems (``publisher``), the
channel-worker SDK (``channel``) and its reference providers (``providers``), and the
admin helpers (``admin``)."""
