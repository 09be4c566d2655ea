"""The one exception type a user should ever see: the CLI prints it as a single line and exits 2."""


class TfkdError(Exception):
    """A problem with the user's input or environment; the message names the culprit and the fix."""


def one_line(e, limit=200):
    """An exception as 'Type: message' on one line, cut at `limit` characters: a quotable cause
    inside a TfkdError (tracebacks and multi-line messages from libraries would break the line)."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:limit]
