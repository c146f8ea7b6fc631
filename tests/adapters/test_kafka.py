"""The Kafka path against a real broker (Tansu on 127.0.0.1): same PUE as the embedded path, poison to DLQ."""

from __future__ import annotations

import json
import logging
import threading
import time

import pandas as pd
import pytest

from dcpue.adapters.kafka import KafkaConsumerAdapter, KafkaProducerAdapter, create_topics
from dcpue.analytics.batch import batch_windows
from dcpue.runtime.store import FileStore
from dcpue.runtime.worker import AnalyticsWorker
from dcpue.settings import BusSettings, KafkaSettings, Settings, TopicSettings
from dcpue.wire import encode_frame
from tests.factories import T0, counter_series, power_series, registry, simple_site
from tests.servers import fast_consumer_config, tansu_broker, unique_name, victoria_metrics  # noqa: F401

pytestmark = pytest.mark.integration


def kafka_settings(broker, **extra) -> KafkaSettings:
    fast = fast_consumer_config()
    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers, partitions=4,
                         session_timeout_ms=fast["session_timeout_ms"],
                         heartbeat_interval_ms=fast["heartbeat_interval_ms"],
                         max_poll_interval_ms=fast["max_poll_interval_ms"], **{"fetch_min_bytes": 1, **extra})


def kafka_setup(broker, prefix: str) -> tuple[TopicSettings, KafkaSettings, Settings]:
    """Topics unique to one test, and the settings of a worker using them on ``broker``."""
    name = unique_name(prefix)
    topics = TopicSettings(**{field: f"{name}.{field}.v1" for field in TopicSettings.model_fields})
    kafka = kafka_settings(broker)
    return topics, kafka, Settings(bus=BusSettings(kind="kafka", topics=topics, kafka=kafka))


def test_readings_through_kafka_give_the_embedded_figures(tansu_broker, tmp_path):  # noqa: F811
    reg = registry(simple_site("a"), simple_site("b"))
    topics, kafka, settings = kafka_setup(tansu_broker, "t")
    assert sorted(create_topics(kafka, topics)) == sorted(topics.model_dump().values())

    readings = {
        "a": pd.concat([counter_series("a", "facility.main", 150, 120), power_series("a", "it.ups", 100, 120)]),
        "b": pd.concat([counter_series("b", "facility.main", 240, 120), power_series("b", "it.ups", 200, 120)]),
    }
    producer = KafkaProducerAdapter(kafka).setup()
    for minute in range(0, 121, 10):  # collectors send 10-minute batches per site
        for site, frame in readings.items():
            part = frame[(frame["ts"] >= T0 + minute * 60_000) & (frame["ts"] < T0 + (minute + 10) * 60_000)]
            if not part.empty:
                producer.send(topics.readings, encode_frame(site, part), key=site)
    producer.send(topics.readings, b"\x00poison", key="a")
    producer.flush()  # acknowledged by the broker before the "collector" moves on
    producer.close()
    sent_by = time.time()

    store = FileStore(tmp_path / "k.sqlite").setup()
    # the smallest fetches the settings allow still read everything; the settings reach the client
    kafka = kafka.model_copy(update={"max_partition_fetch_bytes": 1 << 16, "fetch_max_bytes": 1 << 16,
                                     "fetch_min_bytes": 4096})  # everything is produced already: no wait
    consumer = KafkaConsumerAdapter(kafka, [topics.readings], group_id=unique_name("g"), fill_fetches=True).setup()
    client = consumer._consumer.config
    assert client["max_partition_fetch_bytes"] == client["fetch_max_bytes"] == 1 << 16
    assert (client["fetch_min_bytes"], client["fetch_max_wait_ms"]) == (4096, kafka.fetch_max_wait_ms)
    dlq = KafkaProducerAdapter(kafka).setup()
    worker = AnalyticsWorker(reg, settings, consumer, store, dead_letter_producer=dlq, clock=lambda: T0 + 3 * 3_600_000)
    idle = 0
    while idle < 6 and worker.stats.messages < 27:
        idle = 0 if worker.step(timeout_s=1.0) else idle + 1
    dlq.flush()
    assert worker.stats.messages == 27 and worker.stats.dead_letters == 1
    consumer.close()
    # every record carried its send time (CreateTime): the worker's latency covers all 27, none negative or absurd
    status = worker.status()
    assert worker.write_latency.count == 27
    assert 0 < status["write_latency_p50_s"] <= status["write_latency_max_s"] <= time.time() - sent_by + 5
    # the partitions' assignment ran inside a poll: counted as rebalance, apart from the poll's own time
    assert status["busy_s"]["rebalance"] > 0 and status["busy_s"]["poll"] > 0

    stored = store.query_windows("site", "1h").set_index(["id", "start_ms"])
    expected = batch_windows(pd.concat(readings.values()), reg, "1h")
    for site in ("a", "b"):
        got = stored.loc[(site, T0)]
        want = expected[(expected["id"] == site) & (expected["start_ms"] == T0)].iloc[0]
        assert bool(got["final"])
        assert got["pue"] == pytest.approx(want["pue"])
        assert got["facility_kwh"] == pytest.approx(want["facility_kwh"])

    # the poison message is on the dead-letter topic with its reason in a header
    reader = KafkaConsumerAdapter(kafka, [topics.dead_letters], group_id=unique_name("dlq")).setup()
    letters = []
    for _ in range(10):
        letters += reader.poll(1.0)
        if letters:
            break
    reader.close()
    assert len(letters) == 1
    headers = dict(letters[0].headers)
    assert headers["reason"].decode().startswith("not a MessagePack message")
    assert json.loads(letters[0].value)["bytes_hex"] == b"\x00poison".hex()
    store.close()


