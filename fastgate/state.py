"""The recurrent state, normalised once: :class:`StateLayout`.

Every recurrent object keeps its state as plain NumPy arrays, in one of three public forms:

* a layer (:class:`fastgate.LSTM`...): ``h`` of shape ``(num_layers * num_directions, B,
  output_size)`` (LSTM: the pair ``(h, c)``, ``c`` of width ``hidden_size``);
* a cell, or a Keras op of one layer (``flat``): ``(B, width)`` arrays, one layer, one
  direction;
* either of them for one unbatched sequence: the batch axis dropped.

The kernels (and the oracle behind the same interface) read and update the *kernel form*:
fresh C-contiguous arrays ``(entries, B, width)`` of the layer's dtype, where ``entries`` is
``num_layers * num_directions``. A :class:`StateLayout` knows one object's state (which
arrays, of which widths and dtype, under which names) and converts between the forms,
checking the user's arrays once, with errors that name the object, the tensor, and the
expected against the given shape.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np

from ._validation import as_array
from .errors import ConfigError, ShapeError

__all__ = ["StateLayout", "State", "check_batch_size"]

#: A public state: ``h``, or for an LSTM the pair ``(h, c)``.
State = Union[np.ndarray, tuple]


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as an int, which must be a non-negative integer (else ConfigError)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 0:
        raise ConfigError(f"batch_size must be a non-negative integer, got {batch_size!r}")
    return int(batch_size)


class StateLayout:
    """The state of one recurrent object: its arrays, their widths and dtype, their names.

    Parameters
    ----------
    owner : str
        What errors name (``"LSTM"``, ``"GRUCell"``...).
    cell : str
        ``"lstm"`` (the state is ``(h, c)``), ``"gru"`` or ``"rnn"`` (``h``).
    entries : int
        ``num_layers * num_directions``: the kernel form's first axis.
    width, hidden : int
        The widths of ``h`` (the output size) and of ``c`` (the hidden size).
    dtype : numpy dtype
        The layer's dtype; states are converted to it.
    flat : bool
        The public form has no entries axis (cells and Keras ops: one layer, one direction).
    labels : (str, str)
        The names of ``h`` and ``c`` in errors (``("h0", "c0")`` for layers).
    """

    __slots__ = ("owner", "cell", "entries", "width", "hidden", "dtype", "flat", "labels")

    def __init__(self, owner: str, cell: str, entries: int, width: int, hidden: int,
                 dtype: np.dtype, *, flat: bool = False,
                 labels: tuple[str, str] = ("h0", "c0")) -> None:
        if flat and entries != 1:
            raise ConfigError(f"{owner}: a flat state has one layer and one direction, got "
                              f"{entries} entries")
        self.owner = owner
        self.cell = cell
        self.entries = int(entries)
        self.width = int(width)
        self.hidden = int(hidden)
        self.dtype = np.dtype(dtype)
        self.flat = bool(flat)
        self.labels = labels

    @property
    def is_pair(self) -> bool:
        """Whether the state is the pair ``(h, c)`` (LSTM) rather than ``h`` alone."""
        return self.cell == "lstm"

    def kernel_shapes(self, batch: int) -> tuple[tuple[int, int, int], ...]:
        """The kernel form's shapes: ``((entries, batch, width),)``, LSTM ``+ (entries,
        batch, hidden)``."""
        shapes = ((self.entries, batch, self.width),)
        if self.is_pair:
            shapes += ((self.entries, batch, self.hidden),)
        return shapes

    def zeros(self, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The zero state in kernel form: ``(h, c)``, ``c`` ``None`` but for LSTM."""
        arrays = [np.zeros(shape, self.dtype) for shape in self.kernel_shapes(batch)]
        return arrays[0], (arrays[1] if self.is_pair else None)

    def to_kernel(self, state: State | None, batch: int, *, unbatched: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """``state`` (public form; zeros if ``None``) as fresh kernel-form arrays ``(h,
        c)``, ``c`` ``None`` but for LSTM: the kernels update them in place, so the caller's
        arrays are never modified.

        Raises :class:`~fastgate.errors.ShapeError` (not a pair, wrong shape) or
        :class:`~fastgate.errors.DTypeError` (not real numbers), naming the tensor.
        """
        if state is None:
            return self.zeros(batch)
        if self.is_pair:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ShapeError(f"{self.owner} state: expected a pair ({self.labels[0]}, "
                                 f"{self.labels[1]}), got {type(state).__name__}")
            parts = list(state)
        else:
            parts = [state]
        arrays = [self._kernel_array(part, label, shape, unbatched) for part, label, shape
                  in zip(parts, self.labels, self.kernel_shapes(batch))]
        return arrays[0], (arrays[1] if self.is_pair else None)

    def _kernel_array(self, value: Any, label: str, shape: tuple[int, int, int],
                      unbatched: bool) -> np.ndarray:
        array = as_array(value, self.dtype, f"{self.owner} {label}")
        expected = shape[1:] if self.flat else shape   # the public form of ``shape``
        if unbatched:
            expected = expected[:-2] + expected[-1:]
        if array.shape != expected:
            raise ShapeError(f"{self.owner} {label}: expected shape {expected}, got "
                             f"{array.shape}")
        return np.array(array.reshape(shape), dtype=self.dtype, order="C")

    def to_public(self, h: np.ndarray, c: np.ndarray | None, *, unbatched: bool = False
                  ) -> State:
        """Kernel-form ``(h, c)`` as the public state (``h``, LSTM ``(h, c)``)."""
        if self.flat:
            h, c = h[0], (None if c is None else c[0])
        if unbatched:
            h, c = h[..., 0, :], (None if c is None else c[..., 0, :])
        return (h, c) if self.is_pair else h

    def initial(self, batch_size: Any) -> State:
        """The zero public state of ``batch_size`` sequences (checked: ConfigError)."""
        return self.to_public(*self.zeros(check_batch_size(batch_size)))

    def __repr__(self) -> str:
        parts = ("h", "c") if self.is_pair else ("h",)
        lead = "" if self.flat else f"{self.entries}, "
        shapes = ", ".join(f"{p}=({lead}B, {self.hidden if p == 'c' else self.width})"
                           for p in parts)
        return f"StateLayout({self.owner}: {shapes}, dtype={self.dtype.name})"
