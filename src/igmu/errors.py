class UserError(Exception):
    """A mistake in the user's input. The CLI prints its message as one line and exits 2."""