def test_worker_pauses_while_the_sink_is_down_then_catches_up(tansu_broker, victoria_metrics, tmp_path):  # noqa: F811
    import urllib.parse
    import urllib.request

    from dcpue.adapters.influxdb import InfluxSink
    from dcpue.settings import InfluxSettings
    from tests.servers import victoria_metrics_flush

    reg = registry(simple_site("a"), simple_site("b"))
    topics, kafka, settings = kafka_setup(tansu_broker, "down")
    create_topics(kafka, topics)
    producer = KafkaProducerAdapter(kafka).setup()
    for site, kw in (("a", 150), ("b", 240)):
        frame = pd.concat([counter_series(site, "facility.main", kw, 120), power_series(site, "it.ups", 100, 120)])
        for minute in range(0, 121, 20):
            part = frame[(frame["ts"] >= T0 + minute * 60_000) & (frame["ts"] < T0 + (minute + 20) * 60_000)]
            producer.send(topics.readings, encode_frame(site, part), key=site)
    producer.flush()
    producer.close()

    group = unique_name("g")
    down = InfluxSink(InfluxSettings(url="http://127.0.0.1:9", timeout_s=0.5)).setup()  # nothing listens there
    consumer = KafkaConsumerAdapter(kafka, [topics.readings], group_id=group).setup()
    worker = AnalyticsWorker(reg, settings, consumer, down, clock=lambda: T0 + 3 * 3_600_000)
    while worker.stats.messages == 0:
        worker.step(timeout_s=1.0, max_records=4)
    polled = worker.stats.messages
    for _ in range(3):
        worker.step(timeout_s=0.2, max_records=4)
    assert worker.stats.errors["store_write"] >= 3
    assert worker.stats.messages == polled  # paused: nothing more consumed while the sink is down

    bucket = unique_name("b")
    worker.store = InfluxSink(InfluxSettings(url=victoria_metrics.url, bucket=bucket), reg.sites_table).setup()
    idle = 0
    while idle < 4:
        idle = 0 if worker.step(timeout_s=1.0, max_records=4) else idle + 1
    assert worker.stats.messages == 14  # everything, once
    assert worker.checkpoint()  # as `dcpue analyze` does when it stops
    consumer.close()
    # everything is committed: a new member of the group finds nothing left to read
    again = KafkaConsumerAdapter(kafka, [topics.readings], group_id=group).setup()
    leftovers = []
    for _ in range(5):
        leftovers += again.poll(1.0)
    again.close()
    assert leftovers == []
    victoria_metrics_flush(victoria_metrics.url)
    for site, pue in (("a", 1.5), ("b", 2.4)):
        query = urllib.parse.urlencode({"query": f'pue_pue{{site="{site}",window="1h"}}',
                                        "time": str((T0 + 3_600_000) / 1000)})
        with urllib.request.urlopen(f"{victoria_metrics.url}/api/v1/query?{query}", timeout=10) as response:
            result = json.loads(response.read())["data"]["result"]
        assert float(result[0]["value"][1]) == pytest.approx(pue)  # the first hour, written after the outage


