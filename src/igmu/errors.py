class UserError(Exception):
    """A mistake in the user's input. The CLI prints its message as one line and exits 2."""


class NonFiniteError(UserError):
    """Numbers became NaN or infinite (a training loss, changed weights, generated latents). `step` is the
    1-based step at which it happened, when there is one; erase.run_erase adds the options that probably
    caused it."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step
