"""KvOnce, the first domain: its events and their OTLP mapping, the state machine's rules
(validation), the projection, the Pandera schemas and the cross-payload store of written keys."""
