"""``python -m bench.api``: the admin API's figures (docs/performance.md, "Admin API").

One embedded broker, Redis, one worker and a served API (``dripstream api``, SQLite
store, uvicorn, one process). Measures:

- read-model staleness: an event POSTed to ``/events`` until ``GET /contacts/{id}``
  shows it (p50 / p95 over ``--staleness`` events, one at a time);
- ``GET /contacts/{id}`` requests/s (``--concurrency`` clients, ``--seconds``);
- ``POST /events`` with a batch of 100 events, requests/s (and events/s).

Every wait has a deadline; nothing asserts on a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

from producers.publisher import build_event
from streams.embedded import EmbeddedBroker, EmbeddedRedis, WorkerProcess
from streams.settings import Settings
from streams.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _until(probe: Any, deadline_s: float) -> Any:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if found := await probe():
            return found
        await asyncio.sleep(0.002)
    raise TimeoutError("deadline passed")


async def _rate(seconds: float, concurrency: int, call: Any) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await call()
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _phase(pid: int, seconds: float, concurrency: int, call: Any) -> tuple[float, float]:
    """(requests/s, the API process's CPU ms per request): the client shares the machine,
    so the second tells what one core of the API itself would serve (1000 / ms)."""
    cpu = _cpu_s(pid)
    started = time.monotonic()
    rate = await _rate(seconds, concurrency, call)
    done = rate * (time.monotonic() - started)
    return rate, (_cpu_s(pid) - cpu) * 1000 / max(done, 1)


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def measure(base: str, key: str, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    h = {"Authorization": f"Bearer {key}"}
    events = f"{base}/v1/accounts/bench/events"
    async with httpx.AsyncClient(headers=h, timeout=30,
                                 limits=httpx.Limits(max_connections=64)) as c:
        first = build_event("bench", "c-0", "contact.created", {"attributes": {"n": 0}})
        assert (await c.post(events, json=first)).json()["accepted"] == 1
        await _until(lambda: _has(c, base, "c-0", None), 60)  # the worker is up
        lags = []
        for n in range(args.staleness):
            tag = f"t{n}"
            started = time.perf_counter()
            await c.post(events, json=build_event("bench", "c-0", "contact.tagged",
                                                  {"tag": tag}))
            await _until(lambda t=tag: _has(c, base, "c-0", t), 30)
            lags.append((time.perf_counter() - started) * 1000)
        get_rate, get_ms = await _phase(
            pid, args.seconds, args.concurrency,
            lambda: c.get(f"{base}/v1/accounts/bench/contacts/c-0"))
        batch = [build_event("bench", f"c-{n % 500}", "contact.tagged", {"tag": "x"})
                 for n in range(100)]
        post_rate, post_ms = await _phase(pid, args.seconds, args.concurrency // 2 or 1,
                                          lambda: c.post(events, json=batch))
    return {"staleness_ms": {"p50": round(_pct(lags, 0.5), 1),
                             "p95": round(_pct(lags, 0.95), 1), "n": len(lags),
                             "mean": round(statistics.mean(lags), 1)},
            "get_contact_rps": round(get_rate), "post_events_batch100_rps": round(post_rate),
            "api_cpu_ms_per_get": round(get_ms, 2), "api_cpu_ms_per_post100": round(post_ms, 2),
            "get_contact_rps_per_api_core": round(1000 / get_ms) if get_ms else None,
            "post100_rps_per_api_core": round(1000 / post_ms) if post_ms else None,
            "post_events_per_s": round(post_rate * 100), "concurrency": args.concurrency}


async def _has(c: httpx.AsyncClient, base: str, contact: str, tag: str | None) -> bool:
    r = await c.get(f"{base}/v1/accounts/bench/contacts/{contact}")
    return r.status_code == 200 and (tag is None or tag in r.json()["contact"]["tags"])


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.api")
    p.add_argument("--staleness", type=int, default=200, help="events timed one by one")
    p.add_argument("--seconds", type=float, default=5.0, help="each throughput phase")
    p.add_argument("--concurrency", type=int, default=16, help="clients at once")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    broker = EmbeddedBroker(log_path=tmp / "tansu.log").start()
    url = "redis://127.0.0.1:6379/0"
    server = None
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        server = EmbeddedRedis().start()
        url = server.url
    prefix, key, port = f"b{uuid.uuid4().hex[:8]}.", f"boot-{uuid.uuid4().hex}", _port()
    env = {**os.environ, "DRIPSTREAM_BROKER": broker.url, "DRIPSTREAM_PROFILE": "embedded",
           "DRIPSTREAM_TOPIC_PREFIX": prefix, "DRIPSTREAM_REDIS_URL": url,
           "DRIPSTREAM_DATA_DIR": str(tmp / "data"), "DRIPSTREAM_LOG_LEVEL": "warning"}
    asyncio.run(ensure_topics(Settings(broker=broker.url, profile="embedded",
                                       topic_prefix=prefix, redis_url=url)))
    worker = WorkerProcess(env, tmp / "worker.log", cwd=ROOT).start()
    api_env = {**env, "DRIPSTREAM_API_PORT": str(port), "DRIPSTREAM_API_BOOTSTRAP_KEY": key,
               "DRIPSTREAM_API_RATE_LIMIT": "1000000000",
               "DRIPSTREAM_API_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'api.db'}"}
    with open(tmp / "api.log", "ab") as log:
        api = subprocess.Popen([sys.executable, "-m", "streams.cli", "api"], env=api_env,
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or api.poll() is not None:
                    raise SystemExit(f"the API did not start: see {tmp / 'api.log'}") from None
                time.sleep(0.1)
        print(json.dumps(asyncio.run(measure(base, key, args, api.pid)), indent=2))
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(15)
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        broker.stop()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
