"""Which data inputs an encoder (or a module without one) accepts.

Each encoder class declares ``inputs``: the ``data.input`` families it can read (see
:data:`nwa.data.reading.INPUTS`). ``python -m nwa.fit`` checks the pairing before any zoo is opened, so a
mismatch ends with one line instead of failing at the first forward pass.
"""

from __future__ import annotations

from nwa.errors import ConfigError


def accepted_inputs(owner: type | object) -> tuple[str, ...] | None:
    """The inputs ``owner`` (a class or an instance) declares, ``None`` when it declares none."""
    inputs = getattr(owner, "inputs", None)
    return tuple(inputs) if inputs is not None else None


def check_input(owner: type | object, data_input: str) -> None:
    """Raise :class:`ConfigError` (one line) when ``owner`` does not accept ``data_input``.

    Args:
        owner: An encoder or module class (or instance) with an ``inputs`` attribute.
        data_input: The data module's ``input``.
    """
    accepted = accepted_inputs(owner)
    if accepted is None or data_input in accepted:
        return
    name = owner.__name__ if isinstance(owner, type) else type(owner).__name__
    choices = " or ".join(repr(i) for i in accepted)
    raise ConfigError(
        f"{name} accepts data.input {choices}, but data.init_args.input is {data_input!r}"
    )
