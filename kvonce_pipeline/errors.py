"""Temporary: the old path of :mod:`kvonce_pipeline.engine.errors`, for ``engine/domain.py`` and
``engine/registry.py`` only (``from ..errors import ConfigError``), which the layout change could not
edit. Remove this file once those two imports read ``from .errors import ConfigError``."""

from .engine.errors import ConfigError, InputError, KvonceError, OutputError

__all__ = ["ConfigError", "InputError", "KvonceError", "OutputError"]
