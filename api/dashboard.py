"""The dashboard: HTML pages of the admin API at ``/dashboard`` (docs/dashboard.md).

Server-rendered Jinja2 templates (``api/templates/``), charts as inline SVG
(:mod:`api.charts`), times and record details worded by :mod:`api.display`, one
stylesheet (``api/static/``); no JavaScript. Every page calls the
JSON routes' own functions (``api.routes.observe``, ``contacts``, ``campaigns``,
``simulations``) with the caller's principal, so it shows exactly the numbers the API
answers, and every button (and the journey lab's form) posts through the same function as
the API's route. Who may see and do what is the
API's check too: each page has :class:`Allow` (as a dependency), and a session cookie is
one more auth source (:mod:`api.sessions`). Forms carry the session's CSRF token.

:func:`mount` adds it all to the app built by :func:`api.app.create_app`.
"""

from __future__ import annotations

import hmac
import inspect
import re
import secrets
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import display, sessions, store
from api.auth import ANY_ACCOUNT, OPERATE, READ, Allow, Principal, Role
from api.charts import rate_bars, stacked_bars
from api.deps import ServicesDep, SessionDep
from api.errors import Problem
from api.paths import CONTACT_PATH
from api.routes import campaigns, contacts, observe, simulations
from api.schemas import Cursor, SimulationIn
from streams.events import ACCOUNT_PATTERN, EVENT_TYPES, Channel
from tables.campaigns import CAMPAIGN_WORKFLOW, COUNTERS
from tables.gate import REASONS
from tables.readmodel import STATUSES, TERMINAL

__all__ = ["mount", "router"]

PREFIX = sessions.PREFIX
CHANNELS: tuple[str, ...] = get_args(Channel)
_ACCOUNT = re.compile(ACCOUNT_PATTERN)
#: No inline script or style anywhere, no other origin: a stored XSS has nothing to run.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def _time(text: str) -> Markup:
    """A shown time in a ``<time>`` element (kept on one line by the stylesheet)."""
    return Markup("<time>{}</time>").format(text)


_env = Environment(loader=PackageLoader("api", "templates"),
                   autoescape=select_autoescape(["html"]), trim_blocks=True,
                   lstrip_blocks=True)
_env.filters["seg"] = lambda s: quote(str(s), safe="")
_env.filters["path"] = lambda s: quote(str(s), safe="/")
_env.filters["when"] = lambda value: _time(display.when(value)) if value else ""
_env.filters["wall"] = lambda value, zone: _time(display.wall(value, zone))
_env.filters["readable"] = display.readable
_env.filters["hour"] = display.hour
_env.globals["CAMPAIGN_WORKFLOW"] = CAMPAIGN_WORKFLOW


class LoginRequired(Exception):
    """No session (or its key was revoked): the page answers with the login form."""


class _Page:
    """:class:`api.auth.Allow`, with "log in" instead of a 401."""

    def __init__(self, roles: frozenset[Role]) -> None:
        self.allow = Allow(roles)

    async def __call__(self, request: Request) -> Principal:
        try:
            return await self.allow(request)
        except Problem as exc:
            if exc.status == 401:
                raise LoginRequired from None
            raise


Reader = Annotated[Principal, Depends(_Page(READ))]
Operator = Annotated[Principal, Depends(_Page(OPERATE))]
Action = Literal["pause", "resume", "cancel"]
router = APIRouter(prefix=PREFIX, include_in_schema=False)


def render(request: Request, template: str, code: int = 200, **context: Any
           ) -> HTMLResponse:
    session: sessions.Session | None = getattr(request.state, "dash_session", None)
    who: Principal | None = getattr(request.state, "principal", None)
    body = _env.get_template(template).render(
        request=request, prefix=PREFIX, session=session, who=who,
        csrf=session.csrf if session else "",
        can_operate=session is not None and who is not None and who.role in OPERATE,
        **context)
    return HTMLResponse(body, status_code=code, headers=_HEADERS)


