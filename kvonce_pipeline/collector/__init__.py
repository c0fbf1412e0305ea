"""The collector service (``kvonce collector``): OTLP/HTTP and OTLP/gRPC receivers that write the
payloads they accept, durably and deduplicated, into the drop folder."""
