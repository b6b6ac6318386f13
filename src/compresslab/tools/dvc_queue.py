"""DVC's experiment queue, driven from this process: queue an experiment, start the workers, wait for the
named experiments, read a failed one's error line from its log, and take a stopped search's probes out.

DVC 3.67's queue has two traps this module works around: a worker that shuts down on an empty queue takes a
message queued at that moment with it (`wait_for_idle_workers`), and a probe can be left with no worker alive
(`wait_for_probes` restarts the workers once, then gives up with the fix).
"""

import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path

from compresslab.errors import UserError
from compresslab.tools.dvc_command import run_dvc

POLL_SECONDS = 3.0
# Polls with probes pending and no queue worker alive before the search starts the workers again (once), then
# gives up, rather than wait forever for a probe that nobody will run (see `wait_for_probes`).
STALLED_POLLS = 10


def queue_experiment(name: str, overrides: Sequence[str]) -> None:
    """Queue experiment `name` with the Hydra overrides (`-S KEY=VALUE` each); the workers run it."""
    run_dvc("exp", "run", "--queue", "--name", name, *[arg for override in overrides for arg in ("-S", override)])


class ProbeFailed(UserError):
    """A probe's experiment failed in one of its stages; the message carries that stage's own error line."""


def wait_for_probes(names: list[str], jobs: int,
                    indices: Mapping[Hashable, str]) -> Iterator[tuple[Hashable, float]]:
    """Start the queue's workers and yield (its key in `indices`, e.g. a grid index; seconds since the start)
    as each named experiment succeeds.

    Raises:
      ProbeFailed: an experiment failed, after every experiment that succeeded by then was yielded.
    """
    start_workers(min(jobs, len(names)))
    index_of = {name: index for index, name in indices.items()}
    started, pending, stalled, restarted = time.monotonic(), set(names), 0, False
    while pending:
        time.sleep(POLL_SECONDS)
        status, workers = queue_state()
        for name in sorted(pending):
            if status.get(name) == "Success":
                pending.discard(name)
                yield index_of[name], time.monotonic() - started
        failed = sorted(name for name in pending if status.get(name) == "Failed")
        if failed:
            raise ProbeFailed(f"probe {failed[0]} failed: {probe_error(failed[0])}")
        stalled = stalled + 1 if pending and workers == 0 else 0
        if stalled >= STALLED_POLLS:
            if restarted:
                raise UserError(f"DVC's queue has no worker left for probe(s) {', '.join(sorted(pending))} "
                                f"({', '.join(sorted({status.get(n) or 'missing' for n in pending}))}): run the "
                                f"search again (probes that finished are reused from DVC's run cache)")
            start_workers(min(jobs, len(pending)))
            stalled, restarted = 0, True


def probe_error(name: str) -> str:
    """The failing stage and its own one-line error, read from `dvc queue logs NAME`."""
    logs = subprocess.run([sys.executable, "-m", "dvc", "queue", "logs", name], capture_output=True, text=True)
    return failure_line(logs.stdout + logs.stderr, name)


def failure_line(log: str, name: str) -> str:
    """'stage S: <its error line>' from an experiment's log: the stage DVC names as failing, and the last
    `error: ` line of ours (a UserError) or else the last line of a traceback."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    stages = [m.group(1) for line in lines if (m := re.search(r"failed to reproduce '([^']+)'", line))]
    ours = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b[^:]*: ", line)]
    reason = (ours or raised or [f"see `dvc queue logs {name}`"])[-1]
    reason = reason if len(reason) <= 400 else reason[:400] + " ..."
    return f"stage {stages[-1]}: {reason}" if stages else reason


def start_workers(jobs: int) -> None:
    # The workers DVC spawns inherit the caller's stdout and stderr: through a pipe, `dvc queue start` would
    # only seem to return once they exit, i.e. after the whole round. A file keeps its output for the error.
    with tempfile.TemporaryFile("w+") as output:
        code = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)],
                              stdout=output, stderr=subprocess.STDOUT).returncode
        if code != 0:
            output.seek(0)
            last = output.read().strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"`dvc queue start` failed: {last[0]}")


def wait_for_idle_workers(seconds: float = 60.0) -> None:
    """Let the previous round's workers shut down (each does once the queue is empty, about 15 s after its last
    experiment) before a new round is queued: one on its way out takes a new message and drops it."""
    deadline = time.monotonic() + seconds
    while queue_state()[1] and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS / 3)


def stop_probes(names: Sequence[str], wait_seconds: float = 60.0) -> None:
    """Take the named experiments out of the queue (best effort: this runs on the way out of a failed or
    interrupted search): remove the waiting ones first, so no worker starts them, then kill the running ones,
    wait until DVC has marked them failed (a loaded machine takes seconds), and remove those too."""
    def dvc_queue(command: str, status: dict[str, str], states: tuple[str, ...]) -> list[str]:
        doomed = [name for name in names if status.get(name) in states]
        if doomed:
            subprocess.run([sys.executable, "-m", "dvc", "queue", command, *doomed], capture_output=True)
        return doomed

    try:
        status = queue_status()
        dvc_queue("remove", status, ("Queued", "Failed"))
        killed = dvc_queue("kill", status, ("Running",))
        deadline = time.monotonic() + wait_seconds
        while killed and time.monotonic() < deadline:
            status = queue_status()
            if not any(status.get(name) == "Running" for name in killed):
                break
            time.sleep(POLL_SECONDS / 3)
        if killed:
            dvc_queue("remove", status, ("Queued", "Failed"))
    except UserError:
        return


def queue_status() -> dict[str, str]:
    """{experiment name: status} from `dvc queue status` (Queued, Running, Success, Failed)."""
    return queue_state()[0]


def queue_state(root: str | Path | None = None) -> tuple[dict[str, str], int]:
    """{experiment name: status} of DVC's queue (Queued, Running, Success, Failed), and how many of its workers
    are alive (active or idle), for the repository at `root` (default: the one around the working directory).

    What `dvc queue status` prints, read from DVC's queue in this process: a `dvc` process per poll spent about
    a second of CPU on its imports, a fifth of a core taken from the probes while a search waited on them.
    """
    from dvc.exceptions import DvcException  # noqa: PLC0415  (0.2 s, paid by the search alone)
    from dvc.repo import Repo  # noqa: PLC0415

    try:
        with Repo(root) as repo:
            queue = repo.experiments.celery_queue   # what `dvc queue status` reads (DVC 3.67)
            status = {entry["name"]: entry["status"] for entry in queue.status() if entry.get("name")}
            return status, len(queue.worker_status())
    except DvcException as err:
        raise UserError(f"reading DVC's experiment queue failed: {err}") from err
