"""TensorFlow's known noise stays out of a compresslab process's stderr for its whole life, and nothing else does:
real error lines, tracebacks and a child's output get through however the process ends, and a user who set
TF_CPP_MIN_LOG_LEVEL gets every line. Each case is a real process that imports compresslab, then TensorFlow; all
start at once (TensorFlow's import is most of the time)."""

import os
import signal
import subprocess
import sys
import time

import pytest

NOISE = ("E0000 00:00:1764720000.000000    4242 util.cc:131] oneDNN supports DT_INT32 only on platforms with "
         "AVX-512. Falling back to the default Eigen-based implementation if present.")
REAL_ERROR = "E0000 00:00:1764720000.000001    4242 cuda_executor.cc:99] a real error, which must show"

# The work that makes TensorFlow 2.21 print NOISE itself (AVX-512 or not): an int32 Transpose in a graph, which
# its oneDNN rewrite checks. Then the same line and a real error written to fd 2 from C level, as absl does.
SCRIPT = f"""
import os, sys, time
import compresslab
import tensorflow as tf
print(tf.function(tf.transpose)(tf.constant([[1, 2], [3, 4]])).numpy().tolist(), flush=True)
os.write(2, {(NOISE + chr(10)).encode()!r})
os.write(2, {(REAL_ERROR + chr(10)).encode()!r})
how = sys.argv[1]
if how == "raise":
    raise RuntimeError("the traceback must show")
if how == "sys.exit":
    sys.exit("sys.exit's message must show")
if how == "os._exit":  # what stage scripts do (errors.run_main, skip_teardown)
    os.write(2, b"written just before os._exit" + bytes([10]))
    os._exit(3)
if how == "abort":  # what a failed TensorFlow check does after its F line
    os.abort()
if how == "ctrl-c":
    print("ready", flush=True)
    time.sleep(60)
"""


def environment(**extra):
    ours = ("TF_CPP_MIN_LOG_LEVEL", "COMPRESSLAB_QUIET_TF")
    return {**{key: value for key, value in os.environ.items() if key not in ours}, **extra}


@pytest.fixture(scope="module")
def runs():
    cases = {"raise": environment(), "sys.exit": environment(), "os._exit": environment(), "abort": environment(),
             "ctrl-c": environment(), "user": environment(TF_CPP_MIN_LOG_LEVEL="0")}
    started = {case: subprocess.Popen([sys.executable, "-c", SCRIPT, case], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True)
               for case, env in cases.items()}
    interrupted = started["ctrl-c"]
    deadline = time.monotonic() + 60
    while interrupted.stdout.readline().strip() != "ready" and time.monotonic() < deadline:
        pass
    os.killpg(interrupted.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, the filter too
    done = {}
    for case, process in started.items():
        out, err = process.communicate(timeout=120)
        done[case] = (process.returncode, out, err)
    return done


@pytest.mark.parametrize("case, code, shown", [
    ("raise", 1, ["Traceback (most recent call last):", "RuntimeError: the traceback must show"]),
    ("sys.exit", 1, ["sys.exit's message must show"]),
    ("os._exit", 3, ["written just before os._exit"]),
    ("abort", -signal.SIGABRT, []),
    ("ctrl-c", -signal.SIGINT, ["Traceback (most recent call last):", "KeyboardInterrupt"]),
])
def test_the_noise_line_is_gone_and_everything_else_shows_however_the_process_ends(runs, case, code, shown):
    returncode, out, err = runs[case]
    assert returncode == code, err
    if case != "ctrl-c":
        assert out.strip().splitlines()[0] == "[[1, 3], [2, 4]]"
    lines = err.splitlines()
    assert REAL_ERROR in lines, err
    assert not [line for line in lines if "oneDNN" in line or "cuInit" in line or "absl::InitializeLog" in line]
    for text in shown:
        assert text in err, err
    assert lines.index(REAL_ERROR) < min((lines.index(line) for line in lines if any(text in line for text in shown)),
                                         default=len(lines))


def test_a_user_who_set_tf_cpp_min_log_level_gets_every_line(runs):
    returncode, _, err = runs["user"]
    assert returncode == 0, err
    assert REAL_ERROR in err.splitlines() and NOISE in err.splitlines()
    # TensorFlow's own copy of the line (the transpose above), and its start-up lines, all there.
    assert err.count("oneDNN supports DT_INT32 only on platforms with AVX-512") == 2, err
    assert "oneDNN custom operations are on" in err
