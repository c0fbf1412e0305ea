"""``kvonce``: the same core as the Dagster assets, for CI steps and people at a terminal.

Exit codes (a contract): 0 the trace is valid, 1 it violates the spec, 2 the input is unusable (or
the command line is wrong). Subcommands added by later features register in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .engine.errors import InputError, KvonceError, OutputError

if TYPE_CHECKING:
    from .domains.kvonce.own_pass.conformance import ConformanceOptions, ConformanceResult
    from .engine.progress import ConsoleProgress
    from .domains.kvonce.own_pass.stages import ProgressCallback

EXIT_VALID = 0
EXIT_VIOLATIONS = 1
EXIT_UNUSABLE = 2


# Findings printed on stderr; the rest are counted, with the path of the full list.
SHOWN_FINDINGS = 20

def _add_conformance(sub: argparse._SubParsersAction) -> None:
    from .engine.decode.reader import FORMAT_CHOICES

    parser = sub.add_parser("conformance", help="check a trace against the KvOnce spec and write the reports")
    parser.add_argument("--input", required=True, help="trace file: NDJSON, OTLP/JSON, JSON Lines or protobuf (gzip ok); "
                                                        "a URL (s3://bucket/key, ...) is downloaded once and read from a private copy")
    parser.add_argument("--output-dir", default=None, help="where reports go (default: <reports>/cli/trace, reports = KVONCE_REPORTS_DIR or hermetic-reports; apart from the Dagster job's <reports>/trace); "
                                                           "a URL (s3://bucket/prefix, ...) gets the reports once the run is done, the validation report last")
    parser.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="skip sniffing the format")
    parser.add_argument("--strict", action="store_true", help="warnings (duplicate-before-success, ...) become errors")
    parser.add_argument("--max-retries", type=int, default=3, help="MAX_RETRIES of the spec (default 3)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar or summary line on stderr")
    parser.add_argument("--domain", action="append", default=None, metavar="NAME",
                        help="check only this domain (repeatable, or comma-separated; default: every installed "
                             "domain the payload carries; an NDJSON event log is read as kvonce's unless this says)")
    parser.add_argument("--option", action="append", default=[], metavar="[DOMAIN.]NAME=VALUE",
                        help="set a domain option (e.g. inventory.onhand_min=5; `kvonce domain doc NAME` lists them)")
    parser.add_argument("--disable", action="append", default=[], metavar="RULE[,RULE]",
                        help="do not report these rule ids (domains on the generic engine)")
    _add_shard_options(parser)
    parser.set_defaults(run=_conformance, one_pass=True)


def _conformance(args: argparse.Namespace) -> int:
    from .engine.artifacts import cli_trace_dir
    from .domains.kvonce.own_pass.conformance import ConformanceOptions, run_conformance
    from .engine.limits import Limits
    from .engine.progress import ConsoleProgress

    if args.max_retries < 0:
        print("kvonce: --max-retries must be zero or more", file=sys.stderr)
        return EXIT_UNUSABLE
    from .domains.kvonce.artifacts import VALIDATION
    from .engine.storage import is_remote, local_path

    out_dir: str | Path = cli_trace_dir()
    if args.output_dir:
        out_dir = args.output_dir if is_remote(args.output_dir) else local_path(args.output_dir)
    if isinstance(out_dir, Path) and out_dir.exists() and not out_dir.is_dir():
        print(f"kvonce: --output-dir {out_dir} is a file, not a folder: give a folder for the reports",
              file=sys.stderr)
        return EXIT_UNUSABLE
    disabled = frozenset(_names(args.disable) or ())
    options = ConformanceOptions(format=args.format, strict=args.strict, max_retries=args.max_retries,
                                 limits=Limits.from_env(), disabled=disabled)
    progress = None if args.no_progress else ConsoleProgress(sys.stderr)
    domains = _names(args.domain)
    if _sharded(args) or is_remote(str(out_dir)) or is_remote(args.input):
        if domains not in (None, ("kvonce",)) or args.option:
            raise KvonceError("--domain and --option work on local files with one pass; key shards "
                              "and URLs check KvOnce only")
        from .domains.kvonce.validation import check_disabled

        check_disabled(disabled)
        if _sharded(args):
            result = _run_sharded(args, out_dir, options, progress)
        else:
            result = run_conformance(args.input, out_dir, options, progress=progress)
        if progress is not None:
            progress.finish()
        _print_verdict(result.report, str(result.output_dir), VALIDATION, "")
        return result.exit_code
    return _check_payload(args, Path(out_dir), domains, options, progress)


def _names(given: list[str] | None) -> tuple[str, ...] | None:
    if not given:
        return None
    names = tuple(dict.fromkeys(name.strip() for item in given for name in item.split(",") if name.strip()))
    return names or None


def _domain_options(args: argparse.Namespace, domains: tuple[str, ...] | None) -> dict[str, dict[str, str]]:
    """``--option [DOMAIN.]NAME=VALUE`` by domain (without a domain: the one --domain named)."""
    out: dict[str, dict[str, str]] = {"kvonce": {"max_retries": str(args.max_retries)}}
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise KvonceError(f"--option {item!r}: expected [DOMAIN.]NAME=VALUE")
        domain, dot, option = name.strip().rpartition(".")
        if not dot:
            if not domains or len(domains) != 1:
                raise KvonceError(f"--option {item!r}: say which domain (DOMAIN.NAME=VALUE) unless one --domain is given")
            domain = domains[0]
        out.setdefault(domain, {})[option] = value
    return out


def _check_payload(args: argparse.Namespace, out_dir: Path, domains: tuple[str, ...] | None,
                   options: "ConformanceOptions", progress: "ConsoleProgress | None") -> int:
    from .engine.payload import TRACE_SUMMARY, PayloadRequest, check_payload
    from .engine.registry import DEFAULT_DOMAIN, load_errors

    for problem in load_errors().values():  # never a silently missing domain
        print(f"kvonce: warning: {problem}", file=sys.stderr)
    request = PayloadRequest(args.input, out_dir, format=args.format, limits=options.limits, domains=domains,
                             strict=args.strict,
                             disabled=options.disabled,
                             options=_domain_options(args, domains), extra={"progress": progress})
    outcome = check_payload(request)
    results = outcome.results
    if len(results) == 1 and results[0].error is not None:
        raise results[0].error  # reported as it always was: "unusable input", exit 2, no progress line
    if progress is not None:
        progress.finish()
    for result in results:
        tag = "" if result.domain.name == DEFAULT_DOMAIN else f"[{result.domain.name}] "
        if result.error is not None:
            print(f"kvonce: {tag}unusable input: {result.error}", file=sys.stderr)
            continue
        _print_verdict(result.report, str(result.out_dir), result.names.validation, tag)
    if len(results) > 1:
        aggregate = outcome.summary["aggregate"]
        print(f"kvonce: overall: {aggregate['status']} ({len(results)} domains); "
              f"trace summary in {out_dir / TRACE_SUMMARY}", file=sys.stderr)
    return outcome.exit_code


def _print_verdict(report: dict, shown: str, validation_name: str, tag: str) -> None:
    summary = report["summary"]
    verdict = "valid" if report["valid"] else "INVALID"
    print(f"kvonce: {tag}{verdict}: {summary['events']} events, {summary['keys']} keys, "
          f"{summary['errors']} errors, {summary['warnings']} warnings; reports in {shown}", file=sys.stderr)
    issues = report["issues"]
    for issue in issues[:SHOWN_FINDINGS]:
        ids = " ".join(f"{name}={issue[field]}" for name, field in (("trace", "traceId"), ("span", "spanId"))
                       if issue.get(field))
        print(f"  {issue['severity']}: {issue['type']} key={issue['key']} event={issue['eventIndex']}"
              f" ({issue.get('origin', '')}): {issue['message']}{f' [{ids}]' if ids else ''}", file=sys.stderr)
    if len(issues) > SHOWN_FINDINGS:
        print(f"  ... and {len(issues) - SHOWN_FINDINGS} more findings ({len(issues)} in all): "
              f"the full list is in {shown}/{validation_name}", file=sys.stderr)


def _add_shard_options(parser: argparse.ArgumentParser) -> None:
    """``--shards S [--engine local|dask] [--scheduler ADDRESS]``: the key-sharded run (kvonce_pipeline.domains.kvonce.own_pass.shards)."""
    parser.add_argument("--shards", type=int, default=1,
                        help="split the trace by a hash of the key into S shards checked independently and merged "
                             "(the same reports, byte for byte; default 1: one pass, no engine)")
    parser.add_argument("--engine", default=None, choices=("local", "dask"),
                        help="where the shards run: 'dask' (the default with --shards > 1) on a dask.distributed "
                             "cluster, 'local' one after the other in this process")
    parser.add_argument("--scheduler", default=None,
                        help="a running dask scheduler (tcp://host:8786; default KVONCE_DASK_SCHEDULER); without one "
                             "--engine dask starts a local cluster of S worker processes and stops it after the run")


def _sharded(args: argparse.Namespace) -> bool:
    """Today's one pass unless shards, an engine or a scheduler were asked for."""
    return args.shards != 1 or args.engine is not None or bool(args.scheduler)