def render_public(template: str, code: int = 200, **context: Any) -> HTMLResponse:
    """A page for someone who is not an operator (the preference page): no session, no
    navigation, and no referrer sent on (its URL holds a token)."""
    body = _env.get_template(template).render(prefix=PREFIX, session=None, who=None,
                                              csrf="", can_operate=False, **context)
    return HTMLResponse(body, status_code=code,
                        headers={**_HEADERS, "Referrer-Policy": "no-referrer"})


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


# -- login / logout ---------------------------------------------------------------------
@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def home(request: Request, svc: ServicesDep) -> Response:
    """The session's account, else the login form."""
    session = await sessions.load(svc, request.cookies.get(sessions.COOKIE))
    if session is None:
        return _see_other(f"{PREFIX}/login")
    return _see_other(f"{PREFIX}/{quote(session.account, safe='')}")


def _login_form(request: Request, code: int = 200, error: str = "") -> HTMLResponse:
    token = request.cookies.get(sessions.LOGIN_COOKIE) or secrets.token_urlsafe(32)
    response = render(request, "login.html", code, login_csrf=token, error=error)
    sessions.set_cookie(response, request, sessions.LOGIN_COOKIE, token, 3600)
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    return _login_form(request)


@router.post("/login")
async def login(request: Request, svc: ServicesDep) -> Response:
    """An API key in, a session cookie out (the bootstrap key also names an account)."""
    fields = await sessions.form(request)
    cookie = request.cookies.get(sessions.LOGIN_COOKIE, "")
    if not cookie or not hmac.compare_digest(
            fields.get("csrf", "").encode(), cookie.encode()):
        raise Problem(403, "the login form's CSRF token is missing or wrong (reload it)")
    key = fields.get("key", "").strip()
    principal = await sessions.key_principal(svc, key) if key else None
    if principal is None:
        return _login_form(request, 401, "unknown or revoked API key")
    if principal.role not in READ:  # every page would be a 403
        return _login_form(request, 403, f"a key of role {principal.role!r} may not read "
                                         "the dashboard (an ingest key only posts events): "
                                         "log in with a viewer, editor, operator or admin key")
    account = principal.account
    if account == ANY_ACCOUNT:
        account = fields.get("account", "").strip()
        if not _ACCOUNT.match(account):
            return _login_form(request, 422, "the bootstrap key needs an account to show")
    session = await sessions.create(svc, principal, account, key)
    response = _see_other(f"{PREFIX}/{quote(account, safe='')}")
    sessions.set_cookie(response, request, sessions.COOKIE, session.sid, sessions.TTL_S)
    response.delete_cookie(sessions.LOGIN_COOKIE, path=PREFIX)
    return response


@router.post("/logout")
async def logout(request: Request, svc: ServicesDep) -> Response:
    session = await sessions.load(svc, request.cookies.get(sessions.COOKIE))
    if session is not None:
        request.state.dash_session = session
        sessions.check_csrf(request, await sessions.form(request))
        await sessions.delete(svc, session.sid)
    response = _see_other(f"{PREFIX}/login")
    response.delete_cookie(sessions.COOKIE, path=PREFIX)
    return response


# -- pages ------------------------------------------------------------------------------
def _per_second(rows: list[dict[str, Any]], kind: str) -> list[dict[str, float]]:
    return [{k: v / 60 for k, v in row[kind].items()} for row in rows]


