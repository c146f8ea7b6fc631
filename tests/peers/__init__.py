"""Real device peers for the collector and write-back tests (Modbus, SNMP, Redfish, MQTT, BACnet) on 127.0.0.1."""
