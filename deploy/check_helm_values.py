"""Check deploy/helm/values.yaml against the JSON schema of Dagster's Helm chart, offline.

``helm lint``, ``helm template`` and ``helm install`` validate the values against the chart's
``values.schema.json`` themselves; this script is for a machine without helm or without the
network: it reads a schema file you already have (``helm pull dagster/dagster --version 1.13.27
--untar`` gives ``dagster/values.schema.json`` and
``dagster/charts/dagster-user-deployments/values.schema.json``; so does a checkout of Dagster's
repository, under ``helm/dagster/``) and checks the values the way helm does:

- Helm merges our values over the chart's own ``values.yaml``: maps are merged key by key, lists
  replace the chart's lists whole. So a key the schema requires may be missing from our file where
  it sits in a map (the chart's default fills it), but not inside a list item we give (nothing
  fills it there). Without ``--chart-values`` the check therefore skips ``required`` only at paths
  made of map keys; with it, the merge is done first and every ``required`` counts.
- A subchart's schema validates the values under the subchart's name (``--subchart
  NAME=SCHEMA``), as helm does for ``dagster-user-deployments``.
- The chart's schema points at Kubernetes object definitions by URL (a Volume, an EnvVar, ...).
  Nothing is downloaded: they are checked against a definitions file on disk, the one given
  (``--kubernetes-definitions``) or else the newest the ``kubernetes-validate`` package ships (a
  dev dependency); without either, each such reference accepts anything and the script says so,
  so a pass never claims more than it checked.

Exit status: 0 the values match, 1 they do not (each problem printed with its path and line in the
values file), 2 a file could not be read.

    python deploy/check_helm_values.py --schema CHART/values.schema.json \\
        --subchart dagster-user-deployments=CHART/charts/dagster-user-deployments/values.schema.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import ValidationError
from jsonschema.exceptions import best_match
from jsonschema.validators import Draft202012Validator, extend, validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT202012

HERE = Path(__file__).resolve().parent
DEFAULT_VALUES = HERE / "helm" / "values.yaml"


@dataclass
class Problem:
    """One way the values break the schema: where (a dotted path, and its line in the file) and what."""

    schema: str
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '(top level)'}: {self.message}  [{self.schema}]"


@dataclass
class Report:
    """What one check found, and what it could not look at."""

    problems: list[Problem] = field(default_factory=list)
    unchecked_refs: set[str] = field(default_factory=set)
    skipped_required: set[str] = field(default_factory=set)


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(root: yaml.Node | None, path: Sequence[str | int]) -> int | None:
    """The 1-based line of ``path`` in the YAML file (the deepest node of it that exists)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def coalesce(defaults: Any, override: Any) -> Any:
    """Helm's merge of user values over a chart's: maps key by key, anything else replaced whole
    (a ``null`` removes the chart's key, as ``helm`` does)."""
    if isinstance(defaults, dict) and isinstance(override, dict):
        merged = dict(defaults)
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = coalesce(defaults.get(key), value) if key in defaults else value
        return merged
    return copy.deepcopy(override)


