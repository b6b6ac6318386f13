"""`compresslab remote-check`: a DVC remote that cannot serve a `dvc pull` is one line naming the fix."""

import pytest
from dvc.repo import Repo

from compresslab.errors import UserError
from compresslab.tools.remote import check_remote


@pytest.fixture
def repo(tmp_path):
    Repo.init(str(tmp_path), no_scm=True).close()
    return tmp_path


def add_remote(root, name, url, default=False):
    with Repo(str(root)) as repo, repo.config.edit() as config:
        config["remote"][name] = {"url": url}
        if default:
            config["core"]["remote"] = name


def test_a_remote_folder_that_exists_is_reachable_and_one_that_does_not_names_the_fix(repo, tmp_path):
    add_remote(repo, "storage", str(tmp_path / "shared"), default=True)
    with pytest.raises(UserError, match=r"DVC remote 'storage' at .*shared does not exist.*dvc remote modify "
                                        r"storage url") as err:
        check_remote(root=str(repo))
    assert "\n" not in str(err.value)
    (tmp_path / "shared").mkdir()
    assert check_remote(root=str(repo)) == f"DVC remote 'storage' at {tmp_path / 'shared'} is reachable"


@pytest.mark.parametrize("setup, name, fragment", [
    (lambda root: None, None, "the default DVC remote: .*no remote specified.*dvc remote add -d"),
    (lambda root: add_remote(root, "storage", "/tmp"), "nosuch", "remote 'nosuch' doesn't exist"),
    (lambda root: add_remote(root, "bucket", "s3://bucket/path"), "bucket",
     "'bucket' cannot be reached .*requires 'dvc-s3'.*pip install 'dvc\\[s3\\]"),
    (lambda root: add_remote(root, "web", "http://127.0.0.1:9/dvc"), "web", "'web' at http://127.0.0.1:9/dvc does not"),
])
def test_no_remote_an_unknown_one_a_missing_plugin_and_a_dead_server_are_one_line_errors(repo, setup, name,
                                                                                         fragment):
    setup(repo)
    with pytest.raises(UserError, match=fragment) as err:
        check_remote(name, root=str(repo))
    assert "\n" not in str(err.value)
