"""The conformance suite and its harness (a pytest plugin, inactive unless asked for)."""