def test_a_failed_send_fails_its_flush_only(tansu_broker):  # noqa: F811
    """A flush that failed does not poison the producer: once the caller sends again, the next flush succeeds."""
    from dcpue.errors import SinkError

    topics, kafka, _ = kafka_setup(tansu_broker, "flush")
    create_topics(kafka, topics)
    producer = KafkaProducerAdapter(kafka).setup()
    try:
        producer.send(topics.readings, b"lost", key="s1")
        producer._futures.append(_sent(None, RuntimeError("broker went away")))  # kafka-python's failed send
        with pytest.raises(SinkError, match="1 of 2 records not acknowledged by Kafka: broker went away"):
            producer.flush()
        producer.send(topics.readings, b"again", key="s1")
        producer.flush()
    finally:
        producer.close()


def test_acknowledgements_slower_than_the_timeout_are_a_failed_write_not_a_crash(caplog):
    """With the broker gone, records wait in the producer: the flush times out as a SinkError (the worker keeps
    its results and retries) instead of kafka-python's timeout error stopping the worker; closing then drops the
    waiting records with a warning and stops the producer's network thread (kafka-python's own close raised its
    timeout error and left the thread running)."""
    from dcpue.errors import SinkError
    from tests.servers import run_tansu

    with run_tansu() as broker:
        topics, kafka, _ = kafka_setup(broker, "slow")
        create_topics(kafka, topics)
        producer = KafkaProducerAdapter(kafka).setup()
        producer.send(topics.readings, b"placed", key="s1")
        producer.flush()  # the topic's metadata is known from here on: the next send goes to the accumulator
    client = producer._producer
    producer.send(topics.readings, b"waiting", key="s1")
    with pytest.raises(SinkError, match="did not acknowledge records within 1 s"):
        producer.flush(timeout_s=1.0)
    assert producer._futures == []  # forgotten here: the caller sends again
    producer.send(topics.readings, b"still waiting", key="s1")
    with caplog.at_level(logging.WARNING, logger="dcpue.adapters.kafka"):
        producer.close(timeout_s=0.5)
    assert "records still unacknowledged: they are dropped here" in caplog.text
    assert producer._producer is None
    assert client._closed and not client._sender.is_alive()
    producer.close()  # closing again does nothing


def _sent(base_offset: int | None, error: Exception | None = None):  # noqa: ANN202
    """A kafka-python send future resolved as the broker answered: ``base_offset``, or ``error``, or pending."""
    from kafka.producer.future import FutureProduceResult, FutureRecordMetadata
    from kafka.structs import TopicPartition

    batch = FutureProduceResult(TopicPartition("t", 0))
    record = FutureRecordMetadata(batch, 0, 0, None, 1, 1, 0)
    if error is not None:
        batch.failure(error)
    elif base_offset is not None:
        batch.success((base_offset, -1, None))
    return record


def test_an_acknowledgement_without_an_offset_is_not_one():
    """Tansu on S3, restarted after a crash, answers some produce requests with success and offset -1 and drops
    some of those records: kafka-python resolves such a send as successful, dcpue counts it unacknowledged."""
    from dcpue.adapters.kafka import unacknowledged

    placed, unplaced, failed, pending = _sent(41), _sent(-1), _sent(None, RuntimeError("down")), _sent(None)
    assert placed.succeeded() and unplaced.succeeded()  # kafka-python's own view of both
    assert unacknowledged([placed, unplaced, failed, pending]) == [unplaced, failed, pending]


def test_every_state_record_of_a_site_lies_on_the_sites_partition(tansu_broker):  # noqa: F811
    """A site's days, saved apart under ``site#days0``, are read back by the worker that gains the site's
    partition: they are written there, not where the default partitioner would hash their own key."""
    from dcpue.adapters.kafka import KafkaStateStore, partition_for_key

    topics, kafka, _ = kafka_setup(tansu_broker, "statekeys")
    create_topics(kafka, topics)
    sites = [f"site-{n}" for n in range(12)]
    moved = [s for s in sites if partition_for_key(f"{s}#days0", 4) != partition_for_key(s, 4)]
    assert moved  # else the test would not tell
    store = KafkaStateStore(kafka, topics.state).setup()
    try:
        store.save_states({key: key.encode() for site in sites for key in (site, f"{site}#days0")})
        for partition in range(4):
            on = {s for s in sites if partition_for_key(s, 4) == partition}
            assert store.load_states([partition]) == {key: key.encode() for s in on for key in (s, f"{s}#days0")}
    finally:
        store.close()


