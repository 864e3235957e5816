"""``POST /v1/accounts/{account}/simulations`` against real PostgreSQL, Redis and a broker,
after real traffic through a worker (``tests/integration/test_simulation.py``'s)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from api.app import create_app
from tables.simulation import CandidateError, Candidates
from tests.api.conftest import Api, Databases, api_settings
from tests.integration.test_dashboard import served
from tests.integration.test_simulation import WELCOME, assert_faithful, traffic
from tests.stack import Stack, eventually

pytestmark = [pytest.mark.integration, pytest.mark.surface]

URL = "/v1/accounts/acme/simulations"
PROBLEM = "application/problem+json"
SINCE = "2026-03-01T00:00:00Z"
UNTIL = "2026-03-02T00:00:00Z"
#: welcome's hello step names a next step it does not have.
BROKEN = {**WELCOME, "steps": {"hello": {"kind": "send_sms", "body": "Hi", "next": "gone"}}}


def candidate_error(definition: dict[str, Any]) -> str:
    """The simulator's own message for a candidate it refuses."""
    try:
        Candidates().add(definition)
    except CandidateError as exc:
        return str(exc)
    raise AssertionError(f"{definition} was taken")


async def test_the_route_reports_what_the_worker_did_and_what_candidates_would(
        api: Api) -> None:
    """Without candidates the summary is the worker's own (same sends, same times, same
    non-sends); with a candidate welcome its sends replace v1's; lines are cut at
    ``lines``; nothing is published."""
    since = await traffic(api.stack)
    viewer = await api.key("acme", "viewer")
    asked = api.stack.now()
    r = await api.client.post(URL, json={"since": since}, headers=viewer)
    assert r.status_code == 200, r.text
    answered = api.stack.now()
    answer = r.json()
    summary = answer["summary"]
    assert_faithful(summary)
    assert summary["accounts"] == ["acme"] and summary["candidates"] == []
    assert summary["not_sent"] == {"frequency_capped": 3, "suppressed": 1}
    # until left out: the API's now (its clock, the workers' here: days ahead of the wall's)
    assert asked <= datetime.fromisoformat(summary["until"]) <= answered
    sends = [line for line in answer["lines"] if line["kind"] == "send"]
    assert {line["diff"] for line in sends} == {"both"}
    assert len(sends) == summary["sends"]
    assert sorted(line["reason"] for line in answer["lines"] if line["kind"] == "not_sent"
                  ) == ["frequency_capped"] * 3 + ["suppressed"]
    assert answer["truncated"] is False

    before = {s: len(await api.stack.read_all(s)) for s in ("send.sms", "audit", "definitions")}
    welcome = {**WELCOME, "version": 2,
               "steps": {"hello": {"kind": "send_sms", "body": "Welcome aboard"}}}
    del welcome["account"]  # taken from the URL
    r = await api.client.post(URL, headers=viewer, json={
        "definitions": [welcome], "since": since, "until": summary["until"], "lines": 2})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["summary"]["candidates"] == ["acme/welcome"]
    # v2 sends the welcome (same execution and step, so the same ids) and stops: v1's
    # nudge (ann) and thanks (cat) went out and the simulation does not make them.
    assert answer["summary"]["only_actual"] == 2, answer["summary"]
    assert answer["summary"]["only_simulated"] == 0, answer["summary"]
    assert len(answer["lines"]) == 2 and answer["truncated"] is True
    after = {s: len(await api.stack.read_all(s)) for s in before}
    assert after == before


