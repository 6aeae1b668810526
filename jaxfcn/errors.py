"""The one exception type for mistakes a user can fix (bad file, bad flag, bad config).

The CLI prints a `UserError` as a single line ``jaxfcn: error: <message>`` and exits non-zero, with no
traceback. Anything else is a bug in jaxfcn and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input. The message must name the file/flag and what is wrong."""
