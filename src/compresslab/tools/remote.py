"""Whether the DVC remote a team shares can be reached, checked before `dvc pull` so that a wrong URL, missing
credentials or a missing plugin read as one line naming the fix (DVC itself reports a missing local remote
as "Checkout failed for following targets", without naming the remote)."""

from compresslab.errors import UserError


def check_remote(name: str | None = None, root: str = ".") -> str:
    """Raise a UserError unless DVC remote `name` (None: the default) exists and answers; returns a line
    saying where it is."""
    from dvc.config import ConfigError  # DVC loads only for this command
    from dvc.repo import Repo

    label = f"DVC remote {name!r}" if name else "the default DVC remote"
    try:
        with Repo(root) as repo:
            remote = repo.cloud.get_remote(name)
            url = repo.config["remote"][remote.name]["url"]
            found = remote.fs.exists(remote.path)
    except ConfigError as err:  # no such remote, or none is the default
        raise UserError(f"{label}: {one_line(err)}: add one with `dvc remote add -d NAME URL` (see "
                        f"`dvc remote list`)") from None
    except Exception as err:  # noqa: BLE001  (a missing plugin, credentials, DNS: DVC raises all kinds)
        raise UserError(f"{label} cannot be reached ({one_line(err)}): check its URL (`dvc remote modify "
                        f"{name or 'NAME'} url ...`), its plugin (`pip install 'dvc[s3]==3.67.1'`, ...) and "
                        f"credentials") from None
    if not found:
        raise UserError(f"DVC remote {remote.name!r} at {url} does not exist or does not answer: fix the URL "
                        f"with `dvc remote modify {remote.name} url ...`, or `dvc push` to it from a clone "
                        f"that has the data")
    return f"DVC remote {remote.name!r} at {url} is reachable"


def one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__
