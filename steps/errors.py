"""The one exception type a user can cause; the CLI prints it as a single line."""


class UserError(Exception):
    """Bad input or environment: the message says what was wrong and what to do."""
