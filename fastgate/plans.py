"""How the compiled kernels run a call: plans, the planner's modes, its cache, and why.

A *plan* is data, the sequence of the kernel's passes with their parameters (FFTW's idea):

- ``first_input`` / ``later_input``: where the first layer's (and the later layers') ``x W``
  comes from: ``"in_step"`` (each step's register tile reads ``x_t`` next to ``h``: no
  projection buffer), ``"packed"`` (the packed kernel's input pass computes ``x W`` of every
  step first) or ``"blas"`` (one BLAS GEMM does, through SciPy, loaded only then);
- ``split`` and ``threads``: one thread (``"none"``), threads over disjoint batch rows
  (``"batch"``, never synchronizing), or over the hidden units of every row (``"hidden"``,
  meeting at a barrier after each step);
- ``rows``: how a thread walks its batch rows: ``"all"`` (each step computes every row,
  then the next step) or ``"blocked"`` (rows in blocks whose per-row data (``x_t``, ``h``,
  ``c``) fit in L2, each block through all steps before the next: a large batch's state then
  stays in L2 instead of streaming from L3 at every step, while the weights stream once per
  block and step; rows are independent, so this is exact).

Every plan computes the same function (the compiled-vs-oracle tests run every candidate).
Two modes choose one, per call:

- ``"estimate"`` (the default): a cost model of constants measured on the development
  machine; deterministic, and free;
- ``"measure"``: the first call of a *shape class* (ISA, thread setting, the layer's shape,
  batch and steps rounded down to powers of two, mask, zero state) times the candidates on
  its own input, within max(50 ms, 5 calls of the estimate's plan), and keeps the fastest;
  later calls of the class read it from a cache. Calls under ~2e6 multiply-adds always take
  the estimate.

``FASTGATE_PLAN=estimate|measure`` sets the mode, ``FASTGATE_PLAN_CACHE=path`` keeps the
measured plans in a JSON file ("wisdom": loaded when the first layer is built, written after
each measurement); :func:`save` and :func:`load` do it by hand. :func:`explain` says which plan
a call runs and why.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import compiled_module
from .errors import BackendError

__all__ = ["Plan", "Explanation", "INPUT_MODES", "SPLITS", "ROWS", "set_mode", "get_mode",
           "explain", "candidates", "save", "load", "clear"]

#: The kernel's input modes (constants.h FG_INPUT_*).
INPUT_MODES = {"in_step": 0, "packed": 1, "blas": 2}
#: The kernel's thread splits (constants.h FG_SPLIT_*).
SPLITS = {"none": 0, "batch": 1, "hidden": 2}
#: The kernel's row orders (constants.h FG_ROWS_*).
ROWS = {"all": 0, "blocked": 1}
_INPUT_NAMES = {code: name for name, code in INPUT_MODES.items()}
_SPLIT_NAMES = {code: name for name, code in SPLITS.items()}
_ROW_NAMES = {code: name for name, code in ROWS.items()}


@dataclass(frozen=True)
class Plan:
    """One way to run a call: the input pass of the first and later layers, the thread
    split and the row order (see the module docstring)."""

    first_input: str
    later_input: str
    split: str
    threads: int
    rows: str = "all"

    @classmethod
    def from_codes(cls, codes: tuple) -> "Plan":
        """The plan of the kernel's code tuple ``(first, later, split, threads, rows)`` (a
        4-tuple, as plan files written before the row order existed hold: all rows)."""
        first, later, split, threads, *rows = codes
        if len(rows) > 1:
            raise ValueError(f"a plan has 4 or 5 codes, not {len(codes)}")
        return cls(_INPUT_NAMES[first], _INPUT_NAMES[later], _SPLIT_NAMES[split], int(threads),
                   _ROW_NAMES[rows[0] if rows else 0])

    def codes(self) -> tuple:
        """The kernel's code tuple of this plan."""
        return (INPUT_MODES[self.first_input], INPUT_MODES[self.later_input],
                SPLITS[self.split], self.threads, ROWS[self.rows])

    def __str__(self) -> str:
        inputs = (self.first_input if self.first_input == self.later_input
                  else f"{self.first_input}, then {self.later_input}")
        threads = "1 thread" if self.split == "none" else f"{self.threads} threads " \
                                                            f"split over the {self.split}"
        rows = "; rows in L2-sized blocks" if self.rows == "blocked" else ""
        return f"x W {inputs}; {threads}{rows}"


