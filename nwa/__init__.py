"""nwa: neural-network weights as a data modality."""

from nwa.errors import (
    ConfigError,
    CorruptWeightsError,
    LayerNotFoundError,
    NonFiniteWeightsError,
    NwaError,
    ShapeMismatchError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsNotFoundError,
    ZooError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CorruptWeightsError",
    "LayerNotFoundError",
    "NonFiniteWeightsError",
    "NwaError",
    "ShapeMismatchError",
    "UnsafeCheckpointError",
    "WeightsError",
    "WeightsNotFoundError",
    "ZooError",
    "__version__",
]
