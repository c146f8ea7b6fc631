"""Kafka adapters (kafka-python) for the bus ports: producer, consumer-group consumer, topic admin.

The producer waits for ``acks=all`` (idempotent where the broker supports it) and :meth:`flush`
raises if any record was not acknowledged, so a collector only treats a batch as delivered once
Kafka has it. The consumer never auto-commits: the worker commits after its results are written.
Connections are made in ``setup()``, never in ``__init__``.
"""

from __future__ import annotations

import logging
from typing import Any

from dcpue.errors import DcpueError, SinkError, missing_extra
from dcpue.ports import Message
from dcpue.settings import KafkaSettings, TopicSettings

log = logging.getLogger(__name__)


def _kafka() -> Any:
    try:
        import kafka
    except ImportError as exc:
        raise missing_extra("kafka-python", "kafka") from exc
    return kafka


def connection_config(settings: KafkaSettings) -> dict[str, Any]:
    """Client options shared by producer, consumer and admin (TLS/SASL passed through; no secret logged)."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism:
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        config["sasl_plain_password"] = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    for option in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, option)
        if value is not None:
            config[option] = str(value)
    return config


class KafkaProducerAdapter:
    """:class:`~dcpue.ports.Producer` on Kafka; records keyed by site stay on one partition."""

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
            )
        except kafka.errors.KafkaError as exc:
            raise DcpueError(f"cannot connect to Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        return self

    def send(self, topic: str, value: bytes, key: str | None = None,
             headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        future = self._producer.send(topic, value=value, key=None if key is None else key.encode(),
                                     headers=list(headers))
        self._futures.append(future)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged; raise :class:`SinkError` otherwise."""
        timeout = timeout_s if timeout_s is not None else self.settings.send_timeout_s
        self._producer.flush(timeout=timeout)
        futures, self._futures = self._futures, []
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            self._futures = failed  # kept: the caller still owns them
            first = failed[0].exception if failed[0].is_done else "not acknowledged in time"
            raise SinkError(f"{len(failed)} of {len(futures)} records not acknowledged by Kafka: {first}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=self.settings.send_timeout_s)
            self._producer = None


class KafkaConsumerAdapter:
    """:class:`~dcpue.ports.Consumer` in a consumer group, committing only when told to."""

    def __init__(self, settings: KafkaSettings, topics: list[str], group_id: str | None = None) -> None:
        self.settings = settings
        self.topics = list(topics)
        self.group_id = group_id or settings.group_id
        self._consumer: Any = None

    def setup(self) -> KafkaConsumerAdapter:
        kafka = _kafka()
        try:
            self._consumer = kafka.KafkaConsumer(
                *self.topics,
                **connection_config(self.settings),
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=self.settings.session_timeout_ms,
                heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
                max_poll_interval_ms=self.settings.max_poll_interval_ms,
            )
        except kafka.errors.KafkaError as exc:
            raise DcpueError(f"cannot connect to Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        return self

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Message]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Message] = []
        for records in batches.values():
            for r in records:
                out.append(Message(r.topic, r.value, None if r.key is None else r.key.decode(errors="replace"),
                                   tuple((k, v) for k, v in (r.headers or [])), r.partition, r.offset))
        return out

    def commit(self) -> None:
        """Commit the positions after everything returned by :meth:`poll` (synchronously)."""
        self._consumer.commit()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None


def create_topics(settings: KafkaSettings, topics: TopicSettings) -> list[str]:
    """Create dcpue's topics if missing (readings with ``partitions``); returns the names created."""
    kafka = _kafka()
    from kafka.admin import NewTopic

    admin = kafka.KafkaAdminClient(**connection_config(settings))
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, num_partitions=settings.partitions if name == topics.readings else 1,
                     replication_factor=settings.replication_factor,
                     topic_configs={"retention.ms": str(settings.retention_ms)})
            for name in (topics.readings, topics.metrics, topics.dead_letters)
            if name not in existing
        ]
        if wanted:
            admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        admin.close()
