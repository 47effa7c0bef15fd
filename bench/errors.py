"""One exception type for every error a user can cause.

The CLI prints a :class:`BenchError` as a single line (``bench: error: ...``) instead of a
traceback, so each message must name the thing at fault (file, field, method, dataset) and say
what was expected.
"""


class BenchError(Exception):
    """A user-facing error: bad input, unknown name, incompatible method and dataset."""
