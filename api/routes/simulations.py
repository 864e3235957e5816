"""``POST /v1/accounts/{account}/simulations``: the journey lab (docs/simulation.md) over
HTTP, for one account; and ``GET /v1/accounts/{account}/shadow``: its shadow versions
against what went out live.

Candidate workflows, keywords and account policies are replayed over the recorded log of
``[since, until)`` through the workers' own handlers (:func:`streams.history.run_simulation`,
as ``dripstream simulate`` does), restricted to the path's account, and diffed against
what went out. Nothing is published or stored. Readers may run it: it changes nothing,
and what it shows (contacts, the messages they got or would get) a reader sees already.

Every candidate is of the path's account (one that leaves ``account`` out takes it): the
replay reads that account's records only, so another account's candidate would silently
do nothing — it is refused instead (422, naming its index). The whole run — reading the
topics, decoding, replaying — is on a thread with its own event loop, so the API goes on
answering meanwhile; a process runs one at a time (``Services.simulating``: another
waits its turn), since each holds its window's log in memory. A broker out of reach is
a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Coroutine
from itertools import islice
from typing import Annotated, Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Query, Request

from api.auth import READ, Allow, Principal
from api.deps import Services, ServicesDep
from api.errors import Problem, definition_errors
from api.schemas import Instant, ShadowOut, SimulationIn, SimulationOut, check_depth
from producers.admin import TopicUnreadable
from streams.definitions import DefinitionError
from streams.history import Lab, PartitionMismatch, run_simulation
from streams.shadow import shadow_report
from tables.simulation import CandidateError, Candidates

__all__ = ["candidates", "router", "shadow", "shadow_router", "simulate"]

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/accounts/{account}/simulations", tags=["simulations"])
shadow_router = APIRouter(prefix="/v1/accounts/{account}/shadow", tags=["simulations"])
Reader = Annotated[Principal, Depends(Allow(READ))]

#: Set inside a simulation's thread (and so in the tasks and threads it starts).
_in_lab: contextvars.ContextVar[bool] = contextvars.ContextVar("in_lab", default=False)


class _OutsideTheLab(logging.Filter):
    """The replay's "no recorded answer" warnings (``tables.journal``) are about the
    simulation, not the workers: ``dripstream simulate`` silences them, and so does the
    API — for a simulation's records only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _in_lab.get()


logging.getLogger("tables.journal").addFilter(_OutsideTheLab())


