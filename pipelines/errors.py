"""The one exception type for errors a user can cause.

It lives in `pipelines`, the bottom layer, so that every package may raise it. The message is
one line that names the thing at fault and the fix; `incept` prints it and exits with status 2,
never a traceback.
"""


class UserError(Exception):
    """A bad path, a corrupt input, a wrong config key, an unreachable server: the user can fix it."""
