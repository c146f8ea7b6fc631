"""Every secret setting ``x`` can come from a file, ``x_file`` (a mounted Kubernetes or Docker secret).

What reaches the clients is checked where they take it: kafka-python's configuration, the InfluxDB client's
token, a receiver's signing key, a device's password. (The demo run in test_secrets_not_logged.py signs its
webhooks with a key from a file, checked on the receiving end.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from dcpue.adapters.kafka import connection_config
from dcpue.alerting.config import Receiver
from dcpue.errors import ConfigError
from dcpue.ingest.mqtt import MqttDeviceConfig
from dcpue.ingest.redfish import RedfishDeviceConfig
from dcpue.ingest.snmp import SnmpDeviceConfig
from dcpue.secrets import read_secret_file
from dcpue.settings import load_settings


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text("s3cret word\n")  # as `echo` writes it; inner spaces are part of the secret
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in [n for n in os.environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_kafka_password_from_a_file_reaches_the_client_configuration(secret, clean_env):
    clean_env.setenv("DCPUE_BUS__KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    clean_env.setenv("DCPUE_BUS__KAFKA__SASL_USERNAME", "dcpue")
    clean_env.setenv("DCPUE_BUS__KAFKA__SASL_PASSWORD_FILE", str(secret))
    settings = load_settings()
    assert connection_config(settings.bus.kafka)["sasl_plain_password"] == "s3cret word"
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.model_dump_json()


def test_influxdb_token_from_a_file_reaches_the_client(secret, tmp_path, clean_env):
    from dcpue.adapters.influxdb import InfluxSink

    config = tmp_path / "dcpue.yaml"
    config.write_text(json.dumps({"store": {"kind": "influxdb", "influxdb": {"token_file": str(secret)}}}))
    settings = load_settings(config)
    sink = InfluxSink(settings.store.influxdb)
    try:
        sink.setup()
        assert sink._client.token == "s3cret word"  # noqa: SLF001 - what the client sends as "Token …"
    finally:
        sink.close()


@pytest.mark.parametrize("setting, value_var", [
    ("DCPUE_BUS__KAFKA__SASL_PASSWORD_FILE", "DCPUE_BUS__KAFKA__SASL_PASSWORD"),
    ("DCPUE_STORE__INFLUXDB__TOKEN_FILE", "DCPUE_STORE__INFLUXDB__TOKEN"),
])
def test_bad_secret_files_are_config_errors_naming_the_field(setting, value_var, tmp_path, secret, clean_env):
    field = setting.removeprefix("DCPUE_").lower().replace("__", ".").rsplit(".", 1)[1]
    clean_env.setenv(setting, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=rf"{field} {tmp_path}/missing: No such file"):
        load_settings()
    (tmp_path / "empty").write_text("\n")
    clean_env.setenv(setting, str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=rf"{field} {tmp_path}/empty: the file is empty"):
        load_settings()
    clean_env.setenv(setting, str(secret))
    clean_env.setenv(value_var, "inline")
    with pytest.raises(ConfigError, match=r"not both"):
        load_settings()


def test_receiver_signing_key_from_a_file(secret):
    receiver = Receiver(name="noc", url="https://noc.example/hook", secret_file=secret)
    assert receiver.secret.get_secret_value() == "s3cret word"
    with pytest.raises(ValidationError, match="give secret or secret_file, not both"):
        Receiver(name="noc", url="https://noc.example/hook", secret="x", secret_file=secret)


def test_device_passwords_from_files(secret, tmp_path):
    redfish = RedfishDeviceConfig(name="bmc", site="s", url="https://192.0.2.5", username="ops", password_file=secret)
    assert redfish.password.get_secret_value() == "s3cret word"
    mqtt = MqttDeviceConfig(name="m", site="s", host="127.0.0.1", username="ops", password_file=secret,
                            subscriptions=[{"topic": "dc/#", "field": "f", "format": "json", "value_path": "$.v"}])
    assert mqtt.password.get_secret_value() == "s3cret word"
    assert mqtt.for_probe().password.get_secret_value() == "s3cret word"  # rebuilt for `dcpue probe`
    (tmp_path / "priv").write_text("priv-pass-42")
    snmp = SnmpDeviceConfig(name="ups", site="s", host="192.0.2.7", profiles=["ups-mib"], version="3",
                            sec_name="nms", auth_password_file=secret, priv_password_file=tmp_path / "priv")
    assert (snmp.auth_password.get_secret_value(), snmp.priv_password.get_secret_value()) == ("s3cret word",
                                                                                              "priv-pass-42")
    assert snmp.effective_sec_level == "authPriv"  # the level follows the passwords, as when given inline
    community = SnmpDeviceConfig(name="ups", site="s", host="192.0.2.7", profiles=["ups-mib"], community_file=secret)
    assert community.community.get_secret_value() == "s3cret word"
    # v2c with a v3 password file is refused like an inline one
    with pytest.raises(ValidationError, match="only apply to SNMP version '3'"):
        SnmpDeviceConfig(name="ups", site="s", host="192.0.2.7", profiles=["ups-mib"], auth_password_file=secret)


def test_read_secret_file_keeps_everything_but_the_final_line_break(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"  a b\t\r\n")
    assert read_secret_file(path, "secret") == "  a b\t"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="secret_file .*: 'utf-8' codec can't decode"):
        read_secret_file(path, "secret")
