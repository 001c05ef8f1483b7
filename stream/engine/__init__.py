"""The engine layer: pure and deterministic. Records in (stream.engine.model), policy (stream.engine.policy),
the reference engine in Python (reference) and the compiled one behind the same interface (native). No I/O,
no clock, no Kafka."""
