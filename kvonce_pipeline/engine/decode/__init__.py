"""Decoding: format sniffing and the readers of every input format (NDJSON, OTLP/JSON in its two
decoders, OTLP/protobuf) into ordered events."""
