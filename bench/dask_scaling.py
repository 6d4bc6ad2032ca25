"""fastgate.dask: throughput of 2 Dask workers vs 1, and overhead vs in-process predict.

The model is a fastgate Model, LSTM(D -> H, batch-first) then Dense(H -> 1), scored on N
sequences of T steps (default N=4000, T=50, D=64, H=256, float32): the issue's
"LSTM H=256 over 4000 x 50 steps". Three ways, interleaved round by round so that other
load on the machine hits all three alike:

* ``in-process``: ``model.predict(x)`` here, with one kernel thread (``set_num_threads(1)``);
* ``in-process, batches``: the same, called on each batch of ``--batch-rows`` sequences in
  turn: the tasks' work without Dask (a batch of a few hundred runs faster than one of
  4000: it stays in cache);
* ``1 worker``: ``fastgate.dask.predict`` on ``LocalCluster(n_workers=1,
  threads_per_worker=1)``;
* ``2 workers``: the same on ``LocalCluster(n_workers=2, threads_per_worker=1)``.

X is chunked along N (``--chunk`` sequences per task, 1000: few tasks, little scheduling;
each task runs its block in passes of ``--batch-rows``) and made on the workers before timing
(``da.random``, persisted: as data read by the workers from zarr or parquet would be);
``--ship`` instead sends X from this process in every run (``da.from_array``). The model is
shipped to the workers before timing too (once per worker: later runs reuse it). Reported:
the median and the best of ``--repeats`` rounds for each way, after a warm-up round (on a
busy machine the best is the run least disturbed), ``2 workers / 1 worker`` throughput
(target >= 1.7 on 2 idle cores) and ``1 worker / in-process`` time (overhead, target <= 1.15;
also against the batches, which isolates Dask's own cost), then the targets, met or not. On a shared machine wall times say little about
scaling, so the CPU seconds of each run are reported too (this process, which also runs the
schedulers, plus the workers): if 2 workers spend no more CPU than 1 on the same work, they
finish it in half the time on 2 idle cores.

    python bench/dask_scaling.py [--sequences 4000 --steps 50 --input 64 --hidden 256]

Also collected by pytest (``pytest bench/dask_scaling.py``): a short smoke run that checks
the cluster's answer and prints the ratios.
"""

from __future__ import annotations

import argparse
import os
import time

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

import fastgate
import fastgate.dask
from fastgate.ops import Dense, Recurrent


def make_model(input_size: int, hidden: int) -> fastgate.Model:
    """LSTM(input_size -> hidden) on the whole sequence, then Dense(hidden -> 1)."""
    rng = np.random.default_rng(0)
    lstm = fastgate.LSTM.random(input_size, hidden, batch_first=True)
    return fastgate.Model([("lstm", Recurrent(lstm), (-1, 0)),
                           ("head", Dense(rng.normal(size=(hidden, 1)) / hidden ** 0.5),
                            (0, 0))], [(1, 0)], name="lstm_scorer")


