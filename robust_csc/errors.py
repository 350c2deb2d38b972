"""The one exception type for mistakes a user can make and fix."""


class RobustCSCError(Exception):
    """A user-fixable problem: the message names the problem and the fix.

    The CLI prints the message as a single line and exits with code 2.
    """
