"""The machine's ceilings for the recurrent kernels on one core (bench/ceiling.c).

Prints the FMA peak (AVX2, and AVX-512 where the CPU has it), the L2 read bandwidth and the
rate of fastgate's LSTM register tiles alone (the product of a step without the cell
equations, K = 384, weights streamed as in a step). A target ratio ``r`` against a peer
that reaches ``P`` GFLOP/s needs ``P / r`` GFLOP/s: compare it to these figures before
chasing it (bench/RESULTS.md, "Ceilings").

Usage::

    python bench/ceiling.py          # needs a C compiler (cc, or $CC)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ceiling.c")


def main() -> int:
    compiler = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as directory:
        binary = os.path.join(directory, "ceiling")
        subprocess.run([compiler, "-O2", SOURCE, "-o", binary], check=True)
        print(subprocess.run([binary], check=True, capture_output=True, text=True).stdout,
              end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
