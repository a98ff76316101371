"""service/files.py: atomic writes that follow symlinks, refuse devices and FIFOs, and keep the target's mode."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.files import WriteError, atomic_write, same_file, write_target


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_umask_mode_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new.txt", "a")
        atomic_write(tmp_path / "secret.txt", "a", new_mode=0o600)
    finally:
        os.umask(old)
    assert mode(tmp_path / "new.txt") == 0o640 and mode(tmp_path / "secret.txt") == 0o600  # not mkstemp's 0600
    existing = tmp_path / "shared.txt"
    existing.write_text("old")
    existing.chmod(0o664)
    atomic_write(existing, "new", new_mode=0o600)
    assert existing.read_text() == "new" and mode(existing) == 0o664


def test_a_symlink_is_followed_and_stays_a_link(tmp_path: Path) -> None:
    target = tmp_path / "target.jsonl"
    target.write_text("old")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target.name)
    assert atomic_write(link, "new") == target
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling"
    dangling.symlink_to("made-by-the-write.txt")
    atomic_write(dangling, "x")
    assert dangling.is_symlink() and (tmp_path / "made-by-the-write.txt").read_text() == "x"


def test_a_fifo_or_a_folder_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "to-fifo"
    link.symlink_to(fifo)
    for path in (fifo, link):
        with pytest.raises(WriteError, match=r"it is a FIFO \(named pipe\).*not a regular file") as info:
            atomic_write(path, "x")
        assert "\n" not in str(info.value)
    with pytest.raises(WriteError, match="it is a folder"):
        atomic_write(tmp_path, "x")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "to-fifo"]


def test_a_parent_that_is_a_file_is_one_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match="Not a directory") as info:
        write_target(tmp_path / "file" / "k.yaml")
    assert isinstance(info.value, ValueError)
    for parents in (False, True):
        with pytest.raises(WriteError):
            atomic_write(tmp_path / "file" / "k.yaml", "x", make_parents=parents)
    with pytest.raises(WriteError, match="No such file"):
        atomic_write(tmp_path / "missing" / "k.yaml", "x")
    atomic_write(tmp_path / "made" / "deeper" / "k.yaml", "x", make_parents=True)
    assert (tmp_path / "made" / "deeper" / "k.yaml").read_text() == "x"


def test_the_temporary_file_goes_on_any_failure_and_a_failing_cleanup_hides_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "d.jsonl"
    target.write_text("old")

    def pieces() -> Iterator[str]:
        yield "half"
        raise ValueError("NaN is no JSON")

    with pytest.raises(ValueError, match="NaN is no JSON"):  # the caller's own error comes through
        atomic_write(target, pieces())
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]

    def cross_device(*_: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    def broken_unlink(self: Path, missing_ok: bool = False) -> None:
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory")

    monkeypatch.setattr(os, "replace", cross_device)
    monkeypatch.setattr(Path, "unlink", broken_unlink)
    with pytest.raises(WriteError, match=os.strerror(errno.EXDEV)):  # the real error, not the cleanup's
        atomic_write(target, "new")
    assert target.read_text() == "old"


def test_same_file_sees_links_and_not_missing_files(tmp_path: Path) -> None:
    a = tmp_path / "a.csv"
    a.write_text("x")
    (tmp_path / "link").symlink_to(a)
    os.link(a, tmp_path / "hard")
    assert same_file(a, tmp_path / "link") and same_file(a, tmp_path / "hard")
    assert same_file(a, tmp_path / "." / "a.csv")
    assert not same_file(a, tmp_path / "missing") and not same_file(tmp_path / "missing", tmp_path / "missing")
