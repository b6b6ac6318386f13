"""A device on this machine, for trying the device stage without a board (and for the tests): an SSH server on
127.0.0.1 (asyncssh, pinned) with its own host key and a client key written to FOLDER, that runs each command
with this machine's shell and serves SFTP.

    python -m compresslab.devices.loopback .loopback        # serves until Ctrl-C; prints the override to use

FOLDER gets `host_key`, `client_key` (give it as identity_file), `authorized_keys`, `known_hosts` (give it as
known_hosts) and, once the server listens, `port`. Only the generated client key is accepted, only on 127.0.0.1.
"""

import argparse
import asyncio
import os
import sys
from pathlib import Path

KEY_TYPE = "ssh-ed25519"


def write_keys(folder: Path) -> None:
    """A host key, a client key and the client's authorized_keys in `folder` (kept when already there)."""
    import asyncssh

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        if not (folder / name).is_file():
            key = asyncssh.generate_private_key(KEY_TYPE)
            key.write_private_key(folder / name)
            key.write_public_key(folder / f"{name}.pub")
            os.chmod(folder / name, 0o600)
    (folder / "authorized_keys").write_bytes((folder / "client_key.pub").read_bytes())


async def _run_command(process) -> None:
    """Run the client's command with this machine's shell, its output streamed back as it comes."""
    if not process.command:
        process.stderr.write(b"this loopback device runs commands only, no interactive shell\n")
        process.exit(1)
        return
    local = await asyncio.create_subprocess_shell(process.command, stdin=asyncio.subprocess.DEVNULL,
                                                  stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def pump(reader, writer) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)

    await asyncio.gather(pump(local.stdout, process.stdout), pump(local.stderr, process.stderr))
    process.exit(await local.wait())


async def serve(folder: Path, port: int = 0) -> None:
    """Listen on 127.0.0.1:port (0: any free port) until cancelled; write `port` and `known_hosts` once up."""
    import asyncssh

    write_keys(folder)
    server = await asyncssh.create_server(
        asyncssh.SSHServer, "127.0.0.1", port, server_host_keys=[str(folder / "host_key")],
        authorized_client_keys=str(folder / "authorized_keys"), process_factory=_run_command,
        sftp_factory=True, encoding=None)
    bound = server.sockets[0].getsockname()[1]
    host_key = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{bound} {host_key[0]} {host_key[1]}\n")
    (folder / "port.partial").write_text(str(bound))
    (folder / "port.partial").replace(folder / "port")   # whole when it appears: a waiting test reads it
    print(f"loopback device on 127.0.0.1:{bound}; time the files on it with\n  {override(folder, bound)}",
          flush=True)
    async with server:
        await server.wait_closed()


def override(folder: Path, port: int, name: str = "loopback") -> str:
    """The `dvc exp run -S` argument that times every file on this loopback device."""
    folder = folder.resolve()
    return (f"dvc exp run -S 'evaluate.devices=[{{name: {name}, host: 127.0.0.1, port: {port}, identity_file: "
            f"{folder / 'client_key'}, known_hosts: {folder / 'known_hosts'}, python: {sys.executable}}}]'")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the keys, known_hosts and port are written")
    parser.add_argument("--port", type=int, default=0, help="the port to listen on (default: any free one)")
    args = parser.parse_args()
    (args.folder / "port").unlink(missing_ok=True)
    try:
        asyncio.run(serve(args.folder, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
