"""Temporary: the old path of :mod:`kvonce_pipeline.devtools.generate`, for
``kvonce_pipeline_tests/test_deploy.py`` only (``from kvonce_pipeline.generate import GenerateOptions,
generate``), which the layout change could not edit. Remove once that line uses the new path."""

import sys

from .devtools import generate as _moved

sys.modules[__name__] = _moved  # the same module object, not a copy