@router.get("/{account}", response_class=HTMLResponse)
async def overview(request: Request, account: str, who: Reader, svc: ServicesDep
                   ) -> HTMLResponse:
    """Rates over the last hour, the input lag, dead letters by reason."""
    minutes: list[dict[str, Any]] = (await observe.stats(account, who, svc, 60))["minutes"]
    labels = [f"{m['minute'][11:16]} UTC" for m in minutes]
    totals = {kind: sum(sum(m[kind].values()) for m in minutes)
              for kind in ("events", "sends", "nonsends", "deadletters")}
    reasons = Counter[str]()
    for m in minutes:
        reasons.update(m["nonsends"])
    dead = (await observe.dead_letters(account, who, svc, None, 200))["items"]
    charts = {
        "events": stacked_bars(_per_second(minutes, "events"), labels, unit="/s",
                               title="events per second, by type", series=EVENT_TYPES),
        "sends": stacked_bars(_per_second(minutes, "sends"), labels, unit="/s",
                              title="sends per second, by channel", series=CHANNELS),
        "nonsends": stacked_bars([m["nonsends"] for m in minutes], labels,
                                 title="non-sends per minute, by reason", series=REASONS)}
    lag = await svc.read_model.lag(datetime.now(UTC))  # written on the wall clock
    return render(request, "overview.html", account=account, page="overview",
                  totals=totals, charts=charts, reasons=sorted(reasons.items()),
                  lag=lag, lag_topics=display.lag_summary(lag),
                  dead_reasons=sorted(Counter(d["reason"] for d in dead).items()),
                  dead=dead[:10])


@router.get("/{account}/workflows", response_class=HTMLResponse)
async def workflows(request: Request, account: str, who: Reader, svc: ServicesDep,
                    session: SessionDep) -> HTMLResponse:
    """One row per workflow (defined, or with executions in the index): its version and
    whether it is active, counts per status and per step, as ``GET …/workflows/{id}/counts``.
    A content campaign's one-step workflow (``campaign:<id>``) is not one: its executions
    are on the campaign's page."""
    rows, _ = await store.list_live(session, account=account, kind="workflow", after=None,
                                    limit=200)
    defined = {r.def_id: r.body for r in rows}
    indexed = {w for w in await svc.read_model.workflow_ids(account)
               if not w.startswith(CAMPAIGN_WORKFLOW)}
    found = []
    for workflow_id in sorted(set(defined) | indexed):
        counts = await observe.workflow_counts(account, workflow_id, who, svc)
        body = defined.get(workflow_id)
        found.append({"id": workflow_id, "name": body.get("name", "") if body else "",
                      "version": body.get("version") if body else None,
                      "state": ("active" if body.get("active", True) else "inactive")
                      if body else "not in the store", **counts})
    return render(request, "workflows.html", account=account, page="workflows",
                  workflows=found, statuses=STATUSES)


@router.get("/{account}/workflows/{workflow_id}", response_class=HTMLResponse)
async def executions(request: Request, account: str, workflow_id: observe.WorkflowId,
                     who: Reader, svc: ServicesDep,
                     status: Annotated[observe.Status | None, Query()] = None,
                     cursor: Cursor = None) -> HTMLResponse:
    """A page of the workflow's executions, newest first (``GET …/executions``)."""
    found = await observe.workflow_executions(account, workflow_id, who, svc, status, 50,
                                              cursor)
    return render(request, "executions.html", account=account, page="workflows",
                  workflow_id=workflow_id, status=status, items=found.items,
                  next_cursor=found.next_cursor, statuses=STATUSES)


@router.get("/{account}/workflows/{workflow_id}/report", response_class=HTMLResponse)
async def experiment(request: Request, account: str, workflow_id: observe.WorkflowId,
                     who: Reader, svc: ServicesDep) -> HTMLResponse:
    """``GET …/workflows/{id}/report``: each arm's rate (a chart with intervals) and lift."""
    result = await observe.experiment_report(svc, account, workflow_id)
    return render(request, "experiment.html", account=account, page="workflows",
                  subject=workflow_id, back=f"workflows/{quote(workflow_id, safe='')}",
                  result=result, chart=rate_bars(
                      result["arms"], title=f"{workflow_id}: conversion rate per arm, with "
                                            "its 95 % interval"))


