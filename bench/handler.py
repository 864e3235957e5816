"""The campaign fan-out's pure handler per reached contact, without broker or Redis.

``python -m bench.handler [--contacts 3000] [--rounds 3] [--profile]``: a content SMS
campaign to contacts that each have a phone, SMS consent and a send or two in their cap
window; each contact through :func:`tables.campaigns.handle_delivery` (audience, the send
gate, the execution, the send command), then the send command's JSON and the new state's
JSON (what the worker writes). Prints µs per contact and the ratio to the 50 µs a worker
may spend per reached contact at the 20,000 contacts/s target (issue 24); ``--profile``
adds cProfile's view of one round. What the worker adds around it (state decode and
encode, produce, the Redis projection) is measured by ``python -m bench --paths
campaign``; docs/performance.md has both.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from producers.publisher import build_event
from streams.definitions import definition_key, parse_any
from streams.events import encode_event, parse_event
from tables.campaigns import CAMPAIGN_WORKFLOW, Delivery, handle_delivery
from tables.contacts import ContactState, apply_event
from tables.handlers import Context
from tables.registry import Registry
from tables.schedule import parse_local, resolve

ACCOUNT = "acme"
AT = "2027-03-02T09:00"
#: A worker's budget per reached contact at 20,000 contacts/s.
BUDGET_US = 50.0


def _registry() -> tuple[Registry, dict[str, Any]]:
    registry = Registry(quiet=True)
    campaign = {"kind": "campaign", "id": "spring", "account": ACCOUNT, "name": "Spring",
                "version": 1, "audience": {},
                "content": {"channel": "sms", "body": "Hi {{contact.first_name|there}}, "
                                                   "20% off today"},
                "schedule": {"type": "once", "at": AT, "timezone": "America/New_York"}}
    parsed = parse_any(campaign, 0)
    registry.apply(definition_key(parsed).encode(),
                   orjson.dumps(parsed.model_dump(mode="json")))
    found = registry.campaign(ACCOUNT, "spring")
    assert found is not None
    return registry, found


def _contacts(n: int, before: datetime) -> list[ContactState]:
    states = []
    for i in range(n):
        state = None
        for k, (kind, data) in enumerate((
                ("contact.created", {"phone": "+14155550123", "first_name": "Ada",
                                     "timezone": "America/New_York",
                                     "consent": {"sms": True}}),
                ("contact.tagged", {"tag": "vip"}))):
            event = parse_event(encode_event(build_event(
                ACCOUNT, f"c{i:06d}", kind, data, event_id=f"c{i}-{k}", time=before)))
            state = apply_event(state, event, before, 24 * 3600).state
        assert state is not None
        states.append(orjson.loads(orjson.dumps(state)))  # as the store hands it back
    return states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    registry, campaign = _registry()
    zone = ZoneInfo(campaign["schedule"]["timezone"])
    local = parse_local(AT)
    at = resolve(local, zone)
    workflow = registry.lookup(ACCOUNT, CAMPAIGN_WORKFLOW + "spring", 1)
    assert workflow is not None
    delivery = Delivery(campaign, AT, local, at, workflow, zone.key)
    ctx = Context(registry, lambda account, address: None)
    now = at + timedelta(seconds=1)
    states = _contacts(args.contacts, at - timedelta(days=1))

    def one_round() -> int:
        sent = 0
        for state in states:
            outcome, verdict = handle_delivery(state, delivery, ctx, now)
            for command in outcome.effects.sends:
                command.model_dump_json(exclude_none=True).encode()
            orjson.dumps(outcome.state)
            sent += verdict.outcome == "sent"
        return sent

    times = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        sent = one_round()
        times.append((time.perf_counter() - started) / len(states) * 1e6)
        assert sent == len(states), f"{sent} of {len(states)} sent"
    best = min(times)
    print(f"campaign handler: {len(states)} contacts, {args.rounds} rounds, "
          f"{datetime.now(UTC):%Y-%m-%d}")
    print(f"  per reached contact: best {best:.1f} µs, rounds "
          + ", ".join(f"{t:.1f}" for t in times))
    print(f"  ratio to the {BUDGET_US:.0f} µs budget (20,000 contacts/s per worker): "
          f"{best / BUDGET_US:.2f}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(one_round)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
