"""The one exception type a user should ever see: the CLI prints it as a single line and exits 2."""


class TfkdError(Exception):
    """A problem with the user's input or environment; the message names the culprit and the fix."""