def _run_sharded(args: argparse.Namespace, out_dir: str | Path, options: "ConformanceOptions",
                 progress: "ProgressCallback | None") -> "ConformanceResult":
    from dataclasses import replace

    from .domains.kvonce import artifacts as kvonce_artifacts
    from .domains.kvonce.own_pass.conformance import report_input_error
    from .domains.kvonce.own_pass.shards import MAX_SHARDS, SCHEDULER_ENV, engine_for, run_sharded
    from .engine.storage import is_remote, run_staged

    if not 1 <= args.shards <= MAX_SHARDS:
        raise KvonceError(f"--shards must be 1 to {MAX_SHARDS}, not {args.shards}")
    if args.scheduler and args.engine == "local":
        raise KvonceError("--scheduler needs --engine dask")
    # KVONCE_DASK_SCHEDULER counts only where dask runs the shards: a local run ignores it
    engine_name = args.engine or ("dask" if args.shards > 1 or args.scheduler else "local")
    scheduler = args.scheduler or (os.environ.get(SCHEDULER_ENV) if engine_name == "dask" else None) or None
    remote_out = is_remote(out_dir)
    if scheduler and remote_out:
        raise KvonceError("--output-dir must be a folder every dask worker sees when the shards run on a "
                          f"scheduler ({scheduler}): the shard files are written beside the reports")
    with engine_for(engine_name, shards=args.shards, scheduler=scheduler) as engine:
        def run(source: str | os.PathLike[str], out: Path) -> "ConformanceResult":
            return run_sharded(source, out, options, shards=args.shards, engine=engine, progress=progress).result

        result = run_staged(args.input, out_dir, run, limits=options.limits, report_input_error=report_input_error,
                            published=kvonce_artifacts.PUBLISH_ORDER)
    return replace(result, output_dir=str(out_dir).rstrip("/")) if remote_out else result


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from .engine.decode.reader import FORMAT_CHOICES

    parser = sub.add_parser("convert", help="write a trace's events as NDJSON")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", default=None, help="NDJSON file (default: standard output)")
    parser.add_argument("--format", default="auto", choices=FORMAT_CHOICES)
    parser.set_defaults(run=_convert, one_pass=True)


