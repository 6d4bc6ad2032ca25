"""Per-step cost of streaming: fastgate's step API against PyTorch's per-step calls.

One timestep of one sequence (batch 1, float32, one thread), the state carried from call to
call, as an online service does for audio frames or tokens. Engines:

* ``fastgate-layer``: ``y, state = lstm.step(x, state)`` (:meth:`fastgate.LSTM.step`);
* ``fastgate-cell``: ``y, state = cell.step(x, state)`` (:class:`fastgate.LSTMCell`);
* ``fastgate-model``: ``y, state = model.step(x, state)``, a :class:`fastgate.Model` LSTM +
  Dense head (what ``fastgate.load`` gives for a Keras model);
* ``torch-lstm``: ``nn.LSTM`` called on ``T=1`` with the state (``inference_mode``);
* ``torch-lstmcell``: ``nn.LSTMCell``;
* ``torch-cell+linear``: ``nn.LSTMCell`` then an ``nn.Linear`` head, what ``fastgate-model``
  computes (the same identity head), the fair peer of a model's step.

Every engine's step output is first checked against PyTorch's (atol 1e-4). Run::

    pytest bench/test_streaming.py --benchmark-only       # pytest-benchmark tables
    python bench/test_streaming.py                        # a table of us/step and ratios

The issue's target: at least 5x less time per step than PyTorch for H <= 128, batch 1.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

import fastgate

ATOL = 1e-4
INPUT_SIZE = 64
HIDDEN_SIZES = (32, 64, 128)
ENGINES = ("fastgate-layer", "fastgate-cell", "fastgate-model", "torch-lstm",
           "torch-lstmcell", "torch-cell+linear")


def make_runner(engine: str, hidden: int, seed: int = 0):
    """``(step, output)``: ``step()`` advances one step; ``output()`` is its last output."""
    import torch

    from fastgate.ops import Dense, Recurrent

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    fastgate.set_num_threads(1)
    module = torch.nn.LSTM(INPUT_SIZE, hidden)
    cell_module = torch.nn.LSTMCell(INPUT_SIZE, hidden)
    with torch.no_grad():  # the same weights in both
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell_module, name).copy_(getattr(module, f"{name}_l0"))
    x = np.random.default_rng(seed).normal(size=(1, INPUT_SIZE)).astype(np.float32)
    box: dict = {}

    if engine.startswith("torch"):
        torch_x = torch.from_numpy(x)
        if engine == "torch-lstm":
            torch_x = torch_x.reshape(1, 1, INPUT_SIZE)
            with torch.inference_mode():
                box["state"] = (torch.zeros(1, 1, hidden), torch.zeros(1, 1, hidden))

            def step():
                with torch.inference_mode():
                    box["y"], box["state"] = module(torch_x, box["state"])
        else:
            head = torch.nn.Linear(hidden, hidden) if engine == "torch-cell+linear" else None
            with torch.inference_mode():
                box["state"] = (torch.zeros(1, hidden), torch.zeros(1, hidden))
                if head is not None:  # the identity, as fastgate-model's head
                    head.weight.copy_(torch.eye(hidden))
                    head.bias.zero_()

            def step():
                with torch.inference_mode():
                    box["state"] = cell_module(torch_x, box["state"])
                    box["y"] = box["state"][0] if head is None else head(box["state"][0])
        return step, lambda: box["y"].reshape(1, hidden).numpy()

    layer = fastgate.from_torch(module)
    if engine == "fastgate-layer":
        stepper = layer
    elif engine == "fastgate-cell":
        stepper = fastgate.from_torch(cell_module)
    else:
        head = Dense(np.eye(hidden, dtype=np.float32))  # identity head: output comparable
        stepper = fastgate.Model([("lstm", Recurrent(layer, return_sequences=True), (-1, 0)),
                                  ("head", head, (0, 0))], [(1, 0)])
    box["state"] = stepper.initial_state(1)

    def step():
        box["y"], box["state"] = stepper.step(x, box["state"])
    return step, lambda: box["y"]


def check(engine: str, hidden: int) -> None:
    """Three steps of ``engine`` match three steps of ``torch.nn.LSTM``."""
    reference_step, reference_output = make_runner("torch-lstm", hidden)
    step, output = make_runner(engine, hidden)
    for _ in range(3):
        reference_step()
        step()
    np.testing.assert_allclose(output(), reference_output(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("stream_engine", ENGINES)
@pytest.mark.parametrize("hidden", HIDDEN_SIZES, ids=lambda h: f"H{h}")
def test_step(benchmark, hidden, stream_engine):
    check(stream_engine, hidden)
    step, _ = make_runner(stream_engine, hidden)
    benchmark.group = f"stream step LSTM D={INPUT_SIZE} H={hidden} B=1"
    benchmark.extra_info.update(engine=stream_engine, H=hidden, D=INPUT_SIZE, B=1,
                                backend=fastgate.backend())
    benchmark.pedantic(step, rounds=20, iterations=500, warmup_rounds=2)


def time_per_step(step, steps: int = 2000, repeats: int = 7) -> float:
    """Best-of-``repeats`` mean seconds per call (the least disturbed run)."""
    for _ in range(200):
        step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main() -> None:
    print(f"fastgate {fastgate.__version__} ({fastgate.backend()} backend); per-step time, "
          f"LSTM D={INPUT_SIZE}, batch 1, float32, 1 thread; best of 7 x 2000 steps")
    # the target: >= 5x less time per step than PyTorch's per-step calls
    ratios = (("torch-lstm", "fastgate-layer"), ("torch-lstmcell", "fastgate-cell"),
              ("torch-cell+linear", "fastgate-model"))
    names = [f"{torch_engine[6:]}/{ours[9:]}" for torch_engine, ours in ratios]
    print(f"{'H':>4}  " + "  ".join(f"{engine:>17}" for engine in ENGINES) + "  "
          + "  ".join(f"{name:>18}" for name in names))
    for hidden in HIDDEN_SIZES:
        times = {}
        for engine in ENGINES:
            check(engine, hidden)
            times[engine] = time_per_step(make_runner(engine, hidden)[0]) * 1e6
        print(f"{hidden:>4}  " + "  ".join(f"{times[e]:>14.1f} us" for e in ENGINES) + "  "
              + "  ".join(f"{times[a] / times[b]:>17.1f}x" for a, b in ratios))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
