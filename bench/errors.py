"""One exception type for every error a user can cause.

The CLI prints a :class:`BenchError` as a single line (``bench: error: ...``) instead of a
traceback, so each message must name the thing at fault (file, field, method, dataset) and say
what was expected.
"""


class BenchError(Exception):
    """A user-facing error: bad input, unknown name, incompatible method and dataset."""


def one_line(exc: BaseException, with_type: bool = False) -> str:
    """The message of ``exc`` as one line (prefixed with its type's name if ``with_type``).

    An error raised in a torch DataLoader worker is re-raised with the worker's traceback in its
    message ("Caught BenchError in DataLoader worker process 0. Original Traceback ..."); the
    traceback's last line, ``module.Type: message``, is the original message (naming the file at
    fault), so that is what is kept.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if any(line.startswith("Original Traceback") for line in lines):
        text = lines[-1].partition(": ")[2] or lines[-1]
    else:
        text = " ".join(lines)
    return f"{type(exc).__name__}: {text}" if with_type else text


def plain(value):
    """A numpy scalar or array as the Python number or list it holds, for messages: ``2``, not
    ``np.uint8(2)``."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value
