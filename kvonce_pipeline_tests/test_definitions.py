"""The merged ``Definitions`` (kvonce_pipeline.definitions): every area's assets, checks, jobs and
sensors are there under the names users and deployments know, with the one ``kvonce`` resource."""

from __future__ import annotations

from kvonce_pipeline.definitions import defs


#: The domains area's names for the built-in generic domain (Inventory): its group, and what serves them all.
DOMAIN_JOBS = ["inventory_conformance_job", "trace_conformance_job"]
DOMAIN_ASSETS = ["collected_otlp", "inventory_events", "inventory_projection", "inventory_validation", "trace_summary"]
DOMAIN_CHECKS = ["inventory_events:events_schema", "inventory_projection:projection_schema",
                 "inventory_validation:inventory_conformance", "inventory_validation:validation_schema"]
#: The drop folder's names for the generic domains: the same group under ``drops/``, partitioned per
#: payload, fed by ``drops/collected_otlp``, run by ``trace_drop_job``.
DROP_DOMAIN_JOBS = ["trace_drop_job"]
DROP_DOMAIN_ASSETS = ["drops/collected_otlp", "drops/inventory_events", "drops/inventory_projection",
                      "drops/inventory_validation", "drops/trace_summary"]
DROP_DOMAIN_CHECKS = [f"drops/{check}" for check in DOMAIN_CHECKS]


def test_the_merged_definitions_hold_every_name() -> None:
    repository = defs.get_repository_def()
    assert sorted(job.name for job in repository.get_all_jobs() if job.name != "__ASSET_JOB") == sorted([
        "kvonce_conformance_job", "kvonce_drop_job", "kvonce_sharded_job", "kvonce_store_job",
        "kvonce_store_reset_job", *DOMAIN_JOBS, *DROP_DOMAIN_JOBS])
    assert sorted(key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()) == sorted([
        "collected_kvonce_otlp", "drops/collected_kvonce_otlp", "drops/kvonce_events", "drops/kvonce_projection",
        "drops/kvonce_store", "drops/kvonce_validation", "kvonce_events", "kvonce_projection", "kvonce_validation",
        *DOMAIN_ASSETS, *DROP_DOMAIN_ASSETS])
    assert sorted(key.to_user_string() for key in repository.asset_graph.asset_check_keys) == sorted(DOMAIN_CHECKS + DROP_DOMAIN_CHECKS + [
        "collected_kvonce_otlp:collected_schema", "drops/collected_kvonce_otlp:collected_schema",
        "drops/kvonce_events:events_schema", "drops/kvonce_projection:projection_schema",
        "drops/kvonce_store:cross_payload_conformance", "drops/kvonce_validation:kvonce_conformance",
        "drops/kvonce_validation:validation_schema", "kvonce_events:events_schema",
        "kvonce_projection:projection_schema", "kvonce_validation:kvonce_conformance",
        "kvonce_validation:validation_schema"])
    assert [sensor.name for sensor in repository.sensor_defs] == ["kvonce_drop_sensor"]
    assert sorted(repository.get_top_level_resources()) == ["kvonce"]


def test_the_package_attribute_is_the_merged_definitions() -> None:
    """``dagster job execute -m kvonce_pipeline`` finds ``kvonce_pipeline.defs``: the same object."""
    import kvonce_pipeline

    assert kvonce_pipeline.defs is defs