@router.get("/{account}/campaigns/{campaign_id}/report", response_class=HTMLResponse)
async def campaign_experiment(request: Request, account: str,
                              campaign_id: campaigns.CampaignId, who: Reader,
                              svc: ServicesDep) -> HTMLResponse:
    """``GET …/campaigns/{id}/report``: each variant's rate (a chart) and lift."""
    result = await observe.experiment_report(svc, account, CAMPAIGN_WORKFLOW + campaign_id)
    return render(request, "experiment.html", account=account, page="campaigns",
                  subject=f"campaign {campaign_id}", back="campaigns", result=result,
                  chart=rate_bars(result["arms"], title=f"campaign {campaign_id}: conversion "
                                                         "rate per arm, with its 95 % interval"))


@router.get("/{account}/contacts", response_class=HTMLResponse)
async def contact_list(request: Request, account: str, who: Reader, svc: ServicesDep,
                       cursor: Cursor = None) -> HTMLResponse:
    found = await contacts.list_contacts(account, who, svc, 50, cursor)
    return render(request, "contacts.html", account=account, page="contacts",
                  items=found.items, next_cursor=found.next_cursor)


@router.get("/{account}" + CONTACT_PATH, response_class=HTMLResponse)
async def contact(request: Request, account: str, contact_id: contacts.ContactId,
                  who: Reader, svc: ServicesDep) -> HTMLResponse:
    """State, consent, groups, tags, cap windows, executions, sends and the audit records
    of the sends that did not go."""
    shown = await contacts.show_contact(account, contact_id, who, svc)
    runs = await contacts.list_executions(account, contact_id, who, svc, None, 20, None)
    audit = [r for r in (await observe.audit(account, who, svc, None, 200))["items"]
             if r.get("contact_id") == contact_id]
    return render(request, "contact.html", account=account, page="contacts",
                  contact=shown["contact"], caps=shown["cap_windows"], runs=runs.items,
                  audit=audit, holdout=shown["holdout"],
                  subscriptions=shown["subscriptions"])


@router.get("/{account}" + CONTACT_PATH + "/executions/{execution_id:path}",
            response_class=HTMLResponse)
async def execution(request: Request, account: str, contact_id: contacts.ContactId,
                    execution_id: contacts.ExecutionId, who: Reader, svc: ServicesDep,
                    sent: Annotated[Action | None, Query()] = None) -> HTMLResponse:
    """One execution's timeline, and its buttons (operators)."""
    ex = await contacts.show_execution(account, contact_id, execution_id, who, svc)
    status = ex["status"]
    actions = [] if status in TERMINAL else (
        ["resume", "cancel"] if status == "paused" else ["pause", "cancel"])
    campaign = ex["workflow_id"].removeprefix(CAMPAIGN_WORKFLOW) if ex[
        "workflow_id"].startswith(CAMPAIGN_WORKFLOW) else None
    return render(request, "execution.html", account=account,
                  page="campaigns" if campaign else "workflows", contact_id=contact_id,
                  ex=ex, actions=actions, sent=sent, campaign=campaign)


@router.post("/{account}" + CONTACT_PATH + "/executions/{execution_id:path}/{action}")
async def control_execution(request: Request, account: str, contact_id: contacts.ContactId,
                            execution_id: contacts.ExecutionId, action: Action,
                            who: Operator, svc: ServicesDep) -> Response:
    """``POST /v1/…/executions/{id}/{action}``'s function, behind the CSRF check."""
    sessions.check_csrf(request, await sessions.form(request))
    await contacts.control_execution(account, contact_id, execution_id, action, who, svc)
    return _see_other(f"{PREFIX}/{quote(account, safe='')}/contacts/"
                      f"{quote(contact_id, safe='')}/executions/"
                      f"{quote(execution_id, safe='/')}?sent={action}")


def campaign_status(status: str, active: bool) -> str:
    """The controls' status (``running``, ``paused``, ``cancelled``), or ``inactive`` for
    a deleted or deactivated campaign (nothing new starts from it) that was not
    cancelled."""
    return status if status == "cancelled" or active else "inactive"


