"""The one exception type for bad input: the CLI prints its message on one line."""


class DissectError(ValueError):
    """Bad input or an impossible request; the message says what was wrong and what to do."""
