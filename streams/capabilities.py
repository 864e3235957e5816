"""What the broker can do, asked of the broker itself once per process.

dripstream runs on Apache Kafka (and the services built on it) and on the embedded Tansu
broker of ``dripstream dev`` and the tests. They differ in three ways that change what
the code must do, and each is probed rather than inferred from a broker's name:

- **idempotence**: an ``InitProducerId`` without a transactional id is granted. Without
  it the producers do not ask for idempotence (Tansu answers ``UnknownError``, and
  aiokafka logs that as an ERROR on every start).
- **transactions**: an ``InitProducerId`` with a transactional id is granted by the
  transaction coordinator. With them the worker commits each batch's effects, state and
  input offsets in one transaction (``DRIPSTREAM_GUARANTEE=exactly_once``, the default
  where they exist) and the readers read ``read_committed``.
- **exact end offsets**: after a two-record batch, ``ListOffsets(latest)`` answers the
  offset after the second record. Tansu answers one past the batch's *first* record;
  where that is so, end offsets are read from a Fetch's high watermark instead
  (:func:`streams.compat.end_offsets`) — table recovery and the definitions followers
  depend on it.

The end-offset probe writes two small records to ``<prefix>capabilities`` (one
partition, an hour's retention), created here when missing. Compaction is not probed
(it runs later, on the broker's schedule): nothing in dripstream depends on it having
happened; on Tansu it never does, which only makes a restart read more.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    ConcurrentTransactions,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.protocol.transaction import InitProducerIdRequest
from aiokafka.structs import TopicPartition

from streams.compat import fetch_highwaters
from streams.topics import wait_for_leaders

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = ["BrokerRefused", "BrokerUnreachable", "Capabilities", "GuaranteeError",
           "guarantee", "probe"]

log = logging.getLogger(__name__)

#: The transactional id the probe asks for (one per topic prefix, so probes never pile
#: up coordinator state: Kafka forgets an unused id after a week).
_PROBE_TXN = "{prefix}capabilities-probe"


@dataclass(frozen=True)
class Capabilities:
    idempotence: bool
    transactions: bool
    exact_end_offsets: bool

    def describe(self) -> str:
        def word(ok: bool) -> str:
            return "yes" if ok else "no"

        return (f"transactions {word(self.transactions)}, idempotence "
                f"{word(self.idempotence)}, exact end offsets {word(self.exact_end_offsets)}")


class BrokerUnreachable(ConnectionError):
    """No bootstrap server answered (the network, or a broker down): worth a retry."""


class BrokerRefused(ConnectionError):
    """A broker answered and refused the credentials or certificate: a configuration
    error (the security settings), not worth a retry."""


async def diagnose(settings: Settings) -> ConnectionError:
    """Why no client could bootstrap, as one line: aiokafka only logs each server's error
    and raises "Unable to bootstrap"; a direct connection to each says what it was."""
    from aiokafka.conn import create_conn

    reasons = []
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            conn = await create_conn(host, int(port), request_timeout_ms=10_000,
                                     **settings.kafka_security())
        except SaslAuthenticationFailed as exc:
            return BrokerRefused(f"{server} refused the credentials of "
                                 f"{settings.sasl_username!r} ({settings.sasl_mechanism}): "
                                 f"{exc.description}")
        except ssl.SSLError as exc:
            return BrokerRefused(f"{server}: TLS failed ({exc.reason or exc}); check "
                                 "DRIPSTREAM_SSL_CAFILE")
        except (OSError, KafkaError) as exc:
            reasons.append(f"{server}: {exc}")
            continue
        conn.close()
        reasons.append(f"{server} answers, but the client could not bootstrap from it")
    return BrokerUnreachable("; ".join(reasons) or "no bootstrap server configured")


class GuaranteeError(ValueError):
    """The guarantee asked for needs what the broker lacks."""


def guarantee(settings: Settings, capabilities: Capabilities) -> str:
    """``exactly_once`` or ``at_least_once``, from ``DRIPSTREAM_GUARANTEE`` and what the
    broker can do (``auto``: exactly-once where there are transactions)."""
    if settings.guarantee == "exactly_once" and not capabilities.transactions:
        raise GuaranteeError("DRIPSTREAM_GUARANTEE=exactly_once needs a broker with "
                             "transactions; this one has none (" + capabilities.describe()
                             + ")")
    if settings.guarantee == "auto":
        return "exactly_once" if capabilities.transactions else "at_least_once"
    return settings.guarantee


#: Apache Kafka 0.11+ as dripstream uses it: for callers that know the broker is Kafka.
KAFKA = Capabilities(idempotence=True, transactions=True, exact_end_offsets=True)
#: What the embedded Tansu broker was measured to support (docs/architecture.md).
TANSU = Capabilities(idempotence=False, transactions=False, exact_end_offsets=False)

#: How long a coordinator that is still loading is waited for.
_COORDINATOR_WAIT_S = 30.0

_cache: dict[tuple[str, ...], Capabilities] = {}


async def probe(settings: Settings) -> Capabilities:
    """The broker's capabilities (cached per broker, topic prefix and credentials)."""
    secret = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    key = (*settings.bootstrap_servers, settings.topic_prefix, settings.security_protocol,
           settings.sasl_mechanism, settings.sasl_username or "", secret,
           str(settings.ssl_cafile))
    if key not in _cache:
        client = AIOKafkaClient(bootstrap_servers=settings.bootstrap_servers,
                                **settings.kafka_security())
        clients_log = logging.getLogger("aiokafka")
        level = clients_log.level
        clients_log.setLevel(logging.CRITICAL)  # a refusal is said in one line, below
        try:
            await client.bootstrap()
        except KafkaConnectionError:
            await client.close()
            raise await diagnose(settings) from None
        except BaseException:  # cancelled while bootstrapping: closed all the same
            await client.close()
            raise
        finally:
            clients_log.setLevel(level)
        try:
            idempotence = await _granted(client, None)
            transactions = idempotence and await _granted(
                client, _PROBE_TXN.format(prefix=settings.topic_prefix))
        finally:
            await client.close()
        exact = await _exact_end_offsets(settings)
        _cache[key] = Capabilities(idempotence, transactions, exact)
        log.info("broker capabilities: %s", _cache[key].describe())
    return _cache[key]


