"""Kafka adapters (kafka-python) for the bus ports: producer, consumer-group consumer, topic admin.

The producer waits for ``acks=all`` (idempotent where the broker supports it) and :meth:`flush`
raises if any record was not acknowledged, so a collector only treats a batch as delivered once
Kafka has it. The consumer never auto-commits: the worker commits after its results are written.
Connections are made in ``setup()``, never in ``__init__``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from dcpue.errors import CommitError, DcpueError, SinkError, missing_extra
from dcpue.ports import STATE_KEY_PART, Message, state_key_site
from dcpue.settings import KafkaSettings, TopicSettings

log = logging.getLogger(__name__)


def _kafka() -> Any:
    try:
        import kafka
    except ImportError as exc:
        raise missing_extra("kafka-python", "kafka") from exc
    return kafka


REDACTED = "**********"


class _RedactSecrets(logging.Filter):
    """Blanks known secrets out of kafka-python's records: at DEBUG it logs the admin client's whole
    configuration (``sasl_plain_password`` included) and every request (SASL PLAIN auth bytes included)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, secret: str) -> None:
        self.secrets.add(secret)
        self.secrets.add(repr(secret.encode())[2:-1])  # as it appears inside a bytes repr (auth_bytes=b'…')

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 — a record that cannot be formatted is kafka-python's problem, not ours
            return True
        redacted = text
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret:
                redacted = redacted.replace(secret, REDACTED)
        if redacted != text:
            record.msg, record.args = redacted, None
        return True


_redactor = _RedactSecrets()


def _redact_in_client_logs(secret: str) -> None:
    """Attach the redacting filter to every kafka-python logger (logger filters are not inherited)."""
    _redactor.add(secret)
    names = [n for n in logging.root.manager.loggerDict if n == "kafka" or n.startswith("kafka.")]
    for name in names:
        logger = logging.getLogger(name)
        if _redactor not in logger.filters:
            logger.addFilter(_redactor)


