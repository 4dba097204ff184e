"""The exporter's Redis pub/sub parser on one long message read in 1-byte pieces.

Prints, per message size, the median seconds over ``--rounds`` and the cost per MB; a
linear parser keeps the per-MB cost flat as the size grows (the quadratic one it replaced
re-copied its buffer on every read and never finished 50 MB).

    .venv/bin/python bench/pubsub_parser.py --sizes 1,5,50 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otel_celery_metrics.exporter._wire import PubSubParser


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def one_run(megabytes: int) -> float:
    payload = b"x" * (megabytes * 1024 * 1024)
    stream = b"*4\r\n" + bulk(b"pmessage") + bulk(b"p") + bulk(b"c") + bulk(payload)
    view = memoryview(stream)
    parser = PubSubParser()
    got = 0
    start = time.perf_counter()
    for i in range(len(stream)):
        got += len(parser.feed(view[i : i + 1]))
    elapsed = time.perf_counter() - start
    assert got == 1
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,5,50", help="message sizes in MB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = None
    for size in sizes:
        median = statistics.median(one_run(size) for _ in range(args.rounds))
        per_mb = median / size
        base = base or per_mb
        print(f"{size:>4} MB in 1-byte reads: median {median:7.2f} s, "
              f"{per_mb:5.2f} s/MB, ratio to {sizes[0]} MB per MB {per_mb / base:4.2f}")


if __name__ == "__main__":
    main()