def _within(loc: list[Any], errors: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Errors located in one definition (``["body", …]``), located in the request."""
    return [{"loc": [*loc, *e["loc"][1:]], "msg": e["msg"]} for e in errors or []]


def candidates(account: str, definitions: list[dict[str, Any]]) -> Candidates:
    """The candidates, every one of ``account``: a 422 naming the first that is of another
    account or that the simulator cannot take (the :class:`CandidateError`'s message)."""
    cand = Candidates()
    for index, raw in enumerate(definitions):
        where, loc = f"definitions[{index}]", ["body", "definitions", index]
        try:
            check_depth(raw)
        except Problem as exc:
            raise Problem(422, f"{where}: {exc.detail}", type_=exc.type,
                          errors=_within(loc, exc.errors)) from None
        given = raw.get("account", account)
        if given != account:
            msg = (f"account {given!r} is not {account!r} (the URL's): a simulation replays "
                   "one account")
            raise Problem(422, f"{where}: {msg}", type_="account-mismatch",
                          errors=[{"loc": [*loc, "account"], "msg": msg}])
        try:
            cand.add({**raw, "account": account})
        except CandidateError as exc:
            cause = exc.__cause__
            errors = (_within(loc, definition_errors(cause))
                      if isinstance(cause, DefinitionError) else [{"loc": loc, "msg": str(exc)}])
            raise Problem(422, f"{where}: {exc}", type_="invalid-candidate",
                          errors=errors) from None
    return cand


class _Run:
    """One simulation on an event loop of its own, in the thread that calls it; cancel()
    from any thread stops it at its next await (the replay of the partition at hand
    finishes first) and makes it answer None."""

    def __init__(self, start: Callable[[], Coroutine[Any, Any, Lab]], limit: int) -> None:
        self.start, self.limit = start, limit
        self.cancelled = self.started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None

    def __call__(self) -> SimulationOut | None:
        _in_lab.set(True)  # in this thread's copy of the request's context
        try:
            return asyncio.run(self._main())
        except asyncio.CancelledError:
            return None

    async def _main(self) -> SimulationOut | None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        if self.cancelled:
            return None
        self.started = True
        lab = await self.start()
        first = list(islice(lab.lines(), self.limit + 1))
        return SimulationOut(summary=lab.report, lines=first[:self.limit],
                             truncated=len(first) > self.limit)

    def cancel(self) -> None:
        self.cancelled = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: it has ended
                loop.call_soon_threadsafe(task.cancel)


async def _gone(request: Request | None) -> None:
    """Returns once the client has disconnected (never, without a request). The body has
    been read: what the server has left to give is the disconnect."""
    if request is not None and (await request.receive())["type"] == "http.disconnect":
        return
    await asyncio.Event().wait()  # a server that says nothing more: never


async def _one_at_a_time(svc: Services, run: _Run) -> SimulationOut | None:
    async with svc.simulating:
        return None if run.cancelled else await asyncio.to_thread(run)


def _abandoned(work: asyncio.Future[SimulationOut | None], run: _Run, account: str) -> None:
    """How a simulation whose client went away ended (what it raised is of no one's use)."""
    if work.cancelled() or work.exception() is not None:
        return
    if work.result() is None:
        log.info("simulation for %s stopped %s: its client went away", account,
                 "while running" if run.started else "before its turn came")


async def simulate(svc: Services, account: str, body: SimulationIn,
                   request: Request | None = None) -> SimulationOut:
    """The run behind the route and the dashboard's journey lab. A client that goes away
    (``request`` disconnected) stops it, waiting for its turn or running."""
    cand = candidates(account, body.definitions)
    since, until = body.since, body.until or svc.clock()
    if since >= until:
        msg = f"since {since.isoformat()} is not before until {until.isoformat()}"
        raise Problem(422, f"invalid window: {msg}", type_="invalid-request",
                      errors=[{"loc": ["body", "since"], "msg": msg}])
    if until > svc.clock():
        msg = f"until {until.isoformat()} is after now: the log ends now"
        raise Problem(422, f"invalid window: {msg}", type_="invalid-request",
                      errors=[{"loc": ["body", "until"], "msg": msg}])
    settings = svc.settings
    run = _Run(lambda: run_simulation(settings, cand, since, until, {account}), body.lines)
    work = asyncio.ensure_future(_one_at_a_time(svc, run))
    gone = asyncio.ensure_future(_gone(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():  # the client left (or this request was cancelled)
            run.cancel()  # it ends on its own soon, then frees the lock
            work.add_done_callback(lambda w: _abandoned(w, run, account))
    if not work.done():
        raise Problem(499, "the client went away: the simulation was stopped")
    try:
        out = work.result()
    # OSError: TimeoutError too; PartitionMismatch: the API's DRIPSTREAM_PARTITIONS is wrong
    except (TopicUnreadable, KafkaError, OSError, PartitionMismatch) as exc:
        log.warning("simulation for %s: the recorded log could not be read: %s", account, exc)
        raise Problem(503, "the recorded log could not be read (is the broker up?)") from None
    if out is None:  # cancelled before it could answer: not by this request
        raise Problem(503, "the simulation was stopped")
    return out


@router.post("", response_model=SimulationOut,
             summary="Run candidate definitions over the recorded log (publishes nothing)")
async def run_lab(account: str, body: SimulationIn, who: Reader, svc: ServicesDep,
                  request: Request) -> SimulationOut:
    """What the candidates would have sent and held back over ``[since, until)`` of this
    account's recorded input, beside what went out."""
    return await simulate(svc, account, body, request)


async def shadow(svc: Services, account: str, since: Any = None, until: Any = None,
                 limit: int = 1000) -> ShadowOut:
    """The report behind the route and the dashboard's shadow page."""
    if since is not None and until is not None and since >= until:
        msg = f"since {since.isoformat()} is not before until {until.isoformat()}"
        raise Problem(422, f"invalid window: {msg}", type_="invalid-request",
                      errors=[{"loc": ["query", "since"], "msg": msg}])
    try:
        found = await shadow_report(svc.settings, account, since, until or svc.clock())
    except (TopicUnreadable, KafkaError, OSError, PartitionMismatch) as exc:
        log.warning("shadow report for %s: the topics could not be read: %s", account, exc)
        raise Problem(503, "the shadow topic could not be read (is the broker up?)") from None
    first = list(islice(found.lines(), limit + 1))
    return ShadowOut(summary=found.report, lines=first[:limit], truncated=len(first) > limit)


@shadow_router.get("", response_model=ShadowOut,
                   summary="The account's shadow versions against what went out live")
async def shadow_route(account: str, who: Reader, svc: ServicesDep,
                       since: Annotated[Instant | None, Query(
                           description="start of the window, with its offset; default: when "
                                       "the earliest shadow version was published")] = None,
                       until: Annotated[Instant | None, Query(
                           description="end of the window (excluded); default: now; cut to "
                                       "where the shadow runner got")] = None,
                       lines: Annotated[int, Query(ge=0, le=10_000)] = 1000) -> ShadowOut:
    """What the shadow versions (``dripstream shadow run``) would have sent and not sent,
    beside what the live versions sent."""
    return await shadow(svc, account, since, until, lines)