def campaign_actions(status: str) -> list[str]:
    """The buttons that fit: none once cancelled, completed or inactive."""
    if status in ("cancelled", "completed", "inactive"):
        return []
    return ["resume" if status == "paused" else "pause", "cancel"]


@router.get("/{account}/campaigns", response_class=HTMLResponse)
async def campaign_list(request: Request, account: str, who: Reader, svc: ServicesDep,
                        session: SessionDep,
                        sent: Annotated[Action | None, Query()] = None) -> HTMLResponse:
    """Each campaign's status and each occurrence's progress (``GET …/progress``); an
    occurrence's time is shown in its schedule's zone and as the UTC instant it starts."""
    rows, _ = await store.list_live(session, account=account, kind="campaign", after=None,
                                    limit=200)
    policy = await svc.policy(account)
    found = [await campaigns.progress(account, r.def_id, who, session, svc) for r in rows]
    for c, r in zip(found, rows, strict=True):
        c["name"] = r.body.get("name", "")
        c["status"] = campaign_status(c["status"], c["active"])
        c["actions"] = campaign_actions(c["status"])
        c["zone"] = r.body["schedule"].get("timezone") or policy["timezone"]
        c["contact_local"] = bool((r.body.get("delivery") or {}).get("contact_local_time"))
        c["experiment"] = bool(r.body.get("variants") or r.body.get("experiment"))
        for o in c["occurrences"]:
            o["done"] = o["targeted"] - o["remaining"]
    return render(request, "campaigns.html", account=account, page="campaigns",
                  campaigns=found, counters=COUNTERS, sent=sent)


@router.post("/{account}/campaigns/{campaign_id}/{action}")
async def control_campaign(request: Request, account: str,
                           campaign_id: campaigns.CampaignId, action: Action,
                           who: Operator, svc: ServicesDep, session: SessionDep) -> Response:
    """``POST /v1/…/campaigns/{id}/{action}``'s function, behind the CSRF check."""
    sessions.check_csrf(request, await sessions.form(request))
    await campaigns.control(account, campaign_id, action, who, session, svc)
    return _see_other(f"{PREFIX}/{quote(account, safe='')}/campaigns?sent={action}")


# -- the journey lab --------------------------------------------------------------------
#: The lines (sends, non-sends) the lab's page shows; the JSON route answers up to 10,000.
LAB_LINES = 200
_LAB_FIELDS = ("definitions", "since", "until")


def _instant(text: str, name: str) -> datetime:
    """A form's time: ISO 8601 (a space for the T will do), UTC unless it has an offset."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise Problem(422, f"{name}: {text.strip()!r} is not a time: write it as "
                           "2026-03-01 10:00 (UTC) or 2026-03-01T10:00+01:00") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def lab_request(form: dict[str, str]) -> SimulationIn:
    """The lab's form as the JSON route's body (a 422 saying what is wrong with it): the
    candidates as JSON, one definition or a list; the window's ends (``until`` empty:
    now)."""
    text = form.get("definitions", "").strip()
    try:
        raw = orjson.loads(text) if text else []
    except orjson.JSONDecodeError as exc:
        raise Problem(422, f"the candidate definitions are not JSON: {exc}") from None
    found = raw if isinstance(raw, list) else [raw]
    for index, item in enumerate(found):
        if not isinstance(item, dict):
            raise Problem(422, f"definitions[{index}] is not a JSON object (a definition)")
    if not form.get("since", "").strip():
        raise Problem(422, "from: the window needs a start")
    until = form.get("until", "").strip()
    return SimulationIn(definitions=found, since=_instant(form["since"], "from"),
                        until=_instant(until, "to") if until else None, lines=LAB_LINES)


def _lab(request: Request, account: str, form: dict[str, str], code: int = 200,
         **context: Any) -> HTMLResponse:
    return render(request, "lab.html", code, account=account, page="lab", form=form,
                  **context)


@router.get("/{account}/lab", response_class=HTMLResponse)
async def lab(request: Request, account: str, who: Reader, svc: ServicesDep
              ) -> HTMLResponse:
    """The journey lab's form: candidate definitions and a window (the last day)."""
    since = (svc.clock() - timedelta(days=1)).astimezone(UTC)
    return _lab(request, account, {"definitions": "", "until": "",
                                   "since": since.strftime(display.FORMAT)})


