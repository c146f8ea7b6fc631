"""Every device protocol dcpue speaks, as one configuration type and one URL parser.

A collector configuration's ``devices:`` list is validated as :data:`AnyDevice` (the ``protocol``
field picks the class); ``dcpue probe URL`` builds a config with :func:`device_from_url`.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field

from dcpue.errors import ConfigError
from dcpue.ingest.device import DeviceConfig
from dcpue.ingest.modbus import ModbusDeviceConfig
from dcpue.ingest.mqtt import MqttDeviceConfig
from dcpue.ingest.redfish import RedfishDeviceConfig
from dcpue.ingest.snmp import SnmpDeviceConfig

AnyDevice = Annotated[
    ModbusDeviceConfig | SnmpDeviceConfig | RedfishDeviceConfig | MqttDeviceConfig,
    Field(discriminator="protocol"),
]

# URL scheme -> config class (redfish+http: plain HTTP, for lab setups and mockups)
SCHEMES: dict[str, type[DeviceConfig]] = {
    "modbus": ModbusDeviceConfig,
    "modbus+tcp": ModbusDeviceConfig,
    "snmp": SnmpDeviceConfig,
    "redfish": RedfishDeviceConfig,
    "redfish+http": RedfishDeviceConfig,
    "redfish+https": RedfishDeviceConfig,
    "mqtt": MqttDeviceConfig,
    "mqtts": MqttDeviceConfig,
}


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def device_from_url(url: str, **options: Any) -> DeviceConfig:
    """A device config from a probe URL such as ``modbus://10.0.0.5:502/1?profile=eastron-sdm630``.

    Raises :class:`ConfigError` naming the accepted schemes, or what the protocol refused.
    """
    scheme = urlsplit(url).scheme.lower()
    cls = SCHEMES.get(scheme)
    if cls is None:
        accepted = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigError(f"cannot probe {redact(url)!r}: unknown scheme {scheme!r} (accepted: {accepted})")
    try:
        return cls.from_url(url, **options)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        password = urlsplit(url).password
        if password:
            message = message.replace(password, "***")
        raise ConfigError(f"cannot probe {redact(url)!r}: {message}") from None
