"""Developer tools, apart from the runtime: the trace generator (``kvonce generate``), the mock
service on the OpenTelemetry SDK (``kvonce mock``) and the benchmark (``make bench``)."""
