"""The one exception type for problems a user can fix (bad config, bad data, missing files).

The CLI prints its message alone, without a traceback, and exits with status 1.
"""


class CvpipeError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""
