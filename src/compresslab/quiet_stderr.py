"""Leave known noise lines out of a process's stderr, at the file descriptor, for the whole process.

TensorFlow's C++ side logs through absl straight to file descriptor 2, out of Python's reach, and some of its
notices are ERROR-level lines that only TF_CPP_MIN_LOG_LEVEL=3 would hide, with every real error. `install`
points fd 2 at a pipe read by a small filter process (this file, run as a script) that copies everything to the
original stderr but the lines holding one of the given patterns.

A process rather than a thread: whatever the process wrote reaches the original stderr however it ends
(`os._exit`, which stage scripts use; an abort after a fatal TensorFlow check; a signal), and so does what its
children write (they inherit fd 2), for as long as any of them runs. The filter process ignores Ctrl-C and
SIGTERM (both blocked) and stops at end of file, once every writer is gone. At exit (return, exception,
`sys.exit`, `os._exit`) fd 2 is pointed back at the original stderr and the filter waited for (up to a second, in
case a child still holds the pipe), so nothing printed comes after the process has ended. Only a crash skips that
wait, and even then loses nothing.
"""

import functools
import os
import select
import sys

HOLD_PARTIAL_S = 0.1  # absl writes a whole line at once: a partial line left waiting this long is no log line
WAIT_AT_EXIT_S = 1.0

_state = None  # (owner pid, saved original stderr, filter pid, (st_dev, st_ino) of the pipe)


def filter_stream(source: int, target: int, patterns) -> None:
    """Copy `source` to `target` until end of file, line by line, leaving out each line that holds a pattern.

    A partial line is passed on once no more bytes come for HOLD_PARTIAL_S (a prompt, a progress bar).
    """
    pending = b""
    broken = False
    while True:
        if pending and not select.select([source], [], [], HOLD_PARTIAL_S)[0]:
            broken = _write(target, pending, broken)
            pending = b""
            continue
        data = os.read(source, 65536)
        if not data:
            break
        *lines, pending = (pending + data).split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not any(pattern in line for pattern in patterns))
        if kept:
            broken = _write(target, kept, broken)
    if pending and not any(pattern in pending for pattern in patterns):
        _write(target, pending, broken)


def _write(target: int, data: bytes, broken: bool) -> bool:
    """Write all of `data`; once the target is gone, keep draining the pipe so that no writer blocks on it."""
    while data and not broken:
        try:
            data = data[os.write(target, data):]
        except OSError:
            return True
    return broken


def install(patterns) -> bool:
    """Filter this process's fd 2 (and its future children's) from now on; False where it cannot."""
    global _state  # noqa: PLW0603
    if _state is not None and _state[0] == os.getpid():
        return True
    if not hasattr(os, "posix_spawn") or not sys.executable:
        return False
    import atexit  # noqa: PLC0415
    import signal  # noqa: PLC0415

    if sys.stderr is not None:
        sys.stderr.flush()
    opened = []
    try:
        saved = os.dup(2)
        opened.append(saved)
        read_end, write_end = os.pipe()
        opened += [read_end, write_end]
        pid = os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__),
                                              *[os.fsdecode(pattern) for pattern in patterns]], os.environ,
                             file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0), (os.POSIX_SPAWN_DUP2, saved, 1)],
                             setsigmask=(signal.SIGINT, signal.SIGTERM))
        os.dup2(write_end, 2)
    except OSError:
        for fd in opened:
            os.close(fd)
        return False
    os.close(read_end)
    os.close(write_end)
    pipe = os.fstat(2)
    _state = (os.getpid(), saved, pid, (pipe.st_dev, pipe.st_ino))
    atexit.register(_restore)
    if not hasattr(os._exit, "__wrapped__"):
        os._exit = _restoring_exit(os._exit)
    return True


def _restoring_exit(exit_now):
    """`os._exit` (stage scripts skip Python's teardown with it) skips atexit too: restore first, so that the
    filter's last lines come out before the process is gone and the next thing (dvc's next stage) prints."""

    @functools.wraps(exit_now)
    def _exit(code):
        try:
            _restore()
        finally:
            exit_now(code)

    return _exit


def _restore() -> None:
    """At exit: fd 2 back to the original stderr, and the filter's last lines out before this process ends."""
    global _state  # noqa: PLW0603
    if _state is None or _state[0] != os.getpid():  # a forked child: its parent's filter, not ours to wait for
        return
    _, saved, pid, pipe = _state
    _state = None
    import time  # noqa: PLC0415

    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        now = os.fstat(2)
        if (now.st_dev, now.st_ino) != pipe:  # someone pointed fd 2 elsewhere since: leave it as they set it
            return
        os.dup2(saved, 2)  # closes our end of the pipe: the filter sees end of file once our children's close
    except Exception:  # noqa: BLE001  (at exit, a stderr already closed or broken: nothing to wait for)
        return
    deadline = time.monotonic() + WAIT_AT_EXIT_S
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.002)


if __name__ == "__main__":
    filter_stream(0, 1, [os.fsencode(pattern) for pattern in sys.argv[1:]])
