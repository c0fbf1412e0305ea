"""Key shards: the job that runs the conformance pass in shards on a distributed engine."""
