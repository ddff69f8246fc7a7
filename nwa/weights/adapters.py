"""Former home of the public-zoo adapters, now :mod:`nwa.zoo.adapters` (adapters build zoos).

Kept only so that callers of the old path (``from nwa.weights.adapters import open_zoo``) work.
"""

from nwa.zoo.adapters import detect_adapter, open_zoo

__all__ = ["detect_adapter", "open_zoo"]
