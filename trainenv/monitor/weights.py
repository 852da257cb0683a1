"""The weight norm and the update norm of a live run, in a few flat-tensor operations.

Both adapters record ``weight_norm`` (the global L2 norm of the trained weights after an
update) and ``update_ratio`` (the L2 norm of the update's weight change over it), the channels
trainenv's trainers compute from ``parameters_to_vector`` copies. :class:`WeightChange`
computes the same two norms with no Python loop over the parameters, no allocation beyond two
0-d results, and no conversion to Python floats (the caller converts them with its other
scalars, once per update).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch


class WeightChange:
    """The global L2 norms of the weights and of their change since the previous measurement.

    It keeps one flat copy of the weights: ``n`` elements (``n`` the number of weights) in
    their promoted dtype on their device, padded with zeros to a ``rows x width`` grid with
    ``width = ceil(sqrt(n))``. Each :meth:`measure` subtracts the current weights from the copy
    in place (one foreach kernel: the copy's per-parameter views against the parameters),
    takes its norm (the change), writes the current weights into it (one ``torch.cat``: the
    next update's base) and takes its norm again (the weights): six tensor operations per
    update, whatever the number of parameters.

    A norm is taken row by row, then over the row norms: a float32 ``vector_norm`` of the flat
    copy in one go accumulates long sequential sums (about 1e-5 relative error on the tiny
    GPT-2's 120k weights, measured against float64); the two levels keep it near 1e-7, as the
    per-parameter norms did.

    Args:
        params: The trained parameters, on one device. Their storage must stay in place
            (optimizer steps and ``load_state_dict`` write into it; replacing a parameter's
            ``.data`` would leave the flat views reading the old storage). A non-contiguous
            parameter (a transposed view, say) has no flat view: it is flattened into a
            copy at each measurement, the one allocation per update it costs.

    Raises:
        ValueError: ``params`` is empty or spans several devices.
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        params = [p.detach() for p in params]
        if not params:
            raise ValueError("params: no trained parameters to measure")
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise ValueError(f"params: on {len(devices)} devices {sorted(map(str, devices))}; "
                             "the weight norms need them on one")  # fmt: skip
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in params))
        sizes = [p.numel() for p in params]
        size = sum(sizes)
        width = math.isqrt(max(size - 1, 0)) + 1  # ceil(sqrt(size))
        # The zero padding past ``size`` adds nothing to either norm and is never written.
        self._grid = torch.zeros(-(-size // width), width, dtype=dtype, device=params[0].device)
        self._before = self._grid.view(-1)[:size]
        self._params = params
        # Flat views share the parameters' storage; a non-contiguous one is copied when read.
        self._flat = [p.view(-1) if p.is_contiguous() else p for p in params]
        self._copied = [i for i, p in enumerate(params) if not p.is_contiguous()]
        # The copy seen parameter by parameter: the foreach subtraction's other operand.
        self._before_views = [v.view_as(p) for v, p in zip(self._before.split(sizes), params)]
        self.reset()

    def reset(self) -> None:
        """Take the current weights as the base of the next change (at the start, after a
        rollback or anything else that moves the weights outside an update)."""
        flat = self._flat
        if self._copied:
            flat = list(flat)
            for i in self._copied:
                flat[i] = self._params[i].reshape(-1)
        torch.cat(flat, out=self._before)

    def measure(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(||w - w_base||, ||w||)``, 0-d tensors, unconverted (no device sync): the L2 norm
        of the weights' change since the last call (or :meth:`reset`), then of the weights,
        each over all parameters together. The current weights become the base."""
        # Detached operands throughout: nothing is recorded for autograd, no no_grad() needed.
        torch._foreach_sub_(self._before_views, self._params)  # the base minus the weights
        change = self._norm()
        self.reset()
        return change, self._norm()

    def _norm(self) -> torch.Tensor:
        return torch.linalg.vector_norm(torch.linalg.vector_norm(self._grid, dim=1))
