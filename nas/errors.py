"""Error types the CLI maps to exit codes: :class:`InputError` -> 2; anything else -> 1."""


class InputError(ValueError):
    """Bad user input (spec, config, path, flag value); the message is one line naming the field."""