async def _granted(client: AIOKafkaClient, transactional_id: str | None) -> bool:
    """Whether an ``InitProducerId`` (idempotent, or for ``transactional_id``) is granted.

    A coordinator still loading (a broker just started: Kafka creates its transaction
    log on the first request) is waited for, up to :data:`_COORDINATOR_WAIT_S`, and so
    is ``CONCURRENT_TRANSACTIONS``: another ``InitProducerId`` for the same id is under
    way — every worker of a prefix probes the same id, and while a broker fails over the
    first one waits for the transaction log's replicas — which the Java client retries
    and aiokafka marks final. Taken for a refusal it made a worker of an exactly-once
    group run at least once, reading uncommitted (the chaos run, docs/reliability.md).
    An answer still "not now" at the deadline raises (the worker exits 70 and is
    restarted): a broker not answering has not said it has no transactions."""
    deadline = time.monotonic() + _COORDINATOR_WAIT_S
    while True:
        try:
            if transactional_id is None:
                node = client.get_random_node()
            else:
                node = await client.coordinator_lookup(1, transactional_id)  # 1: transaction
            response = await client.send(node, InitProducerIdRequest(
                transactional_id=transactional_id, transaction_timeout_ms=10_000))
            error = for_code(response.error_code) if response.error_code else None
        except KafkaError as exc:
            error = type(exc)
        if error is None:
            return True
        if not (getattr(error, "retriable", False) or error is ConcurrentTransactions):
            log.debug("InitProducerId(%r) refused: %s", transactional_id, error.__name__)
            return False
        if time.monotonic() > deadline:
            raise error(f"InitProducerId({transactional_id!r}) not answered in "
                        f"{_COORDINATOR_WAIT_S:.0f}s")
        await asyncio.sleep(0.2)


async def _exact_end_offsets(settings: Settings) -> bool:
    """Whether ``ListOffsets(latest)`` counts every record of a two-record batch."""
    topic = f"{settings.topic_prefix}capabilities"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                **settings.kafka_security())
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            try:
                await admin.create_topics([NewTopic(
                    topic, 1, settings.replication_factor,
                    topic_configs={"retention.ms": str(3_600_000)})])
            except TopicAlreadyExistsError:
                pass  # another process probed at the same moment
            await wait_for_leaders(admin, [topic])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers,
                                enable_idempotence=False, acks="all",
                                **settings.kafka_security())
    await producer.start()
    try:
        batch = producer.create_batch()
        batch.append(key=None, value=b"probe", timestamp=None)
        batch.append(key=None, value=b"probe", timestamp=None)
        await (await producer.send_batch(batch, topic, partition=0))
        tp = TopicPartition(topic, 0)
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                    **settings.kafka_security())
        await consumer.start()
        try:
            # Only probes write here, each a two-record batch: a broker that answers one
            # past the last batch's first record is one short of the Fetch's high
            # watermark whatever other workers probe meanwhile (comparing with our own
            # batch's offsets took a later probe's batch for ours: Tansu passed as exact).
            # A write between the two answers can make Kafka look short too: asked again.
            for _ in range(3):
                listed = (await consumer.end_offsets([tp]))[tp]
                if listed == (await fetch_highwaters(consumer, [tp]))[tp]:
                    return True
            return False
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
