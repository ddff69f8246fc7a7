"""The interface every weight format is read through: names, shapes and dtypes without data."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from nwa.errors import LayerNotFoundError, ShapeMismatchError, UnsupportedWeightsError


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of one tensor, known without reading its data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class WeightSource(ABC):
    """A model's tensors, read lazily. Use as a context manager, or call :meth:`close`."""

    path: Path

    @abstractmethod
    def infos(self) -> Mapping[str, TensorInfo]:
        """Every tensor's :class:`TensorInfo`, in layout order (see :meth:`names`)."""

    @abstractmethod
    def _read(self, name: str) -> torch.Tensor:
        """Read one tensor known to exist."""

    def names(self) -> list[str]:
        """Tensor names in layout order: the model's module order when the file records it."""
        return list(self.infos())

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos()[name]
        except KeyError:
            raise self._missing(name) from None

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor, and no other."""
        if name not in self.infos():
            raise self._missing(name)
        return self._read(name)

    def read_into(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """Read one tensor into ``out``, which has its shape (values are cast to ``out``'s dtype).

        Formats that can read straight into ``out``'s memory do, with no tensor in between.

        Returns:
            ``out``.
        """
        self._check_out(name, out)
        return convert_into(out, self._read(name), self.path, name)

    def _check_out(self, name: str, out: torch.Tensor) -> TensorInfo:
        info = self.info(name)
        if tuple(out.shape) != info.shape:
            raise ShapeMismatchError(
                self.path,
                f"cannot read shape {list(info.shape)} into a tensor of shape {list(out.shape)}",
                tensor=name,
            )
        return info

    def metadata(self) -> dict[str, str]:
        """Free-form string metadata stored with the weights (empty when the format has none)."""
        return {}

    def _missing(self, name: str) -> LayerNotFoundError:
        import difflib

        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else f"; it has {len(self.infos())} tensors"
        )
        return LayerNotFoundError(self.path, f"no tensor named {name!r}{hint}", tensor=name)

    def __contains__(self, name: object) -> bool:
        return name in self.infos()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def __enter__(self) -> WeightSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def convert_into(out: torch.Tensor, value: torch.Tensor, path: Path, name: str) -> torch.Tensor:
    """``out.copy_(value)``, or one line when torch has no such conversion (e.g. from float4).

    Raises:
        UnsupportedWeightsError: Torch cannot convert ``value``'s dtype to ``out``'s.
    """
    try:
        return out.copy_(value)
    except (RuntimeError, TypeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise UnsupportedWeightsError(
            path, f"torch cannot convert {value.dtype} to {out.dtype} ({first})", tensor=name
        ) from None
