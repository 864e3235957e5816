"""Campaign definitions (streams/definitions.py): what is accepted, each problem's message
and path, the account's minimum interval for recurring campaigns, and record keys."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from streams.definitions import (
    Campaign,
    CampaignControl,
    DefinitionError,
    DripSchedule,
    RecurringSchedule,
    definition_key,
    parse_any,
    parse_campaign,
)

Mutate = Callable[[dict[str, Any]], object]
Raw = Callable[[], dict[str, Any]]
TEMPLATE_HINT = ("use contact.<name>, event.data.<path> (event.type, event.id, event.time), "
                 "preferences_url, digest.count or digest.items")


def campaign_raw() -> dict[str, Any]:
    """A content campaign using every section: an MMS to VIPs every Monday at 10:00."""
    return {
        "kind": "campaign",
        "id": "spring-sale",
        "account": "acme",
        "name": "Spring sale",
        "version": 3,
        "content": {
            "channel": "mms",
            "body": "Hi {{contact.first_name | there}}, 20% off for {{contact.plan}} members",
            "media_urls": ["https://cdn.example.com/spring.png"],
            "expires_after": "6h",
            "max_lateness": "2h",
        },
        "audience": {
            "groups": ["vip", "newsletter"],
            "tags": ["engaged", "sms-ok"],
            "tags_match": "any",
            "exclude_groups": ["staff"],
            "criteria": [{"field": "contact.purchases", "op": "gte", "value": 1}],
        },
        "schedule": {
            "type": "recurring",
            "cron": "0 10 * * MON",
            "timezone": "Europe/Berlin",
            "start": "2026-03-01T00:00",
            "end": "2026-06-30T23:59",
            "max_occurrences": 10,
        },
        "delivery": {
            "contact_local_time": True,
            "throttle_per_minute": 600,
            "misfire": "skip",
            "misfire_grace": "15m",
            "on_capped": "defer",
            "publish_events": True,
        },
    }


def drip_raw() -> dict[str, Any]:
    """A drip campaign: enrol the newsletter group in the nurture workflow, and joiners."""
    return {
        "kind": "campaign",
        "id": "nurture-q2",
        "account": "acme",
        "name": "Nurture Q2",
        "version": 1,
        "workflow": "nurture",
        "audience": {"groups": ["newsletter"]},
        "schedule": {"type": "drip", "at": "2026-04-01T09:00", "until": "2026-06-30T00:00",
                     "enrol_joiners": True},
    }


def errors_of(mutate: Mutate, raw: dict[str, Any] | None = None, **kwargs: Any) -> list[str]:
    """The errors parse_campaign reports for the campaign changed by ``mutate``."""
    raw = copy.deepcopy(raw or campaign_raw())
    mutate(raw)
    with pytest.raises(DefinitionError) as caught:
        parse_campaign(raw, **kwargs)
    assert caught.value.errors, "a DefinitionError always lists its problems"
    assert str(caught.value) == "; ".join(caught.value.errors)
    return caught.value.errors


def section(name: str, **changes: Any) -> Mutate:
    """Change fields of one section (content, audience, schedule, delivery)."""
    return lambda raw: raw[name].update(changes)


def replace(name: str, value: Any) -> Mutate:
    return lambda raw: raw.__setitem__(name, value)


def drop(name: str) -> Mutate:
    return lambda raw: raw.pop(name)


def once(at: str, **more: Any) -> Mutate:
    return replace("schedule", {"type": "once", "at": at, **more})


def recurring(cron: str, **more: Any) -> Mutate:
    return replace("schedule", {"type": "recurring", "cron": cron, **more})


def test_full_content_campaign_parses() -> None:
    """A campaign with every section parses, keeps its values and round-trips as JSON."""
    campaign = parse_campaign(campaign_raw())
    assert isinstance(campaign.schedule, RecurringSchedule)
    assert campaign.content is not None
    assert (("mms", ["https://cdn.example.com/spring.png"]), "any", ["staff"],
            ("0 10 * * MON", "Europe/Berlin", 10), (True, 600, "skip", "defer", True)) == (
        (campaign.content.channel, campaign.content.media_urls),
        campaign.audience.tags_match, campaign.audience.exclude_groups,
        (campaign.schedule.cron, campaign.schedule.timezone, campaign.schedule.max_occurrences),
        (campaign.delivery.contact_local_time, campaign.delivery.throttle_per_minute,
         campaign.delivery.misfire, campaign.delivery.on_capped,
         campaign.delivery.publish_events))
    assert campaign == parse_campaign(campaign.model_dump(mode="json"))


def test_minimal_campaign_gets_the_documented_defaults() -> None:
    """Without audience or delivery: everyone, fire_once_now within 5m, drop when capped,
    no throttle, no published events."""
    campaign = parse_campaign({
        "id": "hello", "account": "acme", "name": "Hello", "version": 1,
        "content": {"channel": "sms", "body": "Hello"},
        "schedule": {"type": "once", "at": "2026-03-02T09:00"}})
    assert ({"groups": [], "tags": [], "tags_match": "all", "exclude_groups": [],
             "criteria": []},
            {"contact_local_time": False, "throttle_per_minute": None,
             "misfire": "fire_once_now", "misfire_grace": "5m", "on_capped": "drop",
             "publish_events": False},
            (True, None, "1d")) == (
        campaign.audience.model_dump(), campaign.delivery.model_dump(),
        (campaign.active, campaign.workflow, campaign.content and campaign.content.expires_after))


def test_drip_campaign_parses() -> None:
    """A drip campaign names its workflow and has no content."""
    campaign = parse_campaign(drip_raw())
    assert isinstance(campaign.schedule, DripSchedule)
    assert ("nurture", None, "2026-04-01T09:00", "2026-06-30T00:00", True) == (
        campaign.workflow, campaign.content, campaign.schedule.at, campaign.schedule.until,
        campaign.schedule.enrol_joiners)


def test_content_campaign_may_link_a_workflow_instead() -> None:
    """A once campaign may enrol into a workflow instead of sending content."""
    raw = campaign_raw()
    del raw["content"]
    raw["workflow"] = "nurture"
    campaign = parse_campaign(raw)
    assert ("nurture", None) == (campaign.workflow, campaign.content)


def test_parse_any_dispatches_campaigns_and_controls() -> None:
    """parse_any reads kind: campaign and campaign_control, and passes the interval on."""
    assert isinstance(parse_any(campaign_raw()), Campaign)
    control = parse_any({"kind": "campaign_control", "account": "acme",
                         "campaign_id": "spring-sale", "action": "pause"})
    assert isinstance(control, CampaignControl) and control.action == "pause"
    half_hourly = copy.deepcopy(campaign_raw())
    half_hourly["schedule"]["cron"] = "*/30 * * * *"
    assert isinstance(parse_any(half_hourly, min_interval_s=1800), Campaign)
    with pytest.raises(DefinitionError):
        parse_any(half_hourly)


def test_bad_control_action_is_named() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_any({"kind": "campaign_control", "account": "acme", "campaign_id": "x",
                   "action": "stop"})
    assert ["action: Input should be 'pause', 'resume' or 'cancel'"] == caught.value.errors


BOTH_OR_NEITHER = ("(root): give exactly one of content (what to send), variants (an A/B "
                   "test of contents) or workflow (the id of a workflow to enrol each "
                   "contact in)")

#: Invalid campaigns whose error names a real JSON path: (mutate, "path: message").
ERRORS = [
    # Content and a linked workflow at once.
    pytest.param(lambda raw: raw.update(workflow="nurture"), BOTH_OR_NEITHER, id="both"),
    # Neither content nor a workflow.
    pytest.param(drop("content"), BOTH_OR_NEITHER, id="neither"),
    # A drip campaign enrols: it needs a workflow, content is not enough.
    pytest.param(once("2026-03-02T09:00", type="drip"),
                 "(root): a drip campaign enrols into a workflow: give workflow",
                 id="drip-without-workflow"),
    # A recurring cron more often than the default minimum interval of 1 hour.
    pytest.param(section("schedule", cron="*/30 * * * *"),
                 "schedule.cron: fires every 30m at times, more often than the minimum "
                 "interval of 1h00m", id="cron-every-30m"),
    # Hourly most of the time, but 30 minutes apart once a day: the smallest gap counts.
    pytest.param(section("schedule", cron="0,30 9 * * *"),
                 "schedule.cron: fires every 30m at times, more often than the minimum "
                 "interval of 1h00m", id="cron-twice-in-an-hour"),
    # An email without a subject.
    pytest.param(replace("content", {"channel": "email", "body": "Hi"}),
                 "content: email needs a subject", id="email-no-subject"),
    # An SMS with a subject.
    pytest.param(replace("content", {"channel": "sms", "body": "Hi", "subject": "Sale"}),
                 "content: sms has no subject", id="sms-subject"),
    # An SMS with media.
    pytest.param(replace("content", {"channel": "sms", "body": "Hi",
                                     "media_urls": ["https://x.example/a.png"]}),
                 "content: sms has no media_urls", id="sms-media"),
    # An MMS without media.
    pytest.param(section("content", media_urls=[]),
                 "content: mms needs at least one media_urls entry", id="mms-no-media"),
    # Media over plain http.
    pytest.param(section("content", media_urls=["http://cdn.example.com/spring.png"]),
                 "content: media_urls must be https:// URLs", id="media-http"),
    # A template field without its root.
    pytest.param(section("content", body="Hi {{first_name}}"),
                 f"content.body: unknown template field {{{{first_name}}}}: {TEMPLATE_HINT}",
                 id="template-unknown-field"),
    # Email subjects are templates too.
    pytest.param(replace("content", {"channel": "email", "body": "Hi",
                                     "subject": "Hi {{contct.first_name}}"}),
                 f"content.subject: unknown template field {{{{contct.first_name}}}}: "
                 f"{TEMPLATE_HINT}", id="template-subject"),
    # A template that never closes.
    pytest.param(section("content", body="Hi {{contact.first_name"),
                 "content.body: unbalanced or empty {{ }} in template", id="template-unclosed"),
    # An audience is judged on the contact, with no event: event.data is refused...
    pytest.param(section("audience", criteria=[{"field": "event.data.plan", "op": "eq",
                                                "value": "pro"}]),
                 "audience.criteria: audience criteria read contact fields only, not "
                 "'event.data.plan'", id="audience-event-data"),
    # ...and so is event.type.
    pytest.param(section("audience", criteria=[{"field": "event.type", "op": "eq",
                                                "value": "x"}]),
                 "audience.criteria: audience criteria read contact fields only, not "
                 "'event.type'", id="audience-event-type"),
    # A throttle of 0 per minute would never send.
    pytest.param(section("delivery", throttle_per_minute=0),
                 "delivery.throttle_per_minute: Input should be greater than or equal to 1",
                 id="throttle-0"),
    # A misfire policy that does not exist.
    pytest.param(section("delivery", misfire="catch_up"),
                 "delivery.misfire: Input should be 'fire_once_now' or 'skip'",
                 id="misfire-unknown"),
    # A misfire grace that is not a duration.
    pytest.param(section("delivery", misfire_grace="soon"),
                 "delivery.misfire_grace: invalid duration 'soon': use e.g. 30m, 2d, 1d12h, 1w",
                 id="misfire-grace"),
    # A schedule type that does not exist.
    pytest.param(once("2026-03-02T09:00", type="weekly"),
                 "schedule: Input tag 'weekly' found using 'type' does not match any of the "
                 "expected tags: 'once', 'recurring', 'drip'", id="schedule-type"),
    # ':' is reserved (content campaigns run as workflow "campaign:<id>").
    pytest.param(lambda raw: raw.update(id="spring:sale"),
                 "id: String should match pattern '^[A-Za-z0-9_.-]{1,64}$'", id="id-colon"),
]

#: Invalid schedules: (base, mutate, the JSON path, the message).
SCHEDULE_ERRORS = [
    # A minute that does not exist.
    pytest.param(campaign_raw, section("schedule", cron="61 * * * *"), "schedule.cron",
                 "cron '61 * * * *': bad minute field '61'", id="cron-bad-minute"),
    # A seconds field.
    pytest.param(campaign_raw, section("schedule", cron="0 0 9 * * *"), "schedule.cron",
                 "cron '0 0 9 * * *' has 6 fields, needs 5: minute hour day-of-month month "
                 "day-of-week (seconds and years fields are not supported): write "
                 "'0 9 * * *'", id="cron-6-fields"),
    # A macro.
    pytest.param(campaign_raw, section("schedule", cron="@daily"), "schedule.cron",
                 "cron macro '@daily' is not supported: write '0 0 * * *'", id="cron-macro"),
    # A local time with a UTC offset: the zone comes from the schedule.
    pytest.param(campaign_raw, once("2026-03-02T09:00+02:00"), "schedule.at",
                 "local time '2026-03-02T09:00+02:00' has a UTC offset: write the wall-clock "
                 "time without one (the schedule's timezone applies)", id="at-offset"),
    # Z is an offset too.
    pytest.param(campaign_raw, once("2026-03-02T09:00Z"), "schedule.at",
                 "local time '2026-03-02T09:00Z' has a UTC offset: write the wall-clock "
                 "time without one (the schedule's timezone applies)", id="at-z"),
    # Not ISO at all.
    pytest.param(campaign_raw, once("02/03/2026 09:00"), "schedule.at",
                 "local time '02/03/2026 09:00' is not YYYY-MM-DDTHH:MM[:SS]", id="at-malformed"),
    # The right shape, but no such day.
    pytest.param(campaign_raw, once("2026-02-30T09:00"), "schedule.at",
                 "local time '2026-02-30T09:00' is not a valid date and time: day is out of "
                 "range for month", id="at-feb-30"),
    # A recurring start with an offset.
    pytest.param(campaign_raw, section("schedule", start="2026-03-01T00:00+01:00"),
                 "schedule.start",
                 "local time '2026-03-01T00:00+01:00' has a UTC offset: write the wall-clock "
                 "time without one (the schedule's timezone applies)", id="start-offset"),
    # An end before the start.
    pytest.param(campaign_raw,
                 section("schedule", start="2026-06-01T00:00", end="2026-05-31T23:59"),
                 "schedule", "end is before start", id="end-before-start"),
    # A zone that does not exist.
    pytest.param(campaign_raw, section("schedule", timezone="Mars/Olympus_Mons"),
                 "schedule.timezone",
                 "unknown IANA time zone 'Mars/Olympus_Mons'", id="bad-zone"),
    # A drip's until with an offset.
    pytest.param(drip_raw, section("schedule", until="2026-06-30T00:00Z"), "schedule.until",
                 "local time '2026-06-30T00:00Z' has a UTC offset: write the wall-clock "
                 "time without one (the schedule's timezone applies)", id="drip-until-offset"),
]


@pytest.mark.parametrize(("mutate", "error"), ERRORS)
def test_each_problem_is_reported_with_its_path(mutate: Mutate, error: str) -> None:
    """Each invalid campaign gets exactly one error, ``"<path>: <message>"``."""
    assert [error] == errors_of(mutate)


@pytest.mark.parametrize(("base", "mutate", "path", "message"), SCHEDULE_ERRORS)
def test_each_schedule_problem_is_reported_once_with_its_message(
    base: Raw, mutate: Mutate, path: str, message: str
) -> None:
    """Each invalid schedule gets exactly one error, under schedule, saying what is wrong."""
    (error,) = errors_of(mutate, base())
    assert (True, message) == (error.startswith("schedule"), error.split(": ", 1)[1])


@pytest.mark.parametrize(("base", "mutate", "path", "message"), SCHEDULE_ERRORS)
def test_each_schedule_problem_names_its_json_path(
    base: Raw, mutate: Mutate, path: str, message: str
) -> None:
    """A schedule error names the field's JSON path (``schedule.at``), as the interval
    check does (``schedule.cron``), not pydantic's location with the union's tag."""
    assert [f"{path}: {message}"] == errors_of(mutate, base())


def test_drip_until_before_at_is_refused() -> None:
    """A drip that stops enrolling joiners before it starts is a typo, refused as a
    recurring schedule's end before its start is."""
    errors = errors_of(section("schedule", until="2026-03-31T09:00"), drip_raw())
    assert 1 == len(errors) and errors[0].startswith("schedule") and "until" in errors[0]