@router.post("/{account}/lab", response_class=HTMLResponse)
async def run_lab(request: Request, account: str, who: Reader, svc: ServicesDep
                  ) -> HTMLResponse:
    """``POST /v1/…/simulations``' function, behind the CSRF check; the form again, with
    its result below, or with what is wrong with it (the API's message)."""
    fields = await sessions.form(request)
    sessions.check_csrf(request, fields)
    form = {name: fields.get(name, "") for name in _LAB_FIELDS}
    try:
        out = await simulations.simulate(svc, account, lab_request(form), request)
    except Problem as exc:
        if exc.status not in (422, 503):
            raise
        return _lab(request, account, form, exc.status, error=exc.detail)
    summary = out.summary
    reasons = sorted(summary["not_sent"].keys() | summary["actual_not_sent"].keys())
    return _lab(request, account, form, result=summary, lines=out.lines,
                truncated=out.truncated, reasons=reasons)


@router.get("/{account}/shadow", response_class=HTMLResponse)
async def shadow(request: Request, account: str, who: Reader, svc: ServicesDep,
                 since: str = "", until: str = "") -> HTMLResponse:
    """``GET /v1/…/shadow``'s function: the shadow versions against what went out live
    (the window from the query: a GET form, it changes nothing)."""
    form = {"since": since, "until": until}
    try:
        out = await simulations.shadow(
            svc, account, _instant(since, "from") if since.strip() else None,
            _instant(until, "to") if until.strip() else None, LAB_LINES)
    except Problem as exc:
        if exc.status not in (422, 503):
            raise
        return render(request, "shadow.html", exc.status, account=account, page="shadow",
                      form=form, error=exc.detail)
    summary = out.summary
    reasons = sorted(summary["not_sent"].keys() | summary["actual_not_sent"].keys())
    return render(request, "shadow.html", account=account, page="shadow", form=form,
                  result=summary, lines=out.lines, truncated=out.truncated, reasons=reasons)


# -- mounting ---------------------------------------------------------------------------
def mount(app: FastAPI) -> None:
    """The pages, their static files, the session auth source and HTML error pages (the
    API's own paths keep problem+json)."""
    app.state.auth_sources.append(sessions.session_source)
    app.mount(f"{PREFIX}/static", StaticFiles(packages=[("api", "static")]),
              name="dashboard-static")
    app.include_router(router)
    for kind in (Problem, RequestValidationError, StarletteHTTPException):
        _html_errors(app, kind)

    async def login_required(request: Request, exc: Exception) -> Response:
        return _see_other(f"{PREFIX}/login")

    app.add_exception_handler(LoginRequired, login_required)


def _status_detail(exc: Exception) -> tuple[int, str]:
    """An error's status and message, worded for a page."""
    if isinstance(exc, Problem):
        return exc.status, exc.detail
    if isinstance(exc, RequestValidationError):  # a hand-edited URL: name what is wrong
        return 422, "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: "
                              f"{e.get('msg', '')}" for e in exc.errors())
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, str(exc.detail)
    return 500, "internal error"


def _html_errors(app: FastAPI, kind: type[Exception]) -> None:
    """Under ``/dashboard`` an error of ``kind`` is an HTML page with the API's message;
    elsewhere the API's problem+json handler answers it."""
    json_handler = app.exception_handlers[kind]

    async def handler(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith(PREFIX):
            answer = json_handler(request, exc)
            return await answer if inspect.isawaitable(answer) else answer
        status, detail = _status_detail(exc)
        return render(request, "error.html", status, status=status, detail=detail,
                      account=request.path_params.get("account"))

    app.add_exception_handler(kind, handler)
