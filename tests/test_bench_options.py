"""The bench's broker and guarantee options (bench/__main__.py) and the checks that keep
its counts honest on a broker with transactions (bench/harness.py), without a broker."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import bench.__main__ as bench_main
from bench.harness import Config, Result, guarantee_mismatches
from streams.apache_kafka import KafkaUnavailable


def config(workdir: Path, *, exactly_once: bool) -> Config:
    return Config(bootstrap="127.0.0.1:9", redis_url="redis://", redis_desc="", events=1,
                  partitions=1, latency_events=1, latency_seconds=1.0, rate=1.0,
                  workflow_rates=(1.0,), timeout=1.0, profile="embedded", workdir=workdir,
                  run_id="t", exactly_once=exactly_once)


@pytest.mark.parametrize(("argv", "broker", "guarantee"), [
    ([], None, "auto"),  # an embedded Tansu, the workers' own choice
    (["--broker", "kafka"], "kafka", "auto"),  # an Apache Kafka node started by the bench
    (["--broker", "127.0.0.1:9092", "--guarantee", "at_least_once"], "127.0.0.1:9092",
     "at_least_once"),  # a given broker, exactly-once switched off
])
def test_broker_and_guarantee_options(argv: list[str], broker: str | None,
                                      guarantee: str) -> None:
    """--broker and --guarantee are parsed as given, with auto as the default guarantee."""
    args = bench_main.parse_args(argv)
    assert (broker, guarantee) == (args.broker, args.guarantee)


def test_an_unknown_guarantee_is_refused() -> None:
    """--guarantee takes only the values DRIPSTREAM_GUARANTEE takes."""
    with pytest.raises(SystemExit):
        bench_main.parse_args(["--guarantee", "twice"])


def test_kafka_unavailable_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Without Java or Maven, --broker kafka says so in one line and exits 2."""
    class NoKafka:
        def __init__(self, work_dir: Path, nodes: int = 1) -> None:
            pass

        def start(self) -> NoKafka:
            raise KafkaUnavailable("Apache Kafka needs Java 17+ and Maven on PATH; missing: java")

        def stop(self) -> None:
            pass

    monkeypatch.setattr(bench_main, "KafkaCluster", NoKafka)
    assert 2 == bench_main.main(["--broker", "kafka", "--paths", "raw"])
    err = capsys.readouterr().err
    assert ["python -m bench: Apache Kafka needs Java 17+ and Maven on PATH; missing: java"
            ] == err.splitlines()


@pytest.mark.parametrize(("exactly_once", "printed", "flagged"), [
    (True, "exactly_once", 0),  # the worker ran what the bench read for
    (False, "at_least_once", 0),
    (False, "exactly_once", 1),  # counts by end offsets would count its commit markers
    (True, "at_least_once", 1),  # read_committed would be right, but the figures mislabelled
])
def test_guarantee_mismatches(tmp_path: Path, exactly_once: bool, printed: str,
                              flagged: int) -> None:
    """A worker log whose guarantee differs from the bench's is reported; a log without
    the line (a channel worker) is not."""
    (tmp_path / "worker-a-0.log").write_text(
        "WARNING: something\n"
        f"broker: transactions yes, idempotence yes, exact end offsets yes; guarantee: {printed}\n")
    (tmp_path / "worker-a-sms.log").write_text("channel worker started\n")
    assert flagged == len(guarantee_mismatches(config(tmp_path, exactly_once=exactly_once)))


def test_cpu_per_event() -> None:
    """CPU per event is the phase's CPU seconds over its events, in µs; None unmeasured."""
    result = Result("p", events=20_000, cpu_s={"worker": 2.0, "broker": None})
    assert (100.0, None, None) == (result.cpu_us_per_event("worker"),
                                   result.cpu_us_per_event("broker"),
                                   result.cpu_us_per_event("redis"))


@pytest.mark.parametrize(("argv", "sizes"), [
    ([], (1_000_000, 100_000)),  # the window: 1M events over 100k contacts
    (["--sim-events", "20000", "--sim-contacts", "2000"], (20_000, 2_000)),
    (["--sim-events", "5", "--sim-contacts", "5"], (5, 5)),  # sign-ups only
])
def test_simulate_sizes(argv: list[str], sizes: tuple[int, int]) -> None:
    """--sim-events and --sim-contacts size the simulate path's recorded window."""
    args = bench_main.parse_args(["--paths", "simulate", *argv])
    assert sizes == (args.sim_events, args.sim_contacts)


@pytest.mark.parametrize("argv", [
    ["--sim-events", "10", "--sim-contacts", "11"],  # more contacts than sign-ups
    ["--sim-contacts", "0"],
    ["--sim-rate", "-1"],  # 0 is a backlog; a rate is positive
])
def test_simulate_sizes_refused(argv: list[str]) -> None:
    """Every contact needs its contact.created among the events, and a rate is not
    negative."""
    with pytest.raises(SystemExit):
        bench_main.parse_args(argv)


def test_simulate_workload() -> None:
    """Every contact's contact.created comes first, then the mix, keyed by contact."""
    from bench.simulate import sim_events

    events = [(key, orjson.loads(value)) for key, value in sim_events("r", 50, 10)]
    assert [e["type"] for _, e in events[:10]] == ["contact.created"] * 10
    assert {key for key, _ in events} == {f"r-s{i}".encode() for i in range(10)}
    assert {e["type"] for _, e in events[10:]} <= {
        "custom.page_viewed", "message.delivered", "message.clicked", "custom.cart_viewed",
        "purchase.completed", "contact.tagged", "contact.updated"}
    assert all(key.decode() == e["subject"] for key, e in events)
