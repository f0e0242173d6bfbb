"""The exceptions the command line turns into a message and an exit status, not a traceback.

- `CvpipeError`: a problem the user can fix (bad config, bad data, missing files): status 1;
- `Preempted`: training stopped on a signal after checkpointing (see `cvpipe.preemption`):
  status `EXIT_PREEMPTED` (75, EX_TEMPFAIL), which means "run me again to continue".
"""

EXIT_PREEMPTED = 75


class CvpipeError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""


class Preempted(Exception):
    """Training stopped on a signal after checkpointing; rerun to continue."""
