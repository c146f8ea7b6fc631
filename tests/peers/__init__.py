"""Real device peers for the collector tests (Modbus, SNMP, Redfish, MQTT), started on 127.0.0.1 by the tests."""