def _strip_remote_refs(node: Any, report: Report) -> Any:
    """The schema without its remote ``$ref`` s (each noted in ``report.unchecked_refs``): where the
    Kubernetes definitions are not at hand, such an object is accepted as it is, not failed."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                report.unchecked_refs.add(value.split("#", 1)[0])
                continue
            out[key] = _strip_remote_refs(value, report)
        return out
    if isinstance(node, list):
        return [_strip_remote_refs(item, report) for item in node]
    return node


def installed_kubernetes_definitions(strict: bool = False) -> Path | None:
    """The newest Kubernetes ``_definitions.json`` the ``kubernetes-validate`` package ships (a dev
    dependency), or None when it is not installed.

    ``strict`` is the variant that refuses keys Kubernetes does not know; the chart's own defaults
    fail it (the chart adds ``enabled`` to its probes), so the whole-values check uses the lenient
    one, and the strict one suits our own objects alone (see kvonce_pipeline_tests/test_deploy.py)."""
    try:
        from importlib.resources import files

        root = files("kubernetes_validate") / "kubernetes-json-schema"
        folders = [entry for entry in root.iterdir() if entry.name.endswith("-local-strict" if strict else "-local")]
    except (ImportError, OSError):
        return None

    def version(entry: Any) -> tuple[int, ...]:
        return tuple(int(part) for part in entry.name.removeprefix("v").split("-")[0].split("."))

    return Path(str(max(folders, key=version) / "_definitions.json")) if folders else None


def _registry(kubernetes: dict[str, Any] | None) -> Registry:
    """Remote ``$ref`` targets come from the Kubernetes definitions file given; nothing is downloaded.

    The chart points into ``#/definitions/...``; a file that keeps them under ``$defs`` (the layout
    the ``kubernetes-validate`` package ships) is read under both names."""
    if kubernetes is not None and "definitions" not in kubernetes and "$defs" in kubernetes:
        kubernetes = {**kubernetes, "definitions": kubernetes["$defs"]}

    def retrieve(uri: str) -> Resource:
        if kubernetes is None:
            raise NoSuchResource(uri)
        return Resource.from_contents(kubernetes, default_specification=DRAFT202012)

    return Registry(retrieve=retrieve)  # type: ignore[call-arg]  # an attrs field mypy does not see


def _map_only(values: Any, found: set[int] | None = None) -> set[int]:
    """The ids of the maps reached from the top through map keys only: the maps helm merges with
    the chart's defaults (a list, and everything under it, replaces the chart's whole)."""
    found = set() if found is None else found
    if isinstance(values, dict):
        found.add(id(values))
        for value in values.values():
            _map_only(value, found)
    return found


def check(values: dict[str, Any], tree: yaml.Node | None, schema: dict[str, Any], schema_name: str,
          report: Report, *, prefix: Sequence[str | int] = (), merged: bool = False,
          kubernetes: dict[str, Any] | None = None, own_keys: set[str] | None = None) -> None:
    """Validate ``values`` against ``schema``, adding every problem to ``report``.

    Unless ``merged`` (the chart's defaults already under ``values``), ``required`` is not enforced
    on the maps helm merges with the chart's defaults: done as a keyword of the validator, not by
    dropping errors afterwards, so that it also holds inside ``anyOf`` branches (the run launcher's
    config is one) where a dropped error would still have failed the branch."""
    if kubernetes is None:
        schema = _strip_remote_refs(schema, report)
    base = validator_for(schema, default=Draft202012Validator)  # no draft named: helm reads 2020-12
    validator_class = base
    if not merged:
        filled_by_chart = _map_only(values)
        enforce = base.VALIDATORS["required"]

        def required(validator: Any, names: Any, instance: Any, schema_: Any) -> Iterator[ValidationError]:
            if id(instance) in filled_by_chart:
                missing = [n for n in names if isinstance(instance, dict) and n not in instance]
                report.skipped_required.update(missing)
                return
            yield from enforce(validator, names, instance, schema_)

        validator_class = extend(base, {"required": required})
    for error in validator_class(schema, registry=_registry(kubernetes)).iter_errors(values):
        path = [*prefix, *error.absolute_path]
        message = error.message if len(error.message) < 200 else error.message[:200] + "..."
        if error.context:  # anyOf/oneOf: say which branch came closest and why it failed
            # a branch that failed on more than its type (not the "or null" branch) says most
            telling = [e for e in error.context if e.validator != "type" or e.relative_path] or error.context
            closest = best_match(telling)
            where = _dotted([*path, *closest.relative_path])
            message = f"matches none of the allowed forms; closest: {where}: {closest.message}"
        report.problems.append(Problem(schema_name, _dotted(path), _line_of(tree, path), message))
    if own_keys is not None and schema.get("additionalProperties", True) is not False:
        # The chart's schema lets unknown top-level keys through (helm ignores them), so a misspelled
        # section would silently do nothing: we fail it.
        for key in sorted(own_keys - set(schema.get("properties", {}))):
            report.problems.append(Problem(schema_name, str(key), _line_of(tree, [key]),
                                           "not a key of the chart (helm would ignore it)"))


def _load(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SystemExit(f"check_helm_values: cannot read the {what} {path}: {exc}") from None


@dataclass
class Chart:
    """A chart's schema, and its default values when known (``values.yaml`` beside the schema)."""

    name: str
    schema_path: Path
    schema: dict[str, Any]
    defaults: dict[str, Any] | None


def _chart(name: str, schema_path: Path, defaults_path: Path | None) -> Chart:
    defaults = _load(defaults_path, "chart values") if defaults_path is not None else None
    return Chart(name, schema_path, _load(schema_path, "schema"), defaults)


def _charts(args: argparse.Namespace) -> tuple[Chart, list[Chart]]:
    if args.chart is not None:
        folder: Path = args.chart
        main_chart = _chart("dagster", folder / "values.schema.json", folder / "values.yaml")
        subs = [_chart(sub.name, sub / "values.schema.json",
                       sub / "values.yaml" if (sub / "values.yaml").exists() else None)
                for sub in sorted((folder / "charts").glob("*")) if (sub / "values.schema.json").exists()]
        return main_chart, subs
    if args.schema is None:
        raise SystemExit("check_helm_values: give --chart DIR or --schema FILE")
    subs = []
    for spec in args.subchart:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"check_helm_values: --subchart {spec!r}: expected NAME=SCHEMA")
        subs.append(_chart(name, Path(path), None))
    return _chart("chart", args.schema, args.chart_values), subs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--chart", type=Path, help="an unpacked chart (helm pull --untar): its values.schema.json, "
                        "values.yaml and charts/*/ are all used, as helm uses them")
    parser.add_argument("--schema", type=Path, help="the chart's values.schema.json (instead of --chart)")
    parser.add_argument("--subchart", action="append", default=[], metavar="NAME=SCHEMA",
                        help="with --schema: a subchart's values.schema.json, checked against the values under NAME")
    parser.add_argument("--chart-values", type=Path,
                        help="with --schema: the chart's own values.yaml, merged under ours first, as helm does")
    parser.add_argument("--values", type=Path, default=DEFAULT_VALUES, help="default: deploy/helm/values.yaml")
    parser.add_argument("--kubernetes-definitions", type=Path,
                        help="a Kubernetes _definitions.json for the Kubernetes objects in the values "
                             "(default: the newest kubernetes-validate ships, when installed)")
    args = parser.parse_args(argv)

    try:
        values = _load(args.values, "values file")
        tree = yaml.compose(args.values.read_text())
        main_chart, subcharts = _charts(args)
        definitions = args.kubernetes_definitions or installed_kubernetes_definitions()
        kubernetes = _load(definitions, "Kubernetes definitions") if definitions else None
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    if not isinstance(values, dict):
        print(f"check_helm_values: {args.values}: the top level is not a map", file=sys.stderr)
        return 1

    report = Report()
    merged = coalesce(main_chart.defaults, values) if main_chart.defaults is not None else values
    check(merged, tree, main_chart.schema, str(main_chart.schema_path), report,
          merged=main_chart.defaults is not None, kubernetes=kubernetes, own_keys=set(values))
    for sub in subcharts:
        # helm: the parent's values under the subchart's name, over the subchart's own defaults, plus globals
        ours = {**(merged.get(sub.name) or {}), "global": merged.get("global") or {}}
        sub_values = coalesce(sub.defaults, ours) if sub.defaults is not None else ours
        check(sub_values, tree, sub.schema, str(sub.schema_path), report, prefix=(sub.name,),
              merged=sub.defaults is not None, kubernetes=kubernetes)

    print(f"values: {args.values}")
    if definitions:
        print(f"Kubernetes objects: {definitions}")
    for chart in (main_chart, *subcharts):
        print(f"schema: {chart.schema_path}" + (" (with the chart's values.yaml merged under ours)"
                                               if chart.defaults is not None else ""))
    if report.skipped_required:
        print(f"not checked: required keys the chart's own values.yaml supplies "
              f"({', '.join(sorted(report.skipped_required))}); pass --chart DIR or --chart-values to check them")
    if report.unchecked_refs:
        print(f"not checked: Kubernetes objects defined at {', '.join(sorted(report.unchecked_refs))}; "
              f"install kubernetes-validate or pass --kubernetes-definitions to check them")
    for problem in report.problems:
        print(f"{args.values}: {problem}")
    if report.problems:
        print(f"FAILED: {len(report.problems)} problem(s)")
        return 1
    print("OK: the values match the schema")
    return 0


if __name__ == "__main__":
    sys.exit(main())
