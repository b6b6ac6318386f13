"""One timing run on a device over SSH: make a folder there, copy the files and `timing_core.py`, run it with
the device's Python, bring the JSON back, remove the folder.

SSH is asyncssh (pinned in requirements.lock, already there for DVC's git): a client that reads
~/.ssh/config (Host aliases, User, Port, IdentityFile) and ~/.ssh/known_hosts as OpenSSH does, with bounded
connect and keep-alive timeouts and SFTP, and no dependence on the machine having an `ssh` binary.
Every failure is one UserError naming the device and the fix; the caller writes nothing unless the whole
run succeeded.
"""

import asyncio
import json
import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from compresslab.errors import UserError
from compresslab.settings import DeviceConfig
from compresslab.tflite import timing_core

CONNECT_SECONDS = 15
# A device that stops answering is noticed after KEEPALIVE_SECONDS x KEEPALIVE_MISSES, long before timeout_s.
KEEPALIVE_SECONDS = 5
KEEPALIVE_MISSES = 3
CLEANUP_SECONDS = 10
SCRIPT = Path(timing_core.__file__).name
LITERT_FIX = "ai-edge-litert==2.3.0 numpy"   # the versions this project pins


def time_files(device: DeviceConfig, files: Sequence[Path], plan: dict, *,
               echo: Callable[[str], None] = print) -> dict:
    """Run `timing_core.time_plan` on the device for `files` (plan['files'] and plan['reference'] name them,
    plan['sample'] too if set) and return what it measured, with the device's fingerprint.

    Raises:
      UserError: the device cannot be reached, refuses the key, lacks Python or LiteRT, runs out of disk,
        stops answering, or the measurement fails; one line naming the device and the fix.
    """
    for option, value in (("identity_file", device.identity_file), ("known_hosts", device.known_hosts)):
        if value is not None and not Path(value).expanduser().is_file():
            raise UserError(f"device {device.name}: {option} {value} not found: fix evaluate.devices' {option} "
                            "(or null for OpenSSH's default)")
    session = _Session(device, echo)
    try:
        return asyncio.run(asyncio.wait_for(session.run(files, plan), timeout=device.timeout_s))
    except (TimeoutError, asyncio.TimeoutError):
        raise session.error(f"did not finish {session.phase} within timeout_s={device.timeout_s:g} s",
                            f"check that it is up and not busy, or raise evaluate.devices' timeout_s for "
                            f"{device.name}") from None