def _convert(args: argparse.Namespace) -> int:
    from .domains.kvonce.own_pass.conformance import _ordered_events
    from .engine.limits import Limits
    from .domains.kvonce.event_log import dump_events
    from .domains.kvonce.own_pass.stages import _timestamped, write_events

    if args.output and Path(args.output).is_dir():
        print(f"kvonce: --output {args.output} is a folder: give the name of the NDJSON file to write",
              file=sys.stderr)
        return EXIT_UNUSABLE
    with _ordered_events(args.input, format=args.format, limits=Limits.from_env(),
                         spill_dir=Path(args.output).parent if args.output else None) as events:
        if args.output:
            write_events(events, Path(args.output))
        else:
            dump_events(_timestamped(events), sys.stdout.buffer)
            sys.stdout.buffer.flush()
    return EXIT_VALID


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_conformance, _add_convert]
#: Modules of this package that add subcommands through a ``register(subparsers)`` function.
#: Their top-level imports stay light; heavy imports happen inside the command.
COMMAND_MODULES = ("collector.collector", "devtools.mock_service", "devtools.generate", "domains.kvonce.store",
                   "domain_commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvonce", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for register in COMMANDS:
        register(sub)
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(f"{__package__}.{name}") is not None:
            importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run one command; ``exiting``: the process ends right after (see :func:`run`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, which matches our contract
        return int(exc.code or 0)
    if exiting and getattr(args, "one_pass", False):
        # One pass over the input, then exit: nothing it makes has reference cycles, and once
        # the pass re-enabled the cyclic collector a collection walked its million live events
        # for most of a second (measured 0.7 s on the 1M-event trace) before the exit.
        gc.disable()
    try:
        return int(args.run(args))
    except InputError as error:
        print(f"kvonce: unusable input: {error}", file=sys.stderr)
        for note in getattr(error, "__notes__", ()):
            print(f"kvonce: {note}", file=sys.stderr)
        return EXIT_UNUSABLE
    except OutputError as error:
        print(f"kvonce: cannot write reports: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KvonceError as error:
        print(f"kvonce: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    except BrokenPipeError:
        return EXIT_VALID


def run() -> None:
    """The ``kvonce`` command: :func:`main`, then exit without tearing the heap down.

    A 1M-event run leaves millions of objects (events, per-key state) that a normal interpreter
    exit would free one by one, for a second or more, only to give the memory back to the
    system anyway. Every file is closed and renamed into place by then; the streams are flushed.
    """
    from .engine.decode.reader import park_until_exit

    park_until_exit()
    code = main(exiting=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
