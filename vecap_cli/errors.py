"""The two kinds of failure every command distinguishes.

A `VecapError` is structural (unreadable input, unwritable output, missing model):
the command stops at once and prints one line. A per-record problem is not an
exception at all: it goes to `Tally.reject`, which raises `StrictError` only
under `--strict`.
"""


class VecapError(Exception):
    """A structural failure; `str(err)` is the one line the user sees."""


class StrictError(VecapError):
    """The first per-record rejection under --strict."""


def first_line(err: BaseException) -> str:
    """An exception as one line: its message's first line, else its type's name."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