@dataclass(frozen=True)
class Explanation:
    """Which plan a call runs (``plan``), chosen how (``source``: ``"estimate"``,
    ``"measured"`` or ``"cache"``), why (``reason``), and the measured candidates
    (``timings``: ``(seconds, Plan)``, fastest first) where there are any."""

    plan: Plan
    source: str
    reason: str
    shape_class: tuple
    timings: tuple = ()

    def __str__(self) -> str:
        lines = [f"plan: {self.plan} ({self.source})", f"why: {self.reason}"]
        lines += [f"  {seconds * 1e3:9.3f} ms  {plan}" for seconds, plan in self.timings]
        return "\n".join(lines)


_configured = False


def _kernels() -> Any:
    kernels = compiled_module()
    if kernels is None:
        raise BackendError("plans describe the compiled kernels, which are not built")
    return kernels


def configure_from_environment() -> None:
    """Apply ``FASTGATE_PLAN`` and ``FASTGATE_PLAN_CACHE`` (once; layers call this when
    they build their kernel plan)."""
    global _configured
    if _configured:
        return
    _configured = True
    mode = os.environ.get("FASTGATE_PLAN", "").strip().lower()
    path = os.environ.get("FASTGATE_PLAN_CACHE", "").strip()
    if path and os.path.exists(path):
        load(path)
    if mode or path:
        set_mode(mode or get_mode())


def set_mode(mode: str) -> None:
    """Choose plans by ``"estimate"`` (the cost model) or ``"measure"`` (time the candidates
    once per shape class). With ``FASTGATE_PLAN_CACHE`` set, each measurement is saved."""
    path = os.environ.get("FASTGATE_PLAN_CACHE", "").strip()
    _kernels().set_planning(mode, (lambda key: save(path)) if path else None)


def get_mode() -> str:
    """The planning mode, ``"estimate"`` or ``"measure"``."""
    return _kernels().planning()


def _call_shape(layer: Any, x: Any, lengths: Any, state: Any) -> tuple:
    # (steps, batch, masked, zero_state) of layer(x, state=state, lengths=lengths)
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"explain: x must be (T, B, D) or (B, T, D), got shape {x.shape}")
    steps, batch = (x.shape[1], x.shape[0]) if layer.batch_first else x.shape[:2]
    return steps, batch, lengths is not None, state is None


def _layer_plan(layer: Any) -> Any:
    plan = getattr(layer, "_plan", None)
    if plan is None:
        raise BackendError(f"{type(layer).__name__}: no compiled kernel plan (the compiled "
                           f"extension is not built)")
    return plan


def candidates(layer: Any, x: Any, lengths: Any = None) -> list[Plan]:
    """Every plan the kernels can run ``layer(x, lengths=lengths)`` with, the estimate's
    first (hidden splits only where threads were asked for, as :mod:`fastgate.threads`
    says)."""
    steps, batch, masked, _ = _call_shape(layer, x, lengths, None)
    return [Plan.from_codes(codes)
            for codes in _layer_plan(layer).candidates(steps, batch, masked)]


