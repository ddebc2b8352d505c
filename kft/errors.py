"""The one exception class kft raises for mistakes a user can fix."""


class KftError(Exception):
    """A problem the user caused and can fix: bad recipe, bad data, bad option.

    The message says what was wrong and what to do. The CLI prints it in one
    or two lines, without a traceback, and exits with status 2.
    """
