"""Real device peers for the collector tests (Modbus, SNMP, Redfish, MQTT, BACnet), started on 127.0.0.1 by the tests."""
