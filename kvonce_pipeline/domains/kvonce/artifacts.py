"""KvOnce's artifact file names (a contract: CI scripts read them). Where they go is the engine's
(:mod:`kvonce_pipeline.engine.artifacts`)."""

from __future__ import annotations

from ...engine.artifacts import PROJECT_ROOT

COLLECTED = "collected-kvonce-otlp.json"
EVENTS = "kvonce-events.ndjson"
PROJECTION = "kvonce-projection.json"
STATE_SEQUENCE = "projected/kvonce-state-sequence.json"
VALIDATION = "kvonce-validation.json"
SUMMARY = "kvonce-summary.md"
#: The artifacts in the order a remote report folder gets them
#: (:func:`kvonce_pipeline.engine.storage.publish`): the validation report, which says what the run
#: found and which files it wrote, last.
PUBLISH_ORDER = (EVENTS, PROJECTION, STATE_SEQUENCE, SUMMARY, VALIDATION)

BUNDLED_SAMPLE = PROJECT_ROOT / "samples" / "trace" / "kvonce-otlp.json"
