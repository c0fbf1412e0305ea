"""KvOnce's own pass: the reader, the one pass and its faster strategies, with KvOnce's byte contracts.

KvOnce's pass is older than the engine's generic one (:mod:`kvonce_pipeline.engine.domain_pass`) and
every artifact it writes is held byte-identical to earlier versions (the golden tests). It is
specialised for KvOnce's state machine and keeps that machine's speed on large traces:

- ``one_pass``: the reference per-event loop (events file, state sequence, per-key fold, validator);
- ``stages``: which strategy a run takes, and the files they write;
- ``parallel``: the second core's workers (decode on one core, fold on the other);
- ``shards``: key shards on a Dask cluster, merged into the same bytes;
- ``conformance``: the run as ``kvonce conformance`` and the Dagster jobs start it.

Every strategy is held to the bytes of ``one_pass`` by differential tests. The layers run one way:
``conformance`` -> ``stages`` -> ``parallel`` -> ``one_pass``; ``shards`` builds on ``stages``.
The engine imports none of this: KvOnce reaches it through its domain's ``runner``.
"""
