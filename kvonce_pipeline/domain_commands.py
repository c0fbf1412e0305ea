"""``kvonce domain list | doc NAME | new NAME --prefix PREFIX``: the installed domains and the template."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from string import Template

from .engine.errors import ConfigError, KvonceError

TEMPLATE_DIR = Path(__file__).resolve().parent / "devtools" / "domain_template"
#: template file -> where it goes in the new project ($package: the Python package's name)
_LAYOUT = (
    ("pyproject.toml.tmpl", "pyproject.toml"),
    ("init.py.tmpl", "$package/__init__.py"),
    ("domain.toml.tmpl", "$package/domain.toml"),
    ("machine.py.tmpl", "$package/machine.py"),
    ("sample.ndjson.tmpl", "$package/samples/$name-sample.ndjson"),
    ("test_domain.py.tmpl", "tests/test_$name.py"),
)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}\.$")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("domain", help="the installed domains (list, doc) and a template for a new one (new)")
    commands = parser.add_subparsers(dest="domain_command", required=True)
    listing = commands.add_parser("list", help="the installed domains: name, label, attribute prefix, package "
                                               "(exit 2, naming them, if some could not be loaded)")
    listing.set_defaults(run=_list)
    doc = commands.add_parser("doc", help="a domain's trace schema as Markdown (event fields, OTLP mapping, rules)")
    doc.add_argument("name")
    doc.set_defaults(run=_doc)
    new = commands.add_parser("new", help="write a new domain's package: definition, state machine, sample, test")
    new.add_argument("name", help="the domain's name: lower-case letters, digits, '_' (e.g. payments)")
    new.add_argument("--prefix", required=True, help="its OTLP attribute prefix, ending in '.' (e.g. payments.event.)")
    new.add_argument("--label", default=None, help="its display name (default: the name, capitalised)")
    new.add_argument("--dir", default=".", help="where the package folder kvonce-domain-NAME is created (default: here)")
    new.set_defaults(run=_new)


def _list(args: argparse.Namespace) -> int:
    from .engine import registry
    from importlib.metadata import entry_points

    packages = {point.name: point.value for point in entry_points(group=registry.GROUP)}
    domains = registry.installed()
    width = max((len(name) for name in domains), default=4)
    for name, domain in domains.items():
        d = domain.definition
        print(f"{name:<{width}}  {d.label:<12} {d.prefix:<20} {len(d.types)} types, {len(domain.rules())} rules  "
              f"({packages.get(name, '?')})")
    problems = registry.load_errors()
    for problem in problems.values():
        print(f"kvonce: {problem}", file=sys.stderr)
    return 2 if problems else 0


def _doc(args: argparse.Namespace) -> int:
    from .engine import registry
    from .engine.domain_doc import render_domain_doc

    sys.stdout.write(render_domain_doc(registry.get(args.name)))
    return 0


def _new(args: argparse.Namespace) -> int:
    from .engine.domain import load_definition

    name, prefix = args.name, args.prefix
    if not _NAME.match(name):
        raise ConfigError(f"domain name {name!r} must be lower-case letters, digits and '_', starting with a letter")
    if not _PREFIX.match(prefix):
        raise ConfigError(f"--prefix {prefix!r} must be letters, digits, '_', '-', '.' and end with '.' "
                          "(e.g. payments.event.)")
    from .engine.domain import RESERVED_NAMES
    from .engine.registry import installed

    if name in RESERVED_NAMES:
        raise ConfigError(f"domain name {name!r} is reserved ({', '.join(sorted(RESERVED_NAMES))})")
    for other in installed().values():
        if other.name == name or other.definition.prefix == prefix:
            raise ConfigError(f"the installed domain {other.name!r} already has "
                              f"{'this name' if other.name == name else f'the prefix {prefix!r}'}: choose another")
    values = {"name": name, "prefix": prefix, "label": args.label or name.replace("_", " ").title(),
              "package": f"kvonce_domain_{name}", "dist": f"kvonce-domain-{name.replace('_', '-')}"}
    parent = Path(args.dir)
    target = parent / f"kvonce-domain-{name.replace('_', '-')}"
    if target.exists():
        raise KvonceError(f"{target} exists already: nothing was written (choose another --dir or name)")
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kvonce-domain-new-", dir=parent))
    try:
        for source, destination in _LAYOUT:
            text = Template((TEMPLATE_DIR / source).read_text(encoding="utf-8")).substitute(values)
            path = staging / Template(destination).substitute(values)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        load_definition(staging / values["package"] / "domain.toml")  # what we wrote must load
        os.rename(staging, target)  # the folder appears whole or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"kvonce: wrote {target}/ (the {values['label']} domain). Next:\n"
          f"  pip install -e {target}     # registers it: `kvonce domain list` shows it\n"
          f"  pytest {target}/tests        # its test passes as generated\n"
          f"  kvonce conformance --domain {name} --input {target}/{values['package']}/samples/{name}-sample.ndjson",
          file=sys.stderr)
    return 0
