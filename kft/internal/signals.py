"""Keeping Ctrl-C and SIGTERM out of the middle of writes that belong together.

A run's checkpoint and its `state.json` are two files; an interrupt that
lands between them would leave a checkpoint one epoch ahead of the state.
Inside `deferred_interrupts()` SIGINT and SIGTERM are only recorded; once
the block ends, the handlers there were before take them.

(Blocking the signals with `pthread_sigmask` would not do: it masks the
main thread only, and the kernel hands a process-directed signal to any of
TensorFlow's threads instead, whose C handler still interrupts Python.)
"""

import contextlib
import signal
import threading

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupts():
    """Delays SIGINT and SIGTERM until the block has finished (in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = {}
    for number in _HELD:
        handler = signal.getsignal(number)
        if handler is None:
            continue  # installed outside Python: it cannot be put back
        previous[number] = signal.signal(number, lambda received, frame: pending.append(received))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(pending):
            signal.raise_signal(number)
