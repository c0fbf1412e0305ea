"""Errors that carry *where* the input went wrong.

A conformance gate is only useful if a failure tells the user which file and which line or span
to look at, so every unusable-input error names its source and location.
"""

from __future__ import annotations


class KvonceError(Exception):
    """Base class for errors this package raises on purpose."""


class InputError(KvonceError):
    """The input cannot be used at all (exit code 2): unreadable, malformed or empty of events.

    ``source`` is the file (or a label such as ``request body``); ``where`` is the line, record or
    span (``line 3``, ``span r0/s1/p2``), when one is known.
    """

    def __init__(self, source: str, message: str, *, where: str | None = None) -> None:
        self.source = source
        self.where = where
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        place = f"{self.source}: {self.where}" if self.where else self.source
        return f"{place}: {self.message}"

    def to_json(self) -> dict[str, str | None]:
        return {"source": self.source, "where": self.where, "message": self.message}

    def naming(self, local: str, name: str) -> InputError:
        """This error naming ``name`` (a URL) wherever it names ``local``, a private copy of it that the
        user never saw; itself when it does not name ``local``."""
        if local == name or local not in f"{self.source} {self.message}":
            return self
        return InputError(self.source.replace(local, name), self.message.replace(local, name), where=self.where)


class NoEventsError(InputError):
    """An input that holds no event of the domain being read: readable, just not that domain's. When
    several domains are checked, this is how a payload says it is not one of them (any other
    :class:`InputError` is a real fault and is reported)."""


class OutputError(KvonceError):
    """Artifacts could not be written (disk full, read-only folder); the input is untouched."""


class ConfigError(KvonceError, ValueError):
    """A setting (``KVONCE_*`` variable or option) has a value that cannot be used (exit 2).

    Also a ``ValueError``, so callers that caught the earlier ``ValueError`` keep working.
    """