@pytest.mark.parametrize(("body", "status", "detail", "loc"), [
    # a candidate of another account, after a valid one: its index named
    ({"definitions": [WELCOME, {**WELCOME, "account": "other"}]}, 422,
     "definitions[1]: account 'other' is not 'acme'", ["body", "definitions", 1, "account"]),
    # invalid: the simulator's own message, and where in the definition
    ({"definitions": [BROKEN]}, 422, f"definitions[0]: {candidate_error(BROKEN)}",
     ["body", "definitions", 0, "steps", "hello", "next"]),
    # a campaign is not simulated yet: said so
    ({"definitions": [{"kind": "campaign", "id": "spring", "account": "acme", "version": 1,
                       "name": "Spring", "content": {"channel": "sms", "body": "Sale!"},
                       "schedule": {"type": "once", "at": "2030-03-01T10:00"}}]}, 422,
     "campaigns are not", ["body", "definitions", 0]),
    # an empty window, and a backwards one
    ({"until": SINCE}, 422, "is not before until", ["body", "since"]),
    ({"since": UNTIL, "until": SINCE}, 422, "is not before until", ["body", "since"]),
    # the log ends now: a window into the future would simulate what is not recorded yet
    ({"until": "2099-01-01T00:00:00Z"}, 422, "is after now", ["body", "until"]),
    # a time without its offset is ambiguous
    ({"since": "2026-03-01T00:00:00"}, 422, "the request is invalid", ["body", "since"]),
    ({"since": 1772323200}, 422, "the request is invalid", ["body", "since"]),
    ({"definitions": [7]}, 422, "the request is invalid", ["body", "definitions", 0]),
    ({"lines": 10_001}, 422, "the request is invalid", ["body", "lines"]),
])
async def test_a_request_the_lab_cannot_run_is_422_saying_why(
        api: Api, body: dict[str, Any], status: int, detail: str, loc: list[Any]) -> None:
    """Refused before anything is read, with the reason and where it is."""
    r = await api.client.post(URL, json={"since": SINCE, "until": UNTIL, **body},
                              headers=await api.key("acme", "viewer"))
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    assert detail in r.json()["detail"], r.json()
    assert loc in [e["loc"] for e in r.json()["errors"]], r.json()


async def test_only_the_accounts_readers_may_run_it(api: Api) -> None:
    """Another account's keys (any role) get the 404 of an account that does not exist;
    an ingest key of the account a 403; no key a 401 (a viewer runs it: above)."""
    body = {"since": SINCE, "until": UNTIL}
    for role in ("viewer", "admin"):
        r = await api.client.post(URL, json=body, headers=await api.key("other", role))
        assert (r.status_code, r.json()["detail"]) == (404, "not found"), r.text
    r = await api.client.post(URL, json=body, headers=await api.key("acme", "ingest"))
    assert r.status_code == 403, r.text
    assert (await api.client.post(URL, json=body)).status_code == 401


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A local port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_a_broker_out_of_reach_is_503(api: Api, refusing_port: int) -> None:
    """The log cannot be read: 503, and the API goes on answering."""
    svc, viewer = api.services, await api.key("acme", "viewer")
    live = svc.settings
    svc.settings = live.model_copy(update={"broker": f"kafka://127.0.0.1:{refusing_port}"})
    try:
        r = await api.client.post(URL, json={"since": SINCE, "until": UNTIL}, headers=viewer)
    finally:
        svc.settings = live
    assert r.status_code == 503, r.text
    assert r.json()["detail"] == "the recorded log could not be read (is the broker up?)"
    r = await api.client.get("/v1/accounts/acme/contacts", headers=api.boot)
    assert r.status_code == 200, r.text


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port that takes connections and never answers (a broker that hangs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_client_that_goes_away_stops_its_simulation(
        stack: Stack, databases: Databases, silent_port: int,
        caplog: pytest.LogCaptureFixture) -> None:
    """Over real HTTP: a client that gives up stops its simulation, whether it was waiting
    for its turn or running (here, stuck on a broker that never answers), and frees the
    next one's turn."""
    caplog.set_level(logging.INFO, logger="api.routes.simulations")
    settings = api_settings(databases.new())
    assert settings.bootstrap_key is not None
    boot = {"Authorization": f"Bearer {settings.bootstrap_key.get_secret_value()}"}
    app = create_app(stack.settings, settings, clock=stack.now)
    body = {"since": SINCE, "until": UNTIL}

    def stopped(how: str) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            return f"simulation for acme stopped {how}" in caplog.text
        return probe

    async with served(app) as base, httpx.AsyncClient(base_url=base, timeout=1) as c:
        svc = app.state.services
        # Another simulation holds the turn: this one waits, and its client gives up.
        async with svc.simulating:
            with pytest.raises(httpx.ReadTimeout):
                await c.post(URL, json=body, headers=boot)

            async def seen_gone() -> bool:
                """The API has answered the request its client left (499, counted)."""
                metrics = (await c.get("/metrics")).text
                return 'route="/v1/accounts/{account}/simulations",status="499"' in metrics

            await eventually(seen_gone, what="the API to see the client gone")
        await eventually(stopped("before its turn came"), what="the waiting one stopped")
        # Running, on a broker that never answers (aiokafka waits 40 s for it).
        live = svc.settings
        svc.settings = live.model_copy(update={"broker": f"kafka://127.0.0.1:{silent_port}"})
        try:
            with pytest.raises(httpx.ReadTimeout):
                await c.post(URL, json=body, headers=boot)
            await eventually(stopped("while running"), timeout=20,
                             what="the running one stopped")
        finally:
            svc.settings = live
        assert not svc.simulating.locked()
