"""The one exception type a user can cause, and the one a lost peer causes.

Anything raised as `UserError` is reported by the CLI as a single line on
stderr with exit code 2; its message must name the input and the fix.
`RankLost` (world.py raises it) is one line and exit code 1: not the
user's input. Every other exception is a bug in storyloom and keeps its
traceback.
"""


class UserError(Exception):
    """Bad input or flags: the message is shown to the user as is."""


class RankLost(Exception):
    """A collective failed or timed out: another rank died or the network broke. Not the user's input: exit 1."""
