"""The public API: every name in ``__all__`` resolves, and importing it imports no Dagster."""

from __future__ import annotations

import subprocess
import sys

import kvonce_pipeline
from kvonce_pipeline.domains.kvonce import artifacts


def test_every_public_name_resolves_to_what_its_module_defines() -> None:
    for name in kvonce_pipeline.__all__:
        if name == "__version__":
            continue
        value = getattr(kvonce_pipeline, name)
        assert not isinstance(value, type(sys)), f"{name} is a module, not the API object"
        assert value.__module__.startswith("kvonce_pipeline."), name
    assert kvonce_pipeline.generate_trace.__name__ == "generate"


def test_the_core_api_imports_no_dagster() -> None:
    code = ("import sys\n"
            "from kvonce_pipeline import *\n"
            "import kvonce_pipeline as k\n"
            "[getattr(k, n) for n in k.__all__]\n"
            "assert 'dagster' not in sys.modules, sorted(m for m in sys.modules if m.startswith('dagster'))\n"
            "print(len(k.__all__))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(kvonce_pipeline.__all__)
    assert "defs" in dir(kvonce_pipeline)  # public, loaded only when asked for


def test_the_library_checks_a_trace_like_the_cli(tmp_path) -> None:
    from kvonce_pipeline import ConformanceOptions, run_conformance

    result = run_conformance(artifacts.BUNDLED_SAMPLE, tmp_path, ConformanceOptions(strict=True))
    assert (result.valid, result.exit_code) == (False, 1)  # the sample's warning is an error when strict
    assert (tmp_path / artifacts.VALIDATION).is_file()
