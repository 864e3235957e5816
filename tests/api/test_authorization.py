"""One table: every route, every role, own and other account, and no key."""

from __future__ import annotations

import re

import pytest

from api.auth import ROLES
from tests.api.conftest import Api

pytestmark = [pytest.mark.integration, pytest.mark.surface]

READ = {"viewer", "editor", "operator", "admin"}
EDIT = {"editor", "admin"}
OPERATE = {"operator", "admin"}
INGEST = {"ingest", "admin"}
ADMIN = {"admin"}
A = "/v1/accounts/{account}"

#: (method, path) → the roles allowed. Every /v1 route must be here (checked below).
ALLOWED: dict[tuple[str, str], set[str]] = {
    **{(m, f"{A}/{plural}{tail}"): roles
       for plural in ("workflows", "keywords", "campaigns")
       for m, tail, roles in (
           ("POST", "", EDIT), ("GET", "", READ), ("GET", "/{def_id}", READ),
           ("GET", "/{def_id}/versions", READ), ("GET", "/{def_id}/versions/{version}", READ),
           ("PUT", "/{def_id}", EDIT), ("DELETE", "/{def_id}", EDIT))},
    ("GET", f"{A}/policy"): READ,
    ("GET", f"{A}/policy/versions"): READ,
    ("PUT", f"{A}/policy"): EDIT,
    ("GET", f"{A}/campaigns/{{campaign_id}}/progress"): READ,
    ("GET", f"{A}/campaigns/{{campaign_id}}/preview"): READ,
    ("GET", f"{A}/campaigns/{{campaign_id}}/report"): READ,
    ("GET", f"{A}/holdout"): READ,
    ("POST", f"{A}/campaigns/{{campaign_id}}/{{action}}"): OPERATE,
    ("GET", f"{A}/contacts"): READ,
    ("GET", f"{A}/contacts/{{contact_id}}"): READ,
    ("PUT", f"{A}/contacts/{{contact_id}}/caps"): OPERATE,
    ("DELETE", f"{A}/contacts/{{contact_id}}/caps"): OPERATE,
    ("PUT", f"{A}/contacts/{{contact_id}}/preferences"): OPERATE,
    ("GET", f"{A}/contacts/{{contact_id}}/executions"): READ,
    ("GET", f"{A}/contacts/{{contact_id}}/executions/{{execution_id}}"): READ,
    ("POST", f"{A}/contacts/{{contact_id}}/executions/{{execution_id}}/{{action}}"): OPERATE,
    ("POST", f"{A}/workflows/{{workflow_id}}/cancel-all"): OPERATE,
    ("POST", f"{A}/events"): INGEST,
    ("POST", f"{A}/keys"): ADMIN,
    ("GET", f"{A}/keys"): ADMIN,
    ("DELETE", f"{A}/keys/{{key_id}}"): ADMIN,
    ("POST", f"{A}/suppressions"): OPERATE,
    ("GET", f"{A}/suppressions"): READ,
    ("GET", f"{A}/suppressions/{{address}}"): READ,
    ("DELETE", f"{A}/suppressions/{{address}}"): OPERATE,
    ("GET", f"{A}/workflows/{{workflow_id}}/executions"): READ,
    ("GET", f"{A}/workflows/{{workflow_id}}/counts"): READ,
    ("GET", f"{A}/audit"): READ,
    ("GET", f"{A}/dead-letters"): READ,
    ("GET", f"{A}/stats"): READ,
    ("POST", f"{A}/simulations"): READ,
    ("GET", f"{A}/shadow"): READ,
    ("GET", f"{A}/workflows/{{workflow_id}}/report"): READ,
}
VALUES = {"def_id": "x", "version": "1", "campaign_id": "x", "action": "pause",
          "contact_id": "c-1", "execution_id": "e-1", "workflow_id": "w", "key_id": "abc",
          "address": "+14155550101"}


def _url(path: str, account: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: account if m[1] == "account" else VALUES[m[1]],
                  path)


async def test_authorization_matrix(api: Api) -> None:
    """No key → 401; another account → 404 (any role, nothing of it shown); a role not
    allowed → 403; an allowed role is never refused."""
    routes = {(m.upper(), path) for path, ops in api.app.openapi()["paths"].items()
              for m in ops}
    assert routes == set(ALLOWED), "a route is missing from the table (or gone)"
    keys = {role: await api.key("acme", role) for role in ROLES}
    failures = []
    for (method, path), allowed in sorted(ALLOWED.items()):
        body = {} if method in ("POST", "PUT") else None
        r = await api.client.request(method, _url(path, "acme"), json=body)
        if r.status_code != 401:
            failures.append((method, path, "no key", r.status_code))
        for role in ROLES:
            headers = keys[role]
            other = await api.client.request(method, _url(path, "other"), json=body,
                                             headers=headers)
            if other.status_code != 404 or other.json()["detail"] != "not found":
                failures.append((method, path, role, "other account", other.status_code))
            own = await api.client.request(method, _url(path, "acme"), json=body,
                                           headers=headers)
            expected_refused = role not in allowed
            if expected_refused and own.status_code != 403:
                failures.append((method, path, role, "should be 403", own.status_code))
            if not expected_refused and own.status_code in (401, 403, 500):
                failures.append((method, path, role, "allowed, got", own.status_code))
            assert own.headers["content-type"].startswith("application/")
    assert failures == []
