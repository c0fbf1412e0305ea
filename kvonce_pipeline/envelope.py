"""Temporary: the old path of :mod:`kvonce_pipeline.engine.envelope`, for
``kvonce_pipeline_tests/test_dagster_dev_e2e.py`` only (``from kvonce_pipeline.envelope import
ENVELOPE``), which the layout change could not edit. Remove once that line uses the new path."""

import sys

from .engine import envelope as _moved

sys.modules[__name__] = _moved  # the same module object, not a copy
