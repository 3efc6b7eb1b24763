"""User-facing errors: one line that says what is wrong and what to do."""


class UserError(Exception):
    """An expected failure caused by input; the CLI prints it as one line and exits with code 2."""