class _JoiningClient:
    """kafka-python's consumer as the adapter sees it during a rebalance: the revocation comes in the first
    poll, the assignment in poll number ``assigned_at`` (never, if None), and only while a poll is running."""

    def __init__(self, assigned_at: int | None) -> None:
        self.assigned_at, self.polls, self.listener, self.held = assigned_at, [], None, set()

    def subscribe(self, topics, listener):  # noqa: ANN001, ANN201
        self.topic, self.listener = topics[0], listener

    def poll(self, timeout_ms, max_records):  # noqa: ANN001, ANN201
        from kafka.structs import TopicPartition

        self.polls.append(timeout_ms)
        if len(self.polls) == 1:
            self.listener.on_partitions_revoked(set())
        if len(self.polls) == self.assigned_at:
            self.held = {TopicPartition(self.topic, 0), TopicPartition(self.topic, 1)}
            self.listener.on_partitions_assigned(self.held)
        time.sleep(0.01)
        return {}

    def assignment(self):  # noqa: ANN201
        return set(self.held)

    def committed(self, tp):  # noqa: ANN001, ANN201
        return 7

    def seek(self, tp, offset):  # noqa: ANN001, ANN201
        pass


def test_a_begun_rebalance_is_polled_to_its_end_inside_one_poll():
    """kafka-python 3.0.12 keeps a join only if a poll is running when it completes: so once the revocation is
    seen, one adapter poll keeps polling, back to back, until the assignment (or for at most JOIN_WAIT_S)."""
    adapter = KafkaConsumerAdapter(KafkaSettings(), ["readings"], group_id="g")
    assigned: list[list[int]] = []
    adapter.on_assigned = assigned.append
    adapter._consumer = client = _JoiningClient(assigned_at=5)
    assert adapter.poll(0.0) == []
    assert assigned == [[0, 1]] and len(client.polls) == 5
    assert client.polls[1:] == [adapter.JOIN_SLICE_MS] * 4
    assert adapter.poll(0.0) == [] and len(client.polls) == 6  # joined: one client poll again

    adapter = KafkaConsumerAdapter(KafkaSettings(), ["readings"], group_id="g")
    adapter.JOIN_WAIT_S = 0.3
    adapter._consumer = client = _JoiningClient(assigned_at=None)  # the group never completes the rebalance
    started = time.monotonic()
    assert adapter.poll(0.0) == []
    assert 0.3 <= time.monotonic() - started < 2 and len(client.polls) > 2


def test_a_member_that_works_between_short_polls_still_joins_and_rebalances(tansu_broker):  # noqa: F811
    """kafka-python 3.0.12 drops a join that completes between polls and starts the group's rebalance over:
    a worker that polls with timeout 0 while paused, or briefly between steps, never joined (30 s tried)."""
    topics, kafka, _ = kafka_setup(tansu_broker, "join")
    create_topics(kafka, topics)
    topic, group = topics.readings, unique_name("g")
    first = KafkaConsumerAdapter(kafka, [topic], group_id=group).setup()
    second = KafkaConsumerAdapter(kafka, [topic], group_id=group).setup()
    assigned: dict[str, list[int]] = {}
    first.on_assigned = lambda parts: assigned.__setitem__("first", parts)
    second.on_assigned = lambda parts: assigned.__setitem__("second", parts)
    stop = threading.Event()

    def work(member: KafkaConsumerAdapter, timeout_s: float) -> None:
        while not stop.is_set():
            member.poll(timeout_s)
            time.sleep(0.2)  # the worker's step

    members = [threading.Thread(target=work, args=(first, 0.0)), threading.Thread(target=work, args=(second, 0.1))]
    try:
        deadline = time.monotonic() + 20
        while "first" not in assigned and time.monotonic() < deadline:
            first.poll(0.0)  # a paused worker's poll
            time.sleep(0.2)
        assert assigned.get("first") == [0, 1, 2, 3]

        first.pause()  # the first worker's sink is down; the second worker starts
        for member in members:
            member.start()
        deadline = time.monotonic() + 30
        while len(assigned.get("second", [])) != 2 or len(assigned["first"]) != 2:
            assert time.monotonic() < deadline, assigned
            time.sleep(0.1)
        assert sorted(assigned["first"] + assigned["second"]) == [0, 1, 2, 3]
    finally:
        stop.set()
        for member in members:
            if member.is_alive():
                member.join()
        first.close()
        second.close()