def connection_config(settings: KafkaSettings) -> dict[str, Any]:
    """Client options shared by producer, consumer and admin (TLS/SASL passed through; no secret logged)."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism:
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else None
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        config["sasl_plain_password"] = password
        if password:
            _kafka()  # kafka-python's loggers exist once it is imported
            _redact_in_client_logs(password)
    for option in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, option)
        if value is not None:
            config[option] = str(value)
    return config


class KafkaProducerAdapter:
    """:class:`~dcpue.ports.Producer` on Kafka; records keyed by site stay on one partition."""

    CLOSE_JOIN_S = 5.0  # how long a close waits for the network thread it stopped

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer: Any = None
        self._futures: list[Any] = []

    def setup(self) -> KafkaProducerAdapter:
        kafka = _kafka()
        compression = None if self.settings.compression_type == "none" else self.settings.compression_type
        try:
            self._producer = kafka.KafkaProducer(
                **connection_config(self.settings),
                acks="all",
                enable_idempotence=self.settings.enable_idempotence,
                linger_ms=self.settings.linger_ms,
                compression_type=compression,
                retries=2**31 - 1 if self.settings.enable_idempotence else 5,
                # send() waits this long for metadata when the broker is away (kafka-python's default: 60 s)
                max_block_ms=int(self.settings.send_timeout_s * 1000),
            )
        except kafka.errors.KafkaError as exc:
            raise DcpueError(f"cannot connect to Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        return self

    def send(self, topic: str, value: bytes, key: str | None = None,
             headers: tuple[tuple[str, bytes], ...] = (), partition: int | None = None) -> None:
        """Queue a record (on ``partition`` if given, else where the default partitioner puts ``key``)."""
        kafka = _kafka()
        try:
            future = self._producer.send(topic, value=value, key=None if key is None else key.encode(),
                                         headers=list(headers), partition=partition)
        except kafka.errors.KafkaError as exc:
            if not exc.retriable:  # a record the broker can never take is not retried forever
                raise
            # right after a broker restart the metadata wait can fail on a refused connection: the caller retries
            raise SinkError(f"Kafka not accepting records for {topic}: {exc}") from exc
        self._futures.append(future)

    def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has (waits for its metadata like :meth:`send`)."""
        kafka = _kafka()
        try:
            return len(self._producer.partitions_for(topic))
        except kafka.errors.KafkaError as exc:
            raise SinkError(f"Kafka did not tell the partitions of {topic}: {exc}") from exc

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged; raise :class:`SinkError` otherwise.

        After an error the records are forgotten here: the caller sends them again (its writes are idempotent).
        """
        timeout = timeout_s if timeout_s is not None else self.settings.send_timeout_s
        try:
            self._producer.flush(timeout=timeout)
        except _kafka().errors.KafkaTimeoutError as exc:  # acknowledgements slower than the timeout: not written
            self._futures = []
            raise SinkError(f"Kafka did not acknowledge records within {timeout:g} s: {exc}") from exc
        futures, self._futures = self._futures, []
        failed = unacknowledged(futures)
        if failed:
            raise SinkError(f"{len(failed)} of {len(futures)} records not acknowledged by Kafka: "
                            f"{_why_unacknowledged(failed[0])}")

    def close(self, timeout_s: float | None = None) -> None:
        """Send what is queued (waiting up to ``timeout_s``, default ``send_timeout_s``) and disconnect.

        Records still unacknowledged then are dropped with a warning: their senders have not committed or
        acknowledged anything past them (the spool keeps them, a worker's offsets stay behind them).
        """
        producer, self._producer, self._futures = self._producer, None, []
        if producer is None:
            return
        timeout = self.settings.send_timeout_s if timeout_s is None else timeout_s
        kafka = _kafka()
        try:
            producer.close(timeout=timeout)
        except kafka.errors.KafkaTimeoutError:
            # kafka-python's close flushes first and raises on the flush's timeout, leaving its network thread and
            # connections up: every close while the broker was away leaked them. Stop the thread without sending
            # (it fails the queued records as it ends), then close again: nothing is left to flush.
            log.warning("Kafka producer closed with records still unacknowledged: they are dropped here (a "
                        "collector's spool keeps them, a worker has not committed past them)")
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(self.CLOSE_JOIN_S)
            try:
                producer.close(timeout=0)
            except kafka.errors.KafkaTimeoutError:  # the thread is still in a blocking call (a slow DNS lookup)
                log.warning("Kafka producer's network thread still stopping after %g s", self.CLOSE_JOIN_S)


def unacknowledged(futures: list[Any]) -> list[Any]:
    """The send futures not acknowledged: failed, still pending, or "acknowledged" without an offset.

    With ``acks=all`` a broker gives every record it appended its offset. Tansu 0.6 on S3 storage, restarted after a
    crash, answers some produce requests with success and offset -1, and drops some of those records (reproduced in
    docs/reliability.md), so such an answer counts as a failure and the caller sends again.
    """
    return [f for f in futures if not f.is_done or f.failed() or f.value.offset < 0]


def _why_unacknowledged(future: Any) -> str:
    if not future.is_done:
        return "not acknowledged in time"
    if future.failed():
        return str(future.exception)
    return "the broker answered without an offset (the record may not have been appended)"


def _create_time(record: Any) -> int | None:
    """The producer's send time [ms] of a consumed record (None for broker append time or none at all)."""
    return record.timestamp if getattr(record, "timestamp_type", None) == 0 and record.timestamp >= 0 else None


def partition_for_key(key: str, partitions: int) -> int:
    """Where the Java client's (and kafka-python's) default partitioner puts a keyed record."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _at_highwater(consumer: Any, tp: Any) -> bool:
    """Whether a kafka-python ``consumer`` has read partition ``tp`` up to the high watermark its last fetch
    reported (False before any fetch answered)."""
    highwater = consumer.highwater(tp)
    if highwater is None:
        return False
    position = consumer.position(tp, timeout_ms=1000)
    return position is not None and position >= highwater


class KafkaConsumerAdapter:
    """:class:`~dcpue.ports.Consumer` in a consumer group, committing only when told to.

    ``on_revoked`` / ``on_assigned`` (set before the first :meth:`poll`) are called with partition
    numbers of the first subscribed topic when the group rebalanced: by :meth:`poll`, on the caller's
    thread, after the rebalance and before the records of the new assignment are returned.
    (kafka-python runs its own listener on its network thread, where blocking calls such as reading
    the state topic are not allowed; so the listener only records what happened.)
    """

    durable_offsets = True  # offsets identify a record across restarts and workers

    # kafka-python 3.0 (up to 3.0.12 at least) keeps only a group join that completes while a poll() is waiting
    # for it: one that completes between polls is dropped and the next poll sends a new JoinGroup, which
    # starts the group's rebalance over for every member. A caller that polls briefly and then works (or
    # polls with timeout 0 while paused) may never join. So once a rebalance has begun, :meth:`poll` keeps
    # polling back to back until it completes, for up to JOIN_WAIT_S. (This relies on the eager protocol of
    # kafka-python's default assignors, which report every assignment, an empty one included.)
    JOIN_WAIT_S = 10.0
    JOIN_SLICE_MS = 500

    def __init__(self, settings: KafkaSettings, topics: list[str], group_id: str | None = None,
                 fill_fetches: bool = False) -> None:
        """``fill_fetches``: fetches wait for ``fetch_min_bytes`` or ``fetch_max_wait_ms`` (the analytics worker's
        readings: fewer, larger steps); otherwise they return as soon as there is a record (low-traffic topics)."""
        self.settings = settings
        self.topics = list(topics)
        self.group_id = group_id or settings.group_id
        self.fill_fetches = fill_fetches
        self.on_revoked: Callable[[list[int]], None] | None = None
        self.on_assigned: Callable[[list[int]], None] | None = None
        # called on kafka-python's network thread when the partitions are about to be revoked, before this member
        # rejoins the group (no other member has them yet): it may wait for work that must land first, and must
        # not use this consumer
        self.before_revoke: Callable[[], None] | None = None
        self._consumer: Any = None
        self._subscribed = False
        self._events: list[tuple[str, list[int]]] = []
        self._joining = False  # between a rebalance's revocation and its assignment

    def setup(self) -> KafkaConsumerAdapter:
        kafka = _kafka()
        try:
            self._consumer = kafka.KafkaConsumer(
                **connection_config(self.settings),
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=self.settings.session_timeout_ms,
                heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
                max_poll_interval_ms=self.settings.max_poll_interval_ms,
                max_partition_fetch_bytes=self.settings.max_partition_fetch_bytes,
                fetch_max_bytes=self.settings.fetch_max_bytes,
                fetch_min_bytes=self.settings.fetch_min_bytes if self.fill_fetches else 1,
                fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            )
        except kafka.errors.KafkaError as exc:
            raise DcpueError(f"cannot connect to Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        return self

    def _subscribe(self) -> None:
        from kafka import ConsumerRebalanceListener

        adapter = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                adapter._joining = True  # first: the caller's poll waits for the join while before_revoke waits
                if adapter.before_revoke is not None:
                    adapter.before_revoke()
                adapter._record("revoked", revoked)

            def on_partitions_lost(self, lost: Any) -> None:
                # evicted from the group: the partitions are another member's already, nothing to wait for
                adapter._joining = True
                adapter._record("revoked", lost)

            def on_partitions_assigned(self, assigned: Any) -> None:
                adapter._joining = False
                adapter._record("assigned", assigned)

        self._consumer.subscribe(self.topics, listener=Listener())
        self._subscribed = True

    def _record(self, kind: str, partitions: Any) -> None:
        self._events.append((kind, sorted(tp.partition for tp in partitions if tp.topic == self.topics[0])))

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Message]:
        if not self._subscribed:
            self._subscribe()
        kafka = _kafka()
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
            deadline = time.monotonic() + self.JOIN_WAIT_S
            while self._joining and time.monotonic() < deadline:  # see JOIN_WAIT_S
                batches = self._consumer.poll(timeout_ms=self.JOIN_SLICE_MS, max_records=max_records)
        except kafka.errors.KafkaError as exc:
            if not exc.retriable:
                raise
            # kafka-python 3 can raise a refused connection out of poll() while the broker restarts; the group
            # membership and positions are kept, so the next poll carries on where this one stopped
            log.warning("Kafka poll failed, retrying: %s", exc)
            time.sleep(min(timeout_s, 1.0))
            return []
        if self._events:
            assigned = any(kind == "assigned" for kind, _ in self._events)
            while self._events:
                kind, partitions = self._events.pop(0)
                callback = self.on_revoked if kind == "revoked" else self.on_assigned
                if callback is not None:
                    callback(partitions)
            if assigned:
                # The owner restores its sites from checkpoints, which include at least the committed
                # offsets but maybe not what this consumer fetched before the rebalance (a partition
                # kept across it may keep its in-memory position): restart every partition from its
                # committed offset and drop what this poll fetched.
                self._rewind_to_committed()
                return []
        out: list[Message] = []
        for records in batches.values():
            for r in records:
                out.append(Message(r.topic, r.value, None if r.key is None else r.key.decode(errors="replace"),
                                   tuple((k, v) for k, v in (r.headers or [])), r.partition, r.offset,
                                   _create_time(r)))
        return out

    def _rewind_to_committed(self) -> None:
        for tp in self._consumer.assignment():
            committed = self._consumer.committed(tp)
            log.info("%s[%d]: resuming at committed offset %s", tp.topic, tp.partition, committed)
            if committed is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    def caught_up(self) -> bool:
        """True once partitions are assigned and each position has reached its high watermark."""
        assignment = self._consumer.assignment() if self._consumer is not None else set()
        if not assignment:
            return False
        return all(_at_highwater(self._consumer, tp) for tp in assignment)

    def caught_up_partitions(self) -> set[int]:
        """Assigned partitions of the first subscribed topic whose position has reached the high watermark
        last reported by the broker (no backlog known)."""
        done = set()
        for tp in self._consumer.assignment() if self._consumer is not None else ():
            if tp.topic == self.topics[0] and _at_highwater(self._consumer, tp):
                done.add(tp.partition)
        return done

    def partition_count(self) -> int:
        """Partitions of the first subscribed topic."""
        return len(self._consumer.partitions_for_topic(self.topics[0]) or ())

    def partitions_for(self, keys: Iterable[str]) -> dict[str, int]:
        """Per key: the partition of the first subscribed topic that the default partitioner gives it."""
        count = self.partition_count()
        return {key: partition_for_key(key, count) for key in keys}

    def pause(self) -> None:
        """Stop fetching (polls still keep the group membership alive)."""
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._consumer.resume(*self._consumer.paused())

    def positions(self) -> dict[Any, Any]:
        """Where this consumer stands (what :meth:`commit` would commit now), to commit later."""
        return self._consumer._subscription.all_consumed_offsets()  # what KafkaConsumer.commit() itself takes

    def commit(self, positions: dict[Any, Any] | None = None) -> None:
        """Commit the positions after everything returned by :meth:`poll` (synchronously), or ``positions`` (of
        :meth:`positions`; those of partitions no longer assigned are left to their new owner).

        Raises :class:`~dcpue.errors.CommitError` if the group refuses it (rebalancing, or this
        member was removed).
        """
        kafka = _kafka()
        try:
            if positions is None:
                self._consumer.commit()
            else:
                assigned = self._consumer.assignment()
                kept = {tp: offset for tp, offset in positions.items() if tp in assigned}
                if kept:
                    self._consumer.commit(kept)
        except kafka.errors.KafkaError as exc:
            raise CommitError(f"offset commit refused by group {self.group_id}: {exc}") from exc

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None


class KafkaTailConsumer:
    """A :class:`~dcpue.ports.Consumer` outside any group that reads every partition of its topics.

    ``topics`` maps each topic to where reading starts: ``"earliest"`` (the whole topic: a compacted
    topic of current settings) or ``"latest"`` (only what comes from now on: periodic status records).
    Nothing is committed; a restarted reader starts over the same way.
    """

    def __init__(self, settings: KafkaSettings, topics: dict[str, str]) -> None:
        self.settings = settings
        self.topics = dict(topics)
        self._consumer: Any = None
        self._earliest: list[Any] = []

    def setup(self) -> KafkaTailConsumer:
        kafka = _kafka()
        try:
            self._consumer = kafka.KafkaConsumer(**connection_config(self.settings), group_id=None,
                                                 enable_auto_commit=False)
        except kafka.errors.KafkaError as exc:
            raise DcpueError(f"cannot connect to Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        by_start: dict[str, list[Any]] = {"earliest": [], "latest": []}
        for topic, start in self.topics.items():
            partitions = self._consumer.partitions_for_topic(topic)
            if not partitions:
                self._consumer.close(autocommit=False)
                raise DcpueError(f"Kafka topic {topic} does not exist: run `dcpue topics create` first")
            by_start[start] += [kafka.TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(by_start["earliest"] + by_start["latest"])
        self._earliest = by_start["earliest"]
        if by_start["earliest"]:
            self._consumer.seek_to_beginning(*by_start["earliest"])
        if by_start["latest"]:
            self._consumer.seek_to_end(*by_start["latest"])
        return self

    def caught_up(self) -> bool:
        """True once every topic read from ``"earliest"`` has been read to the end its last fetch reported (the
        high watermark; not ``end_offsets()``, which some brokers answer per batch, see docs/testing.md)."""
        return all(_at_highwater(self._consumer, tp) for tp in self._earliest)

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Message]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [Message(r.topic, r.value if r.value is not None else b"",
                        None if r.key is None else r.key.decode(errors="replace"),
                        tuple((k, v) for k, v in (r.headers or [])), r.partition, r.offset, _create_time(r))
                for records in batches.values() for r in records]

    def commit(self, positions: Any = None) -> None:
        """Nothing to commit: a tail reader keeps no position."""

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None


STATE_FETCH_WAIT_MS = 20


class KafkaStateStore:
    """:class:`~dcpue.ports.StateStore` on a compacted topic keyed by site.

    The state topic has as many partitions as the readings topic and is keyed the same way, so a
    site's checkpoint lives on the partition number of its readings and a worker that gains
    partitions reads only those. Reading stops at each partition's high watermark as reported by
    fetch responses (``end_offsets()`` is not used: some brokers answer it per batch, not per record).
    Not reaching the end within ``read_timeout_s`` raises :class:`SinkError` (the worker stops rather
    than start sites afresh); progress is logged every 10 s meanwhile.
    """

    def __init__(self, settings: KafkaSettings, topic: str, producer: KafkaProducerAdapter | None = None,
                 read_timeout_s: float = 300.0) -> None:
        self.settings = settings
        self.topic = topic
        self.read_timeout_s = read_timeout_s
        self._producer = producer
        self._own_producer = producer is None

    def setup(self) -> KafkaStateStore:
        if self._producer is None:
            self._producer = KafkaProducerAdapter(self.settings).setup()
        return self

    def save_states(self, states: dict[str, bytes]) -> None:
        """Write each key's state and wait until Kafka acknowledged all of them (else :class:`SinkError`).

        A site's key goes where the default partitioner puts it, as the site's readings do; a key of a part of
        a site's state (``site#days0``) goes to that same partition, which its own hash would not give.
        """
        assert self._producer is not None
        count = None
        for key, blob in states.items():
            partition = None
            if STATE_KEY_PART in key:
                count = count or self._producer.partition_count(self.topic)
                partition = partition_for_key(state_key_site(key), count)
            self._producer.send(self.topic, blob, key=key, partition=partition)
        self._producer.flush()

    def load_states(self, partitions: list[int] | None = None) -> dict[str, bytes]:
        """The newest state per site on ``partitions`` (all partitions if ``None``)."""
        kafka = _kafka()
        # a fetch of an empty partition waits fetch_max_wait_ms for data before it reports the high watermark
        # (kafka-python's default, 500 ms, was most of a rebalance on a new deployment): read to the end, not wait
        consumer = kafka.KafkaConsumer(**connection_config(self.settings), enable_auto_commit=False,
                                       group_id=None, fetch_max_wait_ms=STATE_FETCH_WAIT_MS)
        try:
            known = consumer.partitions_for_topic(self.topic) or set()
            wanted = sorted(known if partitions is None else set(partitions) & known)
            tps = [kafka.TopicPartition(self.topic, p) for p in wanted]
            if not tps:
                return {}
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            states: dict[str, bytes] = {}
            deadline = time.monotonic() + self.read_timeout_s
            next_report = time.monotonic() + 10
            while True:
                for records in consumer.poll(timeout_ms=2 * STATE_FETCH_WAIT_MS, max_records=10_000).values():
                    for r in records:
                        if r.key is None:
                            continue
                        if r.value is None:  # tombstone: the site was removed
                            states.pop(r.key.decode(), None)
                        else:
                            states[r.key.decode()] = r.value
                if all(_at_highwater(consumer, tp) for tp in tps):
                    return states
                if time.monotonic() > next_report:
                    next_report += 10
                    log.info("reading state topic %s: %d site states so far", self.topic, len(states))
                if time.monotonic() > deadline:
                    raise SinkError(f"state topic {self.topic}: not read to its end within "
                                    f"{self.read_timeout_s:g} s")
        finally:
            consumer.close(autocommit=False)

    def close(self) -> None:
        if self._own_producer and self._producer is not None:
            self._producer.close()
            self._producer = None


def topic_specs(settings: KafkaSettings, topics: TopicSettings) -> list[tuple[str, int, dict[str, str]]]:
    """(name, partitions, configs) of every dcpue topic.

    Readings, metrics, alerts, recommendations and state are keyed by site and get ``partitions``
    (the state topic must match the readings topic: a site's checkpoint sits on its readings'
    partition number). The health topic, keyed by device, is compacted and time-limited. The state topics
    are compacted (the newest checkpoint per key is kept for
    good); the others keep ``retention_ms``.
    """
    timed = {"retention.ms": str(settings.retention_ms)}
    return [
        (topics.readings, settings.partitions, timed),
        (topics.metrics, settings.partitions, timed),
        (topics.alerts, settings.partitions, timed),
        (topics.recommendations, settings.partitions, timed),
        (topics.dead_letters, 1, timed),
        (topics.state, settings.partitions, {"cleanup.policy": "compact"}),
        (topics.group_state, 1, {"cleanup.policy": "compact"}),
        # newest record per device/collector kept for good, the history for retention_ms
        (topics.health, settings.partitions, {"cleanup.policy": "compact,delete", **timed}),
        # every silence set through the API, newest version per id, read whole by every analytics worker
        (topics.silences, 1, {"cleanup.policy": "compact"}),
    ]


def create_topics(settings: KafkaSettings, topics: TopicSettings) -> list[str]:
    """Create dcpue's topics that are missing (see :func:`topic_specs`); returns the names created."""
    kafka = _kafka()
    from kafka.admin import NewTopic

    admin = kafka.KafkaAdminClient(**connection_config(settings))
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, num_partitions=partitions, replication_factor=settings.replication_factor,
                           topic_configs=configs)
                  for name, partitions, configs in topic_specs(settings, topics) if name not in existing]
        if wanted:
            admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        admin.close()
