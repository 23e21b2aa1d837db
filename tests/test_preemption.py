import os
import signal

from mmpretrain.engine.preemption import PreemptionWatch


def test_signal_is_recorded_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionWatch() as watch:
        assert not watch.requested()
        os.kill(os.getpid(), signal.SIGTERM)  # would kill the test process without the watch
        os.kill(os.getpid(), signal.SIGUSR1)
        assert watch.requested() and watch.signal_name == "SIGTERM"  # the first signal wins
    assert signal.getsignal(signal.SIGTERM) is before
