"""bench: a benchmark harness for multi-label learning."""
