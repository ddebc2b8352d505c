import os
import signal

import pytest

from kft.internal.signals import deferred_interrupts


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_waits_for_the_end_of_the_block(number):
    def terminate(received, frame):
        raise KeyboardInterrupt(received)

    previous = signal.signal(signal.SIGTERM, terminate)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupts():
                os.kill(os.getpid(), number)
                os.kill(os.getpid(), number)  # twice: taken once
                done.append("checkpoint")
                done.append("state")
        assert done == ["checkpoint", "state"]
        assert signal.getsignal(signal.SIGTERM) is terminate
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_without_an_interrupt_nothing_happens():
    with deferred_interrupts():
        value = 1
    assert value == 1