def test_a_starting_worker_reads_the_silences_set_before_it_before_any_reading(tansu_broker, tmp_path):  # noqa: F811
    """The first step reads the silences topic to its end: a restarted worker evaluated its first readings before
    the silences set through the API had arrived, and notified a silenced alert."""
    from dcpue.adapters.kafka import KafkaTailConsumer
    from dcpue.analytics.alerts.engine import AlertEngine
    from dcpue.analytics.alerts.silences import Silence
    from dcpue.runtime.alerts import silence_record

    topics, kafka, settings = kafka_setup(tansu_broker, "silences")
    create_topics(kafka, topics)
    silences = [Silence(matchers=[("site", "=", site)], starts_at_ms=T0, ends_at_ms=T0 + 86_400_000,
                        created_by="test") for site in ("a", "b", "c")]
    producer = KafkaProducerAdapter(kafka).setup()
    for silence in silences:
        key, value = silence_record(silence)
        producer.send(topics.silences, value, key=key)
    # two hours at PUE 1.5: PueAboveTarget fires at the silenced site
    readings = pd.concat([counter_series("a", "facility.main", 150, 120), power_series("a", "it.ups", 100, 120)])
    for minute in range(0, 121, 10):
        part = readings[(readings["ts"] >= T0 + minute * 60_000) & (readings["ts"] < T0 + (minute + 10) * 60_000)]
        producer.send(topics.readings, encode_frame("a", part), key="a")
    producer.flush()
    producer.close()

    reg = registry(simple_site("a"))
    alerts = AlertEngine(reg, settings.engine, settings.alerts)
    inputs = KafkaTailConsumer(kafka, {topics.health: "latest", topics.silences: "earliest"}).setup()
    consumer = KafkaConsumerAdapter(kafka, [topics.readings], group_id=unique_name("g")).setup()
    store = FileStore(tmp_path / "s.sqlite").setup()
    events: list = []
    worker = AnalyticsWorker(reg, settings, consumer, store, alerts=alerts, alert_output=events.extend,
                             health=inputs, clock=lambda: T0 + 3 * 3_600_000)
    try:
        worker.step(timeout_s=0.0)
        assert sorted(s.id for s in alerts.silences.list()) == sorted(s.id for s in silences)
        assert inputs.caught_up()
        deadline = time.monotonic() + 30
        while worker.stats.messages < 13:
            assert time.monotonic() < deadline, worker.stats
            worker.step(timeout_s=0.5)
    finally:
        consumer.close()
        inputs.close()
        store.close()
    fired = [e for e in events if e.labels["alertname"] == "PueAboveTarget"]
    assert fired and all(e.site == "a" and e.silenced for e in fired), events


def test_serves_side_views_are_not_ready_until_their_topics_are_read_to_the_end(tansu_broker, tmp_path):  # noqa: F811
    """`dcpue serve`'s alert and recommendation views read their topics from the start: /readyz waits for them,
    or a restarted serve could answer with part of the silences, alerts or recommendations."""
    from dcpue.adapters.kafka import KafkaTailConsumer
    from dcpue.analytics.alerts.model import AlertEvent, Status
    from dcpue.analytics.alerts.silences import Silence
    from dcpue.runtime.alerts import AlertBoard, AlertFeed, AlertHistory, event_record, silence_record
    from dcpue.runtime.distributed import RecommendationFeed

    topics, kafka, _ = kafka_setup(tansu_broker, "views")
    create_topics(kafka, topics)
    producer = KafkaProducerAdapter(kafka).setup()
    key, value = silence_record(Silence(matchers=[("site", "=", "a")], starts_at_ms=T0, ends_at_ms=T0 + 3_600_000,
                                        created_by="test"))
    producer.send(topics.silences, value, key=key)
    events = [AlertEvent(f"fp{i}", Status.FIRING, {"alertname": "PueAboveTarget", "site": "a"}, {}, T0 + i, None,
                         1.3, 1) for i in range(300)]
    for event in events:
        producer.send(topics.alerts, json.dumps(event_record(event)).encode(), key="a")
    for i in range(300):
        producer.send(topics.recommendations, json.dumps({"site": f"s{i}", "ts_ms": T0}).encode(), key=f"s{i}")
    producer.flush()
    producer.close()

    history = AlertHistory(tmp_path / "alerts.sqlite").setup()
    board = AlertBoard(history)
    alert_view = AlertFeed(KafkaTailConsumer(kafka, {topics.alerts: "earliest", topics.silences: "earliest"}).setup(),
                           history, board, topics.alerts, topics.silences)
    store = FileStore(tmp_path / "view.sqlite").setup()
    advice_view = RecommendationFeed(KafkaTailConsumer(kafka, {topics.recommendations: "earliest"}).setup(), store)
    try:
        for view in (alert_view, advice_view):
            assert view.not_ready()
            deadline = time.monotonic() + 20
            while view.not_ready():
                assert time.monotonic() < deadline
                view.step(0.0)  # as serve's side thread polls, briefly
        assert len(history.recent(limit=1000)) == 300 and len(board.silences.list()) == 1
        assert advice_view.records == 300
    finally:
        alert_view.consumer.close()
        advice_view.consumer.close()
        history.close()
        store.close()