def explain(layer: Any, x: Any, lengths: Any = None, state: Any = None) -> Explanation:
    """Which plan ``layer(x, state=state, lengths=lengths)`` runs, and why.

    In ``"measure"`` mode a shape class not measured yet shows the estimate, which its first
    call replaces by the fastest candidate.
    """
    kernels = _kernels()
    plan = _layer_plan(layer)
    steps, batch, masked, zero_state = _call_shape(layer, x, lengths, state)
    key = plan.shape_class(steps, batch, masked, zero_state)
    cached = kernels.plan_cache.get(key)
    if kernels.planning() == "measure" and cached is not None:
        timings = tuple(sorted((t, Plan.from_codes(p)) for t, p in cached["timings"]))
        return Explanation(Plan.from_codes(cached["plan"]),
                           "cache" if not timings else "measured",
                           f"the fastest of {len(timings)} candidates timed on the first call "
                           f"of this shape class", key, timings)
    chosen = Plan.from_codes(plan.estimate(steps, batch, masked, zero_state))
    return Explanation(chosen, "estimate",
                       _estimate_reason(plan, chosen, steps, batch, masked, zero_state), key)


def _estimate_reason(plan: Any, chosen: Plan, steps: int, batch: int, masked: bool,
                     zero_state: bool) -> str:
    # the cost model's rules that picked `chosen` (recurrent.pyx _estimate), in words
    kernels = _kernels()
    limits = kernels.estimate_thresholds()
    isa = kernels.isa()
    if chosen.first_input == "blas":
        inputs = f"on the {isa} ISA BLAS computes x W of all steps faster than the packed kernel"
    elif batch >= limits["fused_input_min_batch"]:
        inputs = (f"batch {batch} >= {limits['fused_input_min_batch']}: x_t W in each step's "
                  f"tile (one pass, no projection buffer)")
    elif chosen.first_input == "in_step":
        inputs = (f"batch {batch} < {limits['fused_input_min_batch']} (steps are matrix-vector "
                  f"products: x W of all steps first), but the first layer's input is narrow "
                  f"(<= {limits['fused_input_max_width']}) or this is one step from zeros")
    else:
        inputs = (f"batch {batch} < {limits['fused_input_min_batch']}: x W of all steps first "
                  f"by the packed kernel (a step is a matrix-vector product)")
    if chosen.split == "batch":
        threads = f"{chosen.threads} threads over disjoint batch rows"
    elif chosen.split == "hidden":
        threads = (f"threads asked for and the batch too small to split: {chosen.threads} "
                   f"threads share the hidden units, meeting after each step")
    else:
        threads = ("one thread (a call under "
                   f"{limits['threading_min_work']:.0e} multiply-adds, a batch of fewer "
                   f"than two register tiles, or one thread configured)")
    if chosen.rows == "blocked":
        rows = (f"; each thread's rows make at least {limits['row_blocks_min']:g} blocks of "
                f"{limits['row_block_bytes'] // 1024} KB of state: block by block through all "
                f"steps")
    else:
        rows = ""
    mode = kernels.planning()
    note = "" if mode == "estimate" else " (measure mode: not measured yet, or a tiny call)"
    return f"cost model{note}: {inputs}; {threads}{rows}"


def save(path: str | os.PathLike) -> None:
    """Write the measured plans to ``path`` (JSON), to :func:`load` in another process."""
    entries = [{"shape_class": list(key), "plan": list(value["plan"]),
                "timings": [[t, list(p)] for t, p in value["timings"]]}
               for key, value in _kernels().plan_cache.items()]
    text = json.dumps({"fastgate_plans": 1, "entries": entries}, indent=1)
    temporary = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def load(path: str | os.PathLike) -> int:
    """Add the plans :func:`save` wrote to ``path`` to this process's cache; returns how
    many. Entries that are not well-formed plans are refused (``ValueError``)."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or data.get("fastgate_plans") != 1:
        raise ValueError(f"{os.fspath(path)}: not a fastgate plan file")
    cache = _kernels().plan_cache
    loaded = {}
    for entry in data.get("entries", []):
        try:
            key = tuple(entry["shape_class"])
            plan = Plan.from_codes(tuple(entry["plan"])).codes()
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ValueError(f"{os.fspath(path)}: a malformed entry ({error})") from None
        loaded[key] = {"plan": plan, "timings": []}
    cache.update(loaded)
    return len(loaded)


def clear() -> None:
    """Forget every measured plan of this process."""
    _kernels().plan_cache.clear()