class _Session:
    """The steps of one run; `phase` says which one a failure or a timeout interrupted."""

    def __init__(self, device: DeviceConfig, echo: Callable[[str], None]):
        self.device, self.echo, self.phase = device, echo, "connecting"

    async def run(self, files: Sequence[Path], plan: dict) -> dict:
        import asyncssh

        device = self.device
        try:
            async with asyncssh.connect(**connect_options(device)) as connection:
                self.phase = "making its folder"
                made = await connection.run('mktemp -d "${TMPDIR:-/tmp}/compresslab-timing.XXXXXX"')
                if made.exit_status != 0:
                    raise self.error(f"cannot make a folder in its temporary directory ({last_line(made.stderr)})",
                                     "free space on the device or set TMPDIR there")
                folder = made.stdout.strip()
                try:
                    return await self.time_in(connection, folder, files, plan)
                finally:
                    await self.remove(connection, folder)
        except asyncssh.PermissionDenied:
            raise self.error("refused the key", "add your public key to the device's ~/.ssh/authorized_keys "
                             "(ssh-copy-id), or set identity_file") from None
        except asyncssh.HostKeyNotVerifiable as err:
            raise self.error(f"has a host key that is not known ({err.reason})", "connect once with `ssh` and "
                             "accept its key, or set known_hosts to a file that lists it") from None
        except asyncssh.KeyImportError as err:
            raise self.error(f"identity_file {device.identity_file} is not a private key ({err})",
                             "point identity_file at the private key (not the .pub)") from None
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError) as err:
            if self.phase == "connecting":
                raise self.error(f"cannot be reached ({err.reason or type(err).__name__})", "check that it is "
                                 "on, that the address is right and that sshd listens on that port") from None
            raise self.error(f"closed the connection while {self.phase} ({err.reason or type(err).__name__})",
                             "check that it is up and run the stage again") from None
        except asyncssh.SFTPError as err:
            raise self.error(f"could not take the files ({err.reason}): its disk may be full",
                             "free space in its temporary directory (df -h /tmp) and run again") from None
        except TimeoutError:   # asyncssh's connect_timeout (TimeoutError is an OSError: caught first)
            if self.phase != "connecting":
                raise
            raise self.error(f"did not answer within {CONNECT_SECONDS} s", "check that it is on and that the "
                             "address and port are right") from None
        except OSError as err:
            if self.phase != "connecting":
                raise
            raise self.error(f"cannot be reached ({err.strerror or err})", "check that it is on, that the "
                             "address is right and that sshd listens on that port") from None

    async def time_in(self, connection, folder: str, files: Sequence[Path], plan: dict) -> dict:
        self.phase = "taking the files"
        with tempfile.TemporaryDirectory() as scratch:
            plan_path = Path(scratch) / "plan.json"
            plan_path.write_text(json.dumps(plan))
            async with connection.start_sftp_client() as sftp:
                await sftp.put([str(path) for path in (*files, timing_core.__file__, plan_path)], folder)
            self.phase = "timing"
            started = time.monotonic()
            # `python` is the device's command as configured (a path, or a path with flags): not quoted.
            command = f"cd {shlex.quote(folder)} && {self.device.python} {SCRIPT} plan.json out.json"
            process = await connection.create_process(command)
            errors = []
            async for line in process.stderr:
                line = line.rstrip()
                errors.append(line)
                if line.startswith(("[", "error: ")):   # timing_core's progress and failure, not LiteRT's INFO
                    self.echo(f"  {self.device.name}: {line}")
            finished = await process.wait()
            self.check_exit(finished.exit_status, errors)
            self.phase = "returning the figures"
            async with connection.start_sftp_client() as sftp:
                await sftp.get(f"{folder}/out.json", str(Path(scratch) / "out.json"))
            result = json.loads((Path(scratch) / "out.json").read_text())
        result["seconds"] = round(time.monotonic() - started, 1)
        return result

    def check_exit(self, status: int | None, errors: list[str]) -> None:
        python = self.device.python
        last = next((line for line in reversed(errors) if line.strip()), "no output")
        if status == 0:
            return
        if status == 127:
            raise self.error(f"has no Python at {python!r} ({last})", "install Python 3 there, or set python to "
                             "its path")
        if status == timing_core.MISSING_EXIT:
            raise self.error(last.removeprefix("error: "), f"run `{python} -m pip install {LITERT_FIX}` on it")
        raise self.error(f"failed to time the files ({last.removeprefix('error: ')}, exit "
                         f"{'a signal' if status is None else status})",
                         "run the stage again; if it repeats, run timing_core.py there by hand")

    async def remove(self, connection, folder: str) -> None:
        """Best effort: a connection that is gone leaves the folder (in the device's temporary directory)."""
        try:
            await asyncio.wait_for(connection.run(f"rm -rf {shlex.quote(folder)}"), CLEANUP_SECONDS)
        except Exception:   # noqa: BLE001 - the run's own outcome is what the user needs to hear
            pass

    def error(self, what: str, fix: str) -> UserError:
        return UserError(f"device {self.device.name} ({self.device.host}"
                         f"{'' if self.device.port is None else f':{self.device.port}'}) {what}: {fix}")


def connect_options(device: DeviceConfig) -> dict:
    """asyncssh.connect's arguments: what the device names, the rest from ~/.ssh/config as OpenSSH would."""
    user, _, host = device.host.rpartition("@")
    options = {"host": host, "connect_timeout": CONNECT_SECONDS, "keepalive_interval": KEEPALIVE_SECONDS,
               "keepalive_count_max": KEEPALIVE_MISSES}
    if user:
        options["username"] = user
    if device.port is not None:
        options["port"] = device.port
    if device.identity_file is not None:
        options["client_keys"] = [str(Path(device.identity_file).expanduser())]
    if device.known_hosts is not None:
        options["known_hosts"] = str(Path(device.known_hosts).expanduser())
    return options


def last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "no output"
