"""The conformance engine: everything that knows no specification.

A specification is a *domain* (:mod:`kvonce_pipeline.engine.domain`): a declarative definition plus
a small state machine. The engine decodes payloads into a domain's events, orders them, replays
them through the machine once, and writes the artifacts.
"""