def measured(run, client: Client | None) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of ``run()``: the CPU time of this process (which
    also runs the LocalClusters' schedulers) plus that of ``client``'s worker processes."""
    def cpu() -> float:
        workers = sum(client.run(time.process_time).values()) if client else 0.0
        return time.process_time() + workers

    cpu_before, start = cpu(), time.perf_counter()
    run()
    wall = time.perf_counter() - start
    return wall, cpu() - cpu_before


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=1000, help="sequences per task (1000)")
    parser.add_argument("--batch-rows", type=int, default=256,
                        help="sequences per forward pass within a task (256)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", action="store_true",
                        help="keep the workers' statistical profiler on (Dask's default; off "
                             "by default here, as the README advises for a scoring cluster: a "
                             "thread waking every 10 ms, a few percent of CPU)")
    parser.add_argument("--ship", action="store_true",
                        help="send X from this process in every run instead of persisting it")
    return parser.parse_args(argv)


def cluster_runs(clients: dict[int, Client], model, lazy_x, x: np.ndarray, chunks,
                 ship: bool, batch_rows: int) -> dict[int, object]:
    """Per worker count, a function scoring X on that cluster (checked and warmed up)."""
    expected = model.predict(x)
    runs = {}
    for workers, client in clients.items():
        if ship:
            X = da.from_array(x, chunks=chunks)
        else:   # made on the workers, as if read there from zarr or parquet
            X = client.persist(lazy_x)
            client.compute(X.sum()).result(timeout=600)   # X is on the workers
        Y = fastgate.dask.predict(model, X, client, batch_rows=batch_rows)
        got = client.compute(Y).result(timeout=600)       # warm-up: ships the model
        assert np.allclose(got, expected, rtol=0, atol=1e-6), "cluster result differs"
        runs[workers] = lambda Y=Y, client=client: client.compute(Y).result(timeout=600)
    return runs


def report(times: dict[str, list[tuple[float, float]]], sequences: int) -> dict[str, float]:
    """Print each way's wall and CPU times and the ratios; return the median ratios."""
    wall = {way: float(np.median([w for w, _ in runs])) for way, runs in times.items()}
    best = {way: float(np.min([w for w, _ in runs])) for way, runs in times.items()}
    cpu = {way: float(np.median([c for _, c in runs])) for way, runs in times.items()}
    for way, runs in times.items():
        print(f"{way:>18}: wall median {wall[way]:6.2f} s, best {best[way]:6.2f} s "
              f"({sequences / wall[way]:5.0f} sequences/s); CPU median {cpu[way]:6.2f} s "
              f"(walls: {', '.join(f'{w:.2f}' for w, _ in runs)} s)")
    ratios = {"scaling": wall["1 worker"] / wall["2 workers"],
              "overhead": wall["1 worker"] / wall["in-process"],
              "overhead_batches": wall["1 worker"] / wall["in-process, batches"],
              "cpu_2_vs_1": cpu["2 workers"] / cpu["1 worker"],
              "cpu_overhead_batches": cpu["1 worker"] / cpu["in-process, batches"]}
    print(f"2 workers / 1 worker throughput: {ratios['scaling']:.2f} at the median, "
          f"{best['1 worker'] / best['2 workers']:.2f} best of runs (target >= 1.7)")
    print(f"1 worker / in-process time: {ratios['overhead']:.2f} at the median, "
          f"{best['1 worker'] / best['in-process']:.2f} best of runs (target <= 1.15)")
    print(f"1 worker / in-process batches time: {ratios['overhead_batches']:.2f} at the "
          f"median, {best['1 worker'] / best['in-process, batches']:.2f} best of runs (Dask's "
          f"own overhead)")
    print(f"CPU seconds, 2 workers / 1 worker: {ratios['cpu_2_vs_1']:.2f}; 1 worker / "
          f"in-process batches: {ratios['cpu_overhead_batches']:.2f} (what the work costs, "
          f"whatever else runs: on idle cores, 2 workers give 2 / the first ratio)")
    print(f"TARGETS (medians of {len(times['1 worker'])} interleaved rounds):\n"
          f"  2 workers / 1 worker throughput {ratios['scaling']:.2f} >= 1.7: "
          f"{'MET' if ratios['scaling'] >= 1.7 else 'NOT MET'}\n"
          f"  1 worker / in-process time      {ratios['overhead']:.2f} <= 1.15: "
          f"{'MET' if ratios['overhead'] <= 1.15 else 'NOT MET'}")
    return ratios


def main(argv=None) -> dict[str, float]:
    args = parse(argv)
    fastgate.set_num_threads(1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"fastgate {fastgate.__version__} ({fastgate.backend()} backend), {cores} cores, "
          f"load {os.getloadavg()[0]:.2f}; N={args.sequences} T={args.steps} D={args.input} "
          f"H={args.hidden} float32, {args.chunk} sequences per task, X "
          f"{'sent from the client each run' if args.ship else 'persisted on the workers'}"
          f", worker profiler {'on (--profile)' if args.profile else 'off'}")
    model = make_model(args.input, args.hidden)
    shape = (args.sequences, args.steps, args.input)
    chunks = (args.chunk, args.steps, args.input)
    lazy_x = da.random.default_rng(1).standard_normal(shape, chunks=chunks, dtype=np.float32)
    x = lazy_x.compute(scheduler="sync")
    batches = [x[start:start + args.batch_rows]
               for start in range(0, len(x), args.batch_rows)]
    with dask.config.set({"distributed.worker.profile.enabled": args.profile}):
        clusters = {workers: LocalCluster(n_workers=workers, threads_per_worker=1,
                                          processes=True, dashboard_address=":0")
                    for workers in (1, 2)}
    clients = {workers: Client(cluster, set_as_default=False)
               for workers, cluster in clusters.items()}
    try:
        profiling = clients[2].run(lambda: dask.config.get("distributed.worker.profile.enabled"))
        assert set(profiling.values()) == {args.profile}, profiling
        runs = cluster_runs(clients, model, lazy_x, x, chunks, args.ship, args.batch_rows)
        ways = {"in-process": (lambda: model.predict(x), None),
                "in-process, batches": (lambda: [model.predict(b) for b in batches], None),
                "1 worker": (runs[1], clients[1]), "2 workers": (runs[2], clients[2])}
        times: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
        for round_ in range(args.repeats + 1):    # interleaved: load hits every way alike
            for way, (run, client) in ways.items():
                timing = measured(run, client)
                if round_:                        # round 0 warms up (plans, caches)
                    times[way].append(timing)
    finally:
        for workers in (1, 2):
            clients[workers].close()
            clusters[workers].close()
    ratios = report(times, args.sequences)
    print(f"load after the run: {os.getloadavg()[0]:.2f}")
    return ratios


def test_dask_scaling_smoke():
    """A short run: the cluster's answer is checked inside; prints the ratios."""
    ratios = main(["--sequences", "200", "--steps", "10", "--hidden", "64", "--chunk", "50",
                   "--batch-rows", "20", "--repeats", "2"])
    assert len(ratios) == 5 and all(r > 0 for r in ratios.values())


if __name__ == "__main__":
    main()
