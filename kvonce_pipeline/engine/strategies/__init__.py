"""The faster strategies of the pass: the second-core workers (``parallel``) and key shards on a
cluster (``shards``); each writes the same bytes as the reference pass (``engine.one_pass``)."""
