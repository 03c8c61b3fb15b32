"""Root writing into a user's ``~/.casa`` cannot be turned against the machine, and the
catalog's exports follow every change, each user's to that user only.

The user owns their home, so every name root opens there may be a link the user planted
(the lab's terminal gives every user a shell). Each test plants one, lets casa write as the
hub does at spawn (the tokens), and checks that the root-owned target was neither written,
truncated nor given to the user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from accounts import unix_account
from casa.config import facility_paths
from casa.data.catalog import DatasetCatalog
from casa.data.exports import CatalogExports, facility_catalog
from casa.data.files import FileInfo
from casa.filesystem import UserFolder, create_once, write_file

#: The users' environment, which other accounts may run (make install builds it).
USER_PYTHON = Path("/opt/casa-user-env/bin/python")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to create the user's Unix account"
)


@pytest.fixture
def mallory():
    with unix_account("tfsmallory") as account:
        yield account


@pytest.fixture
def victim(tmp_path):
    """A root-owned file standing for /etc/shadow."""
    path = tmp_path / "shadow"
    path.write_text("root:secret\n")
    os.chmod(path, 0o600)
    return path


def as_user(account, *command: str) -> None:
    subprocess.run(["runuser", "-u", account.pw_name, "--", *command], check=True)


def untouched(path) -> bool:
    info = os.stat(path)
    return (
        path.read_text() == "root:secret\n" and info.st_uid == 0 and info.st_mode & 0o777 == 0o600
    )


def test_a_linked_casa_folder_is_refused_and_its_target_kept(mallory, victim):
    target = victim.parent
    folder = os.path.join(mallory.pw_dir, ".casa")
    as_user(mallory, "ln", "-s", str(target), folder)
    with pytest.raises(OSError, match="is not a folder"):
        UserFolder(mallory)
    assert os.stat(target).st_uid == 0, "the linked folder must not be given to the user"
    assert untouched(victim)


def test_planted_links_inside_the_folder_are_replaced_not_followed(mallory, victim):
    folder = os.path.join(mallory.pw_dir, ".casa")
    as_user(mallory, "mkdir", "-m", "700", folder)
    as_user(mallory, "ln", "-s", str(victim), os.path.join(folder, "bearer_token"))
    as_user(
        mallory, "ln", "-s", str(victim), os.path.join(folder, f".bearer_token.{os.getpid()}.tmp")
    )
    with UserFolder(mallory) as f:
        written = f.write("bearer_token", "tok\n")
    assert untouched(victim)
    info = os.lstat(written)
    assert not os.path.islink(written) and written.read_text() == "tok\n"
    assert (info.st_uid, info.st_mode & 0o777) == (mallory.pw_uid, 0o600)


def test_two_facilities_on_one_machine_keep_their_own_users_exports(mallory, tmp_path):
    """A site's facility and one a user runs for themselves: a change in one leaves the
    other's exports for the same user alone."""
    url = f"root://127.0.0.1:1/store/user/{mallory.pw_name}~/mine/f.root"
    site = facility_catalog(facility_paths(tmp_path / "site").ensure())
    site.add_files("sites", [FileInfo(url, "Events", 10, 100)])
    own = facility_catalog(facility_paths(tmp_path / "own").ensure())
    own.add_files("owns", [FileInfo(url.replace("mine", "other"), "Events", 1, 1)])
    paths = facility_paths(tmp_path / "site")
    export = CatalogExports(paths).user_file(mallory.pw_name)
    assert list(json.loads(export.read_text())) == ["sites"]
    info, folder = export.stat(), export.parent.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (mallory.pw_uid, 0o600)
    assert (folder.st_uid, folder.st_mode & 0o777) == (0, 0o711), "the user may not plant links"


def test_write_file_never_writes_through_a_planted_temporary_name(tmp_path, victim):
    path = tmp_path / "out.txt"
    os.symlink(victim, tmp_path / f".out.txt.{os.getpid()}.tmp")
    write_file(path, "new", mode=0o640)
    assert untouched(victim)
    assert path.read_text() == "new" and os.stat(path).st_mode & 0o777 == 0o640


def test_create_once_keeps_the_first_secret(tmp_path):
    path = tmp_path / "secret"
    assert create_once(path, "first") is True
    assert create_once(path, "second") is False
    assert path.read_text() == "first" and os.stat(path).st_mode & 0o777 == 0o600


