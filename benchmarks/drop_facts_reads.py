"""What a drop run's reconciliation costs to read the key facts of its scope's payloads from a bucket.

With ``KVONCE_REPORTS_DIR`` a URL, a drop run reads each registered partition's ``kvonce-keyfacts.json``
of its scope (one ``GET`` each, nothing listed). This script starts a moto S3 server on loopback (the
one the tests use), puts ``N`` partitions' key facts (100 keys each) and times reading them one ``GET``
after another (``storage.read_bytes`` per partition) and as the drop run does (``store.read_facts``:
the same ``GET``s, sent concurrently by s3fs). Not a test: nothing asserts a speed. A loopback moto
server has no network latency and is itself the bottleneck, so the gap against a real store, whose
latency is tens of milliseconds per request, is larger than here.

    .venv/bin/python benchmarks/drop_facts_reads.py 300
"""

from __future__ import annotations

import os
import sys
import time

import fsspec
import orjson

from kvonce_pipeline.devtools.local_s3 import local_s3_server


def main(count: int) -> None:
    with local_s3_server() as endpoint:
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
        from kvonce_pipeline.domains.kvonce import store
        from kvonce_pipeline.engine import storage

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("bench")
        facts = orjson.dumps({"schemaVersion": store.FACTS_SCHEMA, "events": 100,
                              "keys": {f"k{i}": {"s": [[i, i, "v"]]} for i in range(100)}})
        keys = [f"p{i:05d}-{i:012x}" for i in range(count)]
        fs.pipe({f"bench/trace/{key}/{store.KEYFACTS}": facts for key in keys})
        trace = "s3://bench/trace"
        started = time.perf_counter()
        one_by_one = [storage.read_bytes(f"{trace}/{key}/{store.KEYFACTS}") for key in keys]
        sequential = time.perf_counter() - started
        started = time.perf_counter()
        read = store.read_facts(trace, keys)
        concurrent = time.perf_counter() - started
        assert len(read) == count and all(one_by_one)
        print(f"{count} partitions ({len(facts)} B of key facts each): one GET after another {sequential:.2f} s, "
              f"concurrent (store.read_facts) {concurrent:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
