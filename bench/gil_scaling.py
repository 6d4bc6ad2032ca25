"""Does the forward pass release the GIL? Throughput of 2 Python threads vs 1 on one model.

BLAS is pinned to one thread (``fastgate.set_num_threads(1)``), so any speed-up comes from
Python threads running forward passes at the same time, which only happens if the compiled
kernels release the GIL for the whole pass. Each thread calls the same layer (or model)
object, with no lock, on a medium batch for ``--seconds``; the ratio printed is
``throughput(2 threads) / throughput(1 thread)``; the issue's target is >= 1.6 on 2 cores.
The best of ``--repeats`` runs is kept for each thread count (other load on the machine
only ever lowers a run's throughput).

    python bench/gil_scaling.py [--batch 32 --steps 100 --input 128 --hidden 256]

Also collected by pytest (``pytest bench/gil_scaling.py``): a smoke run that checks the
threads compute the right answer and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

import fastgate


def throughput(call, threads: int, seconds: float) -> float:
    """Calls per second of ``threads`` threads calling ``call()`` for ``seconds``."""
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()

    def worker(index: int) -> None:
        barrier.wait()
        while not stop.is_set():
            call()
            counts[index] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in workers:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def measure(call, seconds: float, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` throughput with 1 and with 2 threads, alternating."""
    call()  # warm up
    one, two = 0.0, 0.0
    for _ in range(repeats):
        one = max(one, throughput(call, 1, seconds))
        two = max(two, throughput(call, 2, seconds))
    return one, two


def longest_stall(call) -> tuple[float, float]:
    """``(seconds of call(), longest pause of a pure-Python loop in this thread meanwhile)``.

    A call that held the GIL throughout would stall the loop for its whole duration; one that
    releases it leaves only scheduling pauses (a few ms). Independent of other load.
    """
    done = threading.Event()
    took = []

    def background() -> None:
        start = time.perf_counter()
        call()
        took.append(time.perf_counter() - start)
        done.set()

    thread = threading.Thread(target=background)
    last = time.perf_counter()
    longest = 0.0
    thread.start()
    while not done.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    thread.join()
    return took[0], longest


def make_cases(batch: int, steps: int, input_size: int, hidden: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, steps, input_size)).astype(np.float32)
    lstm = fastgate.LSTM.random(input_size, hidden, batch_first=True)
    gru = fastgate.GRU.random(input_size, hidden, batch_first=True)
    from fastgate.ops import Dense, Recurrent
    model = fastgate.Model([("lstm", Recurrent(lstm), (-1, 0)),
                            ("head", Dense(rng.normal(size=(hidden, 10))), (0, 0))], [(1, 0)])
    return {"LSTM layer": lambda: lstm(x), "GRU layer": lambda: gru(x),
            "Model (LSTM + Dense)": lambda: model.predict(x)}


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--input", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    fastgate.set_num_threads(1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"fastgate {fastgate.__version__} ({fastgate.backend()} backend), BLAS threads "
          f"{fastgate.get_num_threads()}, {cores} cores, load {os.getloadavg()[0]:.2f}; "
          f"B={args.batch} T={args.steps} D={args.input} H={args.hidden} float32")
    long_x = np.zeros((args.batch, 10 * args.steps, args.input), np.float32)
    layer = fastgate.LSTM.random(args.input, args.hidden, batch_first=True)
    took, stall = longest_stall(lambda: layer(long_x))
    print(f"GIL: during one {took * 1e3:.0f} ms LSTM call in another thread, this thread's "
          f"longest pause was {stall * 1e3:.1f} ms")
    ratios = {}
    for name, call in make_cases(args.batch, args.steps, args.input, args.hidden).items():
        one, two = measure(call, args.seconds, args.repeats)
        ratios[name] = two / one
        print(f"{name:>22}: 1 thread {one:8.1f} calls/s, 2 threads {two:8.1f} calls/s, "
              f"ratio {two / one:.2f}")
    return ratios


def test_gil_scaling_smoke():
    """Two threads on one layer compute the right answer; prints the ratio (short run)."""
    fastgate.set_num_threads(1)
    layer = fastgate.LSTM.random(64, 128, batch_first=True)
    x = np.random.default_rng(0).normal(size=(16, 50, 64)).astype(np.float32)
    expected = layer(x)[0]
    results = []
    throughput(lambda: results.append(layer(x)[0]), 2, 0.3)
    assert results and all(np.array_equal(r, expected) for r in results)
    main(["--batch", "16", "--steps", "50", "--input", "64", "--hidden", "128",
          "--seconds", "0.5", "--repeats", "1"])


if __name__ == "__main__":
    main()
