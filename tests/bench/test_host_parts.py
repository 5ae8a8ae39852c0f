"""host_ms_per_part: parts are timed across threads and the wrapped functions are restored."""

import threading
import time

import torch

from tessera.bench.host_parts import host_ms_per_part
from tessera.kernels.triton import streams
from tessera.kernels.triton.launcher import Launcher


def test_parts_timed_in_another_thread_and_restored():
    original, launch = streams.fork, Launcher.__dict__["_launch"]
    slept = 0.002

    def slow_fork_in_thread():
        def body():
            time.sleep(slept)
            streams.fork(torch.device("cpu"))
        worker = threading.Thread(target=body)
        worker.start()
        worker.join()

    parts = host_ms_per_part(slow_fork_in_thread, calls=3)
    assert streams.fork is original and Launcher.__dict__["_launch"] is launch
    assert parts["call"] >= 1e3 * slept
    assert 0 < parts["streams.fork"] < parts["call"]
    assert parts["_run_one"] == 0


def test_given_targets_only():
    parts = host_ms_per_part(lambda: streams.join(None), calls=2, split_launches=False,
                             targets=[(streams, "join", "join")])
    assert set(parts) == {"join", "call"}
    assert 0 < parts["join"] <= parts["call"]
