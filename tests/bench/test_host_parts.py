"""host_ms_per_part: parts are timed across threads and the wrapped functions are restored."""

import threading
import time

import torch

from tessera.bench.host_parts import host_ms_per_part
from tessera.kernels.triton import streams


def test_parts_timed_in_another_thread_and_restored():
    original = streams.fork
    slept = 0.002

    def slow_fork_in_thread():
        def body():
            time.sleep(slept)
            streams.fork(torch.device("cpu"))
        worker = threading.Thread(target=body)
        worker.start()
        worker.join()

    parts = host_ms_per_part(slow_fork_in_thread, calls=3)
    assert streams.fork is original
    assert parts["call"] >= 1e3 * slept
    assert 0 < parts["streams.fork"] < parts["call"]
    assert "_run_one" not in parts
