"""One exception for every mistake a user can fix: its message names the problem and the fix, and the stage
prints it as one line (quantlab.stage.run_main)."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix, and is printed as one line."""
