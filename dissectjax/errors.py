"""The one exception type for bad input: the CLI prints its message on one line."""


class DissectError(ValueError):
    """Bad input or an impossible request; the message says what was wrong and what to do."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (whitespace runs, newlines included, become one space).

    >>> one_line(ValueError("bad\\n  input"))
    'bad input'
    """
    return " ".join(str(error).split())


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most ``limit`` characters.

    >>> first_line(ValueError("not prepared\\nTraceback ..."))
    'not prepared'
    """
    return (str(error).splitlines() or [""])[0][:limit]