def test_every_problem_is_listed_at_once() -> None:
    """Field errors and template errors of several sections are all reported."""

    def mutate(raw: dict[str, Any]) -> None:
        raw["content"] = {"channel": "email", "body": "Hi {{name}}"}
        raw["delivery"]["throttle_per_minute"] = 0

    assert [
        "content: email needs a subject",
        "delivery.throttle_per_minute: Input should be greater than or equal to 1",
        f"content.body: unknown template field {{{{name}}}}: {TEMPLATE_HINT}",
    ] == errors_of(mutate)


@pytest.mark.parametrize(
    ("cron", "min_interval_s", "error"),
    [
        # Every 2 hours is fine under the default hour.
        pytest.param("0 */2 * * *", None, None, id="2h-default"),
        # Hourly exactly meets the default.
        pytest.param("0 * * * *", None, None, id="1h-default"),
        # Every 30 minutes is refused by default...
        pytest.param("*/30 * * * *", None, "fires every 30m at times, more often than the "
                     "minimum interval of 1h00m", id="30m-default"),
        # ...and accepted by an account that allows 30 minutes,
        pytest.param("*/30 * * * *", 1800, None, id="30m-allowed"),
        # which still refuses every 20 minutes.
        pytest.param("*/20 * * * *", 1800, "fires every 20m at times, more often than the "
                     "minimum interval of 30m", id="20m-under-30m"),
        # An account may also ask for more: daily at most.
        pytest.param("0 9,21 * * *", 86400, "fires every 12h00m at times, more often than "
                     "the minimum interval of 24h00m", id="12h-under-1d"),
    ],
)
def test_recurring_minimum_interval(cron: str, min_interval_s: int | None,
                                    error: str | None) -> None:
    """A recurring campaign may not fire more often than the account's minimum interval."""
    raw = campaign_raw()
    raw["schedule"]["cron"] = cron
    kwargs = {} if min_interval_s is None else {"min_interval_s": min_interval_s}
    if error is None:
        assert cron == parse_campaign(raw, **kwargs).schedule.cron  # type: ignore[union-attr]
    else:
        assert [f"schedule.cron: {error}"] == errors_of(lambda raw: None, raw, **kwargs)


def test_once_and_drip_campaigns_have_no_interval() -> None:
    """The minimum interval is about recurring crons only."""
    assert parse_campaign(drip_raw(), min_interval_s=10**9).workflow == "nurture"


def test_campaign_key_is_one_record_per_version() -> None:
    assert "campaign:acme:spring-sale:3" == definition_key(parse_campaign(campaign_raw()))


@pytest.mark.parametrize(
    ("action", "key"),
    [
        # A cancel is final: its own record, never replaced by a resume.
        ("cancel", "campaign_control:acme:spring-sale:cancel"),
        # Pause and resume share one record, so the newest of them wins on compaction.
        ("pause", "campaign_control:acme:spring-sale:pause"),
        ("resume", "campaign_control:acme:spring-sale:pause"),
    ],
)
def test_control_keys(action: str, key: str) -> None:
    control = CampaignControl(account="acme", campaign_id="spring-sale", action=action)
    assert key == definition_key(control)
