"""The Dagster layer: thin wiring of the core into assets, checks, sensors and resources."""
