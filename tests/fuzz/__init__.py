"""Property-based tests and fuzzers over dcpue's input parsers (docs/testing.md#fuzzing-and-property-based-tests)."""
