"""The one exception type a user can cause.

Anything raised as `UserError` is reported by the CLI as a single line on
stderr with exit code 2; its message must name the input and the fix.
Every other exception is a bug in storyloom and keeps its traceback.
"""


class UserError(Exception):
    """Bad input or flags: the message is shown to the user as is."""
