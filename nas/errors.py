"""Error types the CLI maps to exit codes: :class:`InputError` -> 2; anything else -> 1."""


class InputError(ValueError):
    """Bad user input (spec, config, path, flag value); the message is one line naming the field."""


def check_ints(owner: object, bounds: tuple[tuple[str, int], ...]) -> None:
    """Each named attribute of ``owner`` must be an integer (not a bool) at least its bound."""
    for name, low in bounds:
        value = getattr(owner, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"{name}: {value!r} is not allowed, allowed an integer >= {low}")