def test_exports_follow_every_change_and_keep_private_datasets_to_their_owner(tmp_path):
    """Without a hub: the public export and the owner's own change with add and remove."""
    with unix_account("tfsowner") as owner, unix_account("tfsowner2") as other:
        paths = facility_paths(tmp_path / "facility").ensure()
        public = CatalogExports(paths).public_file
        catalog = facility_catalog(paths)
        mine = f"root://127.0.0.1:1/store/user/{owner.pw_name}~/priv/f.root"
        others = f"root://127.0.0.1:1/store/user/{other.pw_name}~/theirs/f.root"
        catalog.add_files(
            "pub", [FileInfo("root://127.0.0.1:1/store/data/pub~/f.root", "Events", 1, 1)]
        )
        catalog.add_files("priv", [FileInfo(mine, "Events", 1, 1)])
        catalog.add_files("theirs", [FileInfo(others, "Events", 1, 1)])
        own = CatalogExports(paths).user_file(owner.pw_name)
        assert sorted(json.loads(public.read_text())) == ["pub"]
        assert oct(os.stat(public).st_mode & 0o777) == "0o644"
        assert sorted(json.loads(open(own).read())) == ["priv", "pub"]
        assert os.stat(own).st_uid == owner.pw_uid and os.stat(own).st_mode & 0o777 == 0o600
        catalog.remove("priv")
        catalog.remove("pub")
        assert json.loads(open(own).read()) == {}, "a removed dataset leaves the owner's export"
        assert json.loads(public.read_text()) == {}
        # another process opening the plain catalog sees the same data; it changes nothing
        assert [d.name for d in DatasetCatalog(paths.database).list()] == ["theirs"]


def test_a_users_casa_reads_what_they_may_read_and_changes_nothing(tmp_path):
    """Another account's ``casa`` on this facility (as in the lab's terminal or over SSH):
    the datasets it may read, from its export, as the admin's casa shows them; the others
    not even named; every command that changes the facility refused in one sentence."""
    python = USER_PYTHON
    if not python.exists() and not os.environ.get("CI"):
        pytest.skip("no users' environment (make install builds /opt/casa-user-env)")
    with unix_account("tfsreader") as reader, unix_account("tfsreader2") as other:
        home = Path(tempfile.mkdtemp(prefix="casa-test-", dir="/tmp")) / "facility"
        os.chmod(home.parent, 0o711)  # as a facility's folder is: other accounts pass
        paths = facility_paths(home).ensure()
        catalog = facility_catalog(paths)
        mine = f"root://127.0.0.1:1/store/user/{reader.pw_name}~/priv/f.root"
        others = f"root://127.0.0.1:1/store/user/{other.pw_name}~/theirs/f.root"
        catalog.add_files(
            "pub", [FileInfo("root://127.0.0.1:1/store/data/pub~/f.root", "Events", 7, 70)]
        )
        catalog.add_files("priv", [FileInfo(mine, "Events", 3, 30)], metadata={"xsec": 1.5})
        catalog.add_files("theirs", [FileInfo(others, "Events", 1, 10)])

        def casa(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["runuser", "-u", reader.pw_name, "--", "env", f"CASA_HOME={home}", "NO_COLOR=1",
                 "COLUMNS=200", str(python), "-m", "casa", *args],
                capture_output=True, text=True, cwd="/", timeout=120,
            )  # fmt: skip

        listed = json.loads(casa("datasets", "list", "--json").stdout)
        admin = {d.name: d for d in catalog.list()}
        assert [d["name"] for d in listed] == ["priv", "pub"]
        for name in ("priv", "pub"):
            shown = casa("datasets", "show", name, "--json")
            assert json.loads(shown.stdout) == admin[name].to_dict(), shown.stderr
        exported = json.loads(casa("datasets", "export").stdout)
        assert exported == catalog.export_fileset(["priv", "pub"])
        refused = casa("datasets", "show", "theirs")
        assert refused.returncode == 4 and "(priv, pub)" in refused.stderr
        before = json.dumps(catalog.export_fileset())
        for command in (["datasets", "add", "x", "/tmp"], ["datasets", "remove", "pub"],
                        ["datasets", "import", "/tmp/none.json"], ["up"], ["user", "list"]):  # fmt: skip
            p = casa(*command)
            err = " ".join(p.stderr.split())
            assert p.returncode == 2, (command, p.stderr)
            named = " ".join(command[:1] if command == ["up"] else command[:2])
            assert f"'casa {named}' is for the facility's admin (root" in err, err
            assert f"not for your account {reader.pw_name}" in err and "Traceback" not in err
        assert json.dumps(catalog.export_fileset()) == before
        p = casa("--home", "/root/none", "datasets", "list")
        assert p.returncode == 3 and "the facility folder /root/none does not exist" in p.stderr
        shutil.rmtree(home.parent)
