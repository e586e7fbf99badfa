"""The root of every error sgxcloud raises on purpose.

Command-line front ends turn a :class:`SgxcloudError` into one line on stderr
and its ``exit_code``; anything else is a bug.  Messages must never contain
secret values: they are shown to users and written to logs.
"""


class SgxcloudError(Exception):
    """A failure the user can act on; ``str(err)`` is the whole message."""

    exit_code = 2


class InputError(SgxcloudError):
    """A file, argument or document that cannot be used as given."""

    exit_code = 2
