"""Payloads dripstream writes or reads besides contact events (the pydantic edge).

- :class:`SendCommand` on ``<prefix>send.<channel>``: the channel-worker contract.
- :class:`Control` on ``<prefix>control``: pause / resume / cancel an execution, or cancel
  every execution of a workflow.
- :class:`AuditRecord` on ``<prefix>audit``: every send that did not go out, and every
  trigger the loop guard stopped.
- wake-ups on ``<prefix>wakeups`` are internal (``{"account", "contact_id"}``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from streams.events import ACCOUNT_PATTERN

__all__ = ["APPLIES_TO", "AuditRecord", "Control", "Origin", "SendCommand"]

#: The execution statuses each per-execution command changes (any other: nothing); the
#: CLI and the admin API refuse a command that would change nothing.
APPLIES_TO = {"pause": ("waiting",), "resume": ("paused",),
              "cancel": ("running", "waiting", "paused")}


class Origin(BaseModel):
    """What produced a send: a workflow step, an inbound keyword, or a content campaign
    (``campaign_id``; ``workflow_id`` ``campaign:<id>``, the one-step workflow it runs as)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Literal["workflow", "keyword", "campaign"]
    campaign_id: str | None = None
    workflow_id: str | None = None
    version: int | None = None
    execution_id: str | None = None
    step_id: str | None = None
    keyword: str | None = None
    event_id: str | None = None
    depth: int | None = Field(
        None, ge=0, description="causation depth of what sent it; reports carry depth + 1")


class SendCommand(BaseModel):
    """One message for a channel worker to deliver, once, to the provider."""

    model_config = ConfigDict(extra="allow", frozen=True)

    message_id: str = Field(description="deterministic: a re-emitted send has the same id")
    channel: Literal["sms", "mms", "email"]
    account: str
    contact_id: str
    to: str = Field(description="E.164 phone (sms, mms) or email address")
    body: str
    subject: str | None = Field(None, description="email only")
    media_urls: list[str] | None = Field(None, description="mms only")
    transactional: bool = False
    purpose: Literal[
        "opt_out_confirmation", "opt_in_confirmation", "help", "keyword_reply"
    ] | None = Field(None, description="keyword replies only")
    reply_from: str | None = Field(None, description="keyword replies: the number written to")
    variant: str | None = Field(
        None, description="the experiment arm: the branch a split chose (docs/experiments.md)")
    category: str | None = Field(
        None, description="the message category (docs/preferences.md)")
    origin: Origin
    created_at: AwareDatetime
    expires_at: AwareDatetime = Field(description="do not deliver after this")


class Control(BaseModel):
    """An operator's command; per-execution ones are keyed by contact id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["pause", "resume", "cancel", "cancel_all"]
    account: str = Field(pattern=ACCOUNT_PATTERN)
    contact_id: str | None = None
    execution_id: str | None = None
    workflow_id: str | None = Field(None, description="cancel_all only")

    def model_post_init(self, __context: Any) -> None:
        if self.action == "cancel_all":
            if not self.workflow_id:
                raise ValueError("cancel_all needs workflow_id")
        elif not (self.contact_id and self.execution_id):
            raise ValueError(f"{self.action} needs contact_id and execution_id")


class AuditRecord(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    account: str
    contact_id: str
    reason: str
    at: AwareDatetime
    message_id: str | None = None