def test_positions_taken_earlier_are_committed_as_they_were_and_only_for_partitions_held(tansu_broker):  # noqa: F811
    """A worker saving a checkpoint in the background commits the positions it had when it encoded it: records
    polled since stay uncommitted, and a partition no longer held is left to its new owner."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    topics, kafka, _ = kafka_setup(tansu_broker, "positions")
    create_topics(kafka, topics)
    topic, group = topics.readings, unique_name("g")
    producer = KafkaProducerAdapter(kafka).setup()
    for k in range(8):
        producer.send(topic, b"x%d" % k, key="a", partition=0)
    producer.flush()
    consumer = KafkaConsumerAdapter(kafka, [topic], group_id=group).setup()
    try:
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 3:
            assert time.monotonic() < deadline
            got += consumer.poll(0.5, max_records=3 - len(got))
        held = consumer.positions()
        assert held[TopicPartition(topic, 0)].offset == 3
        while len(got) < 8:
            assert time.monotonic() < deadline
            got += consumer.poll(0.5)
        elsewhere = TopicPartition(topics.metrics, 0)  # a partition this consumer does not hold
        consumer.commit({**held, elsewhere: OffsetAndMetadata(5, "", -1)})
        client = consumer._consumer
        assert client.committed(TopicPartition(topic, 0)) == 3
        assert client.committed(elsewhere) is None
        consumer.commit()  # the current positions: everything polled
        assert client.committed(TopicPartition(topic, 0)) == 8
    finally:
        consumer.close()
        producer.close()


def test_before_revoke_runs_before_the_member_rejoins_and_holds_the_rebalance_while_it_waits(tansu_broker):  # noqa: F811
    """The worker waits in ``before_revoke`` for a checkpoint being saved: kafka-python calls it before this member
    rejoins, so no other member is given the partitions until it has returned."""
    topics, kafka, _ = kafka_setup(tansu_broker, "revoke")
    create_topics(kafka, topics)
    topic, group = topics.readings, unique_name("g")
    first = KafkaConsumerAdapter(kafka, [topic], group_id=group).setup()
    second = KafkaConsumerAdapter(kafka, [topic], group_id=group).setup()
    events: list[tuple[str, float]] = []
    first.on_assigned = lambda parts: events.append((f"first assigned {len(parts)}", time.monotonic()))
    second.on_assigned = lambda parts: events.append((f"second assigned {len(parts)}", time.monotonic()))

    def hold() -> None:
        # nothing held at the first join, nor when the members close
        if any(name.startswith("first assigned") for name, _ in events) and not stop.is_set():
            events.append(("before_revoke", time.monotonic()))
            time.sleep(1.0)  # a checkpoint being saved
            events.append(("before_revoke returned", time.monotonic()))

    stop = threading.Event()
    first.before_revoke = hold
    members: list[threading.Thread] = []

    def work(member: KafkaConsumerAdapter) -> None:
        while not stop.is_set():
            member.poll(0.2)

    try:
        deadline = time.monotonic() + 20
        while not events:
            assert time.monotonic() < deadline
            first.poll(0.2)
        assert events[0][0] == "first assigned 4"
        members += [threading.Thread(target=work, args=(m,)) for m in (first, second)]
        for member in members:
            member.start()
        deadline = time.monotonic() + 30
        while not any(name.startswith("second assigned") for name, _ in events):
            assert time.monotonic() < deadline, events
            time.sleep(0.1)
        names = [name for name, _ in events]
        at = dict(events)
        assert names.index("before_revoke") < names.index("before_revoke returned")
        assert at["second assigned 2"] >= at["before_revoke returned"]  # the group waited for it
    finally:
        stop.set()
        for member in members:
            member.join()
        first.close()
        second.close()
