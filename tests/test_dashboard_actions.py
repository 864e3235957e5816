"""Which buttons the dashboard shows for a campaign's status (api/dashboard.py)."""

from __future__ import annotations

import pytest

from api.dashboard import campaign_actions, campaign_status


@pytest.mark.parametrize(("status", "active", "actions"), [
    ("running", True, ["pause", "cancel"]),
    ("paused", True, ["resume", "cancel"]),
    ("completed", True, []),  # nothing left to run (the buttons paused a finished one)
    ("cancelled", True, []),  # final
    ("running", False, []),  # deleted or deactivated: inactive
    ("cancelled", False, []),
])
def test_buttons_fit_the_campaigns_status(status: str, active: bool,
                                          actions: list[str]) -> None:
    assert campaign_actions(campaign_status(status, active)) == actions
