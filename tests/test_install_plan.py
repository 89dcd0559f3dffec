"""The plan sees the destination as it will be after the cleanup, for every section (issue 9 item 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3deploy.appspec import load_appspec
from s3deploy.errors import InstallError
from s3deploy.install.cleanup import read_list
from s3deploy.install.installer import install
from tests.test_install import make_bundle, snapshot


class Section:
    """One section's releases and cleanup list; every section's list lives in the same folder."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.tmp, self.name = tmp, name
        self.cleanup_list = tmp / "state" / "installed" / f"{name}.list"
        self.releases = 0

    def bundle(self, files: dict[str, str], spec: str) -> Path:
        self.releases += 1
        return make_bundle(self.tmp / f"{self.name}-{self.releases}", files, spec)

    def deploy(self, files: dict[str, str], spec: str) -> None:
        bundle = self.bundle(files, spec)
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=self.cleanup_list)

    @property
    def files(self) -> list[str]:
        return read_list(self.cleanup_list).files


def spec(dest: Path, behavior: str = "DISALLOW") -> str:
    return f"files:\n  - source: app\n    destination: {dest}\nfile_exists_behavior: {behavior}\n"


@pytest.mark.parametrize("behavior", ["DISALLOW", "OVERWRITE", "RETAIN"])
def test_a_folder_of_v1_holding_a_foreign_file_where_v2_has_a_file_fails_before_v1_is_removed(
    tmp_path: Path, behavior: str
) -> None:
    """The folder cannot become a file: its foreign file stays, so rmdir fails. Before, v1's own files
    were removed first and the copy then failed, leaving neither release."""
    dest, section = tmp_path / "srv", Section(tmp_path, "a")
    section.deploy({"app/x/a.txt": "1", "app/x/deep/b.txt": "1", "app/index.html": "1"}, spec(dest, behavior))
    (dest / "x" / "deep" / "foreign.txt").write_text("operator's")
    before, list_before = snapshot(dest), section.cleanup_list.read_bytes()
    bundle = section.bundle({"app/x": "now a file", "app/index.html": "2"}, spec(dest, behavior))
    with pytest.raises(InstallError, match=f"{dest}/x .*holds {dest}/x/deep/foreign.txt") as info:
        install(bundle, load_appspec(bundle), default_destination=None, cleanup_list=section.cleanup_list)
    assert "nothing was changed" in str(info.value)
    assert snapshot(dest) == before and section.cleanup_list.read_bytes() == list_before


def test_a_folder_of_v1_holding_only_its_own_files_becomes_a_file_of_v2(tmp_path: Path) -> None:
    dest, section = tmp_path / "srv", Section(tmp_path, "a")
    section.deploy({"app/x/a.txt": "1", "app/x/deep/b.txt": "1"}, spec(dest))
    section.deploy({"app/x": "now a file"}, spec(dest))
    assert (dest / "x").read_text() == "now a file"
    assert section.files == [str(dest / "x")]


def test_a_file_section_b_took_over_with_overwrite_is_not_deleted_by_section_as_next_deployment(
    tmp_path: Path,
) -> None:
    """Ownership moves with OVERWRITE: the file leaves A's cleanup list for B's. A's next Install does
    not delete it; B's next Install (without it) does."""
    shared = tmp_path / "srv"
    a, b = Section(tmp_path, "a"), Section(tmp_path, "b")
    a.deploy({"app/shared.conf": "from A", "app/a.txt": "A"}, spec(shared))
    b.deploy({"app/shared.conf": "from B"}, spec(shared, "OVERWRITE"))
    assert (shared / "shared.conf").read_text() == "from B"
    assert str(shared / "shared.conf") in b.files and str(shared / "shared.conf") not in a.files

    a.deploy({"app/a.txt": "A2"}, spec(shared))
    assert (shared / "shared.conf").read_text() == "from B"  # B's now: A did not remove it

    b.deploy({"app/other.txt": "B2"}, spec(shared, "OVERWRITE"))
    assert not (shared / "shared.conf").exists()  # B's next release (without it) removed it
    assert sorted(p.name for p in shared.iterdir()) == ["a.txt", "other.txt"]


def test_a_file_b_keeps_under_retain_stays_with_the_section_that_installed_it(tmp_path: Path) -> None:
    shared = tmp_path / "srv"
    a, b = Section(tmp_path, "a"), Section(tmp_path, "b")
    a.deploy({"app/shared.conf": "from A"}, spec(shared))
    b.deploy({"app/shared.conf": "from B", "app/b.txt": "B"}, spec(shared, "RETAIN"))
    assert (shared / "shared.conf").read_text() == "from A"
    assert str(shared / "shared.conf") in a.files and str(shared / "shared.conf") not in b.files
    a.deploy({"app/a.txt": "A2"}, spec(shared))
    assert not (shared / "shared.conf").exists()  # still A's: A's next release removed it


def test_a_corrupt_list_of_another_section_does_not_block_a_take_over(tmp_path: Path) -> None:
    shared = tmp_path / "srv"
    a, b = Section(tmp_path, "a"), Section(tmp_path, "b")
    a.deploy({"app/shared.conf": "from A"}, spec(shared))
    (tmp_path / "state" / "installed" / "broken.list").write_text("{not json")
    b.deploy({"app/shared.conf": "from B"}, spec(shared, "OVERWRITE"))
    assert a.files == [] and b.files == [str(shared / "shared.conf")]
