"""Serving fastgate models under load: micro-batching and batched streaming sessions.

* :class:`Batcher` coalesces concurrent single-sequence predictions into batched forward
  passes (thread- and asyncio-safe; embeds in any web framework).
* :class:`Sessions` keeps streaming states server-side and steps the sessions whose chunks
  arrive together as one batched :meth:`fastgate.Model.step`.
* ``fastgate serve MODEL`` (:mod:`fastgate.serving.server`, needs ``fastgate[serve]``) puts
  both behind an HTTP API in the TF Serving REST convention.

``import fastgate`` does not import this package; this package imports no web framework
(only :mod:`fastgate.serving.server` does).
"""

from __future__ import annotations

from ._coalesce import ServingClosedError
from .batcher import Batcher
from .sessions import SessionLimitError, Sessions, UnknownSessionError

__all__ = ["Batcher", "Sessions", "ServingClosedError", "UnknownSessionError",
           "SessionLimitError"]
