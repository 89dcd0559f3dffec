"""The releases folder beside a destination: its name, reaching it safely, deleting inside it.

With ``activation = symlink`` the destination D (``/var/www/html``) is a symbolic link to one release
folder, and every release lives in ``<parent of D>/.<name of D>.s3deploy-releases/`` (here
``/var/www/.html.s3deploy-releases/``): next to D, so on D's filesystem (a rename can move things between
them), and outside D, so the application's own files can never collide with it. Inside it:

```
<deployment id>/            a release (``d-7Q2K9ZP1A``): what D links to; 0755 root, fresh for each deployment
replaced-<UTC time>/        what D was before the first switch (a real folder), moved aside, never deleted
.link-<random>              a link being put in place (a crash may leave one: a later switch removes it)
.prune-<random>             a release being deleted (a crash may leave one: the next prune finishes it)
.bridge/, .<D>.s3deploy-releases, <id> -> .<D>.s3deploy-releases/<id>
                            left by ``deactivate`` so a reader of D's old link text finds D (pruned)
```

Every folder is reached through directory descriptors: D's parent by ``dirs.open_folder`` (Install's
link rule: no link followed that root alone could not have planted), everything else from there. The
releases folder must be a real folder owned by the agent's user and writable by no one else, or nothing
is done. Inside a release (which ``permissions`` may hand to the application user) no link is ever followed:
``remove_tree`` opens each folder with ``O_NOFOLLOW`` and unlinks links as entries.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from s3deploy.errors import InstallError
from s3deploy.install.dirs import DIR_FLAGS, open_folder

ROOT_SUFFIX = ".s3deploy-releases"
LINK_PREFIX = ".link-"
PRUNE_PREFIX = ".prune-"
ASIDE_PREFIX = "replaced-"
BRIDGE_DIR = ".bridge"
# remove_tree holds one descriptor per level; a deeper folder is first moved up to the releases folder
MAX_REMOVE_DEPTH = 128
_NAME_MAX = 255
#: Folders activation creates: the agent's, writable by it alone.
RELEASE_DIR_MODE = 0o755


class MissingFolder(InstallError):
    """A folder on the way to the destination does not exist (and was not to be created)."""


def normalized(destination: Path | str) -> str:
    """``destination`` as a normalized absolute path; InstallError for a relative path or ``/``."""
    text = os.fspath(destination)
    if not text.startswith("/") or "\0" in text:
        raise InstallError(f"destination {text!r}: activation needs an absolute path")
    path = os.path.normpath(text)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if path == "/":
        raise InstallError("destination /: activation needs a folder below /, not / itself")
    return path


def root_name(destination: str) -> str:
    """The name of D's releases folder, inside D's parent."""
    name = f".{destination.rpartition('/')[2]}{ROOT_SUFFIX}"
    if len(name.encode()) > _NAME_MAX:
        raise InstallError(
            f"destination {destination}: its name is too long for the releases folder {name[:40]}... "
            f"beside it (at most {_NAME_MAX - len(ROOT_SUFFIX) - 1} bytes)"
        )
    return name


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(6)}"


class Place:
    """D's parent and its releases folder, opened; ``root_fd`` is None when that folder does not exist."""

    def __init__(self, destination: Path | str, *, create: bool) -> None:
        self.destination = normalized(destination)
        parent, _, self.name = self.destination.rpartition("/")
        self.parent = parent or "/"
        self.root_name = root_name(self.destination)
        self.root = f"{self.parent.rstrip('/')}/{self.root_name}"
        try:
            self.parent_fd = open_folder(self.parent, create=create)
        except FileNotFoundError as e:
            raise MissingFolder(f"folder {self.parent} does not exist") from e
        try:
            self.root_fd = self._open_root(create)
        except BaseException:
            os.close(self.parent_fd)
            raise

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.root_fd is not None:
            os.close(self.root_fd)
        os.close(self.parent_fd)

    def _open_root(self, create: bool) -> int | None:
        if create:
            try:
                os.mkdir(self.root_name, RELEASE_DIR_MODE, dir_fd=self.parent_fd)
                os.chmod(self.root_name, RELEASE_DIR_MODE, dir_fd=self.parent_fd)  # the umask may narrow it
            except FileExistsError:
                pass
            except OSError as e:
                raise InstallError(f"cannot create the releases folder {self.root}: {e.strerror}") from e
        try:
            fd = os.open(self.root_name, DIR_FLAGS, dir_fd=self.parent_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise InstallError(
                f"{self.root} is not a folder (or is a symbolic link): s3deploy keeps the releases of "
                f"{self.destination} there; move it away"
            ) from e
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(fd)
            raise InstallError(
                f"{self.root} is not s3deploy's releases folder (owner uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):o}; expected uid {os.geteuid()}, writable by no one else): "
                "something else made it; move it away"
            )
        return fd

    def need_root(self) -> int:
        if self.root_fd is None:
            raise InstallError(f"{self.root} does not exist: no release of {self.destination} was prepared")
        return self.root_fd

    def link_target(self, release: str) -> str:
        """The link text D holds for ``release``: relative, so D works through any path to its parent."""
        return f"{self.root_name}/{release}"

    def read_destination(self) -> tuple[str, str | None]:
        """What D is: ("missing", None), ("ours", release name), ("link", its target) for a link s3deploy
        did not make, ("folder", None) or ("other", None). Never follows D."""
        try:
            st = os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return "missing", None
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(self.name, dir_fd=self.parent_fd)
            head, _, release = target.partition("/")
            if head == self.root_name and is_release_name(release):
                return "ours", release
            return "link", target
        return ("folder" if stat.S_ISDIR(st.st_mode) else "other"), None

    def release_path(self, release: str) -> Path:
        return Path(self.root) / release

    def release_of(self, release_dir: Path | str) -> str:
        """The name of ``release_dir`` when it is a release folder here; InstallError otherwise."""
        path = os.path.normpath(os.fspath(release_dir))
        parent, _, name = path.rpartition("/")
        if (
            parent != self.root
            or not is_release_name(name)
            or name.startswith(ASIDE_PREFIX)
            or not self.is_folder(name)
        ):
            raise InstallError(
                f"{path} is not a release folder of {self.destination} (expected a folder in {self.root})"
            )
        return name

    def aside_of(self, path: Path | str) -> str:
        """The name of ``path`` when it is something a switch moved aside here; InstallError otherwise."""
        parent, _, name = os.path.normpath(os.fspath(path)).rpartition("/")
        try:
            if parent != self.root or not name.startswith(ASIDE_PREFIX):
                raise FileNotFoundError(name)
            os.stat(name, dir_fd=self.need_root(), follow_symlinks=False)
        except FileNotFoundError as e:
            raise InstallError(f"{path} is not a folder moved aside from {self.destination}") from e
        return name

    def open_release(self, release_dir: Path | str) -> int:
        """A descriptor of the release folder ``release_dir`` (never through a link)."""
        return os.open(self.release_of(release_dir), DIR_FLAGS, dir_fd=self.need_root())

    def is_folder(self, release: str) -> bool:
        """True when ``release`` is a real folder (not a link) in the releases folder."""
        try:
            st = os.stat(release, dir_fd=self.need_root(), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return stat.S_ISDIR(st.st_mode)


def is_release_name(name: str) -> bool:
    """A name the releases folder may hold as a release (a deployment id) or a folder moved aside."""
    return (
        0 < len(name) <= 128
        and name[0].isalnum()
        and name.isascii()
        and all(c.isalnum() or c in "-_." for c in name)
    )


@contextlib.contextmanager
def failing(what: str) -> Iterator[None]:
    """Turn an OSError into an InstallError that says what was being done and on which path."""
    try:
        yield
    except OSError as e:
        names = " -> ".join(str(n) for n in (e.filename, e.filename2) if n)
        raise InstallError(f"{what}: {e.strerror or e}" + (f" ({names})" if names else "")) from e


def remove_tree(root_fd: int, name: str, where: str) -> None:
    """Delete ``name`` (in the releases folder ``root_fd``) and everything in it without following a link.

    Iterative, one descriptor per level; a folder deeper than MAX_REMOVE_DEPTH is first moved up into
    the releases folder (a ``.prune-`` name) and deleted from there. ``where`` names the releases folder
    in errors. Raises InstallError.
    """
    todo = [name]
    while todo:
        current = todo.pop()
        try:
            _remove_one(root_fd, current, todo)
        except OSError as e:
            raise InstallError(f"cannot delete {where}/{current}: {e.strerror} ({e.filename})") from e


def _remove_one(root_fd: int, name: str, todo: list[str]) -> None:
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=root_fd)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(name, dir_fd=root_fd)  # a link or a file: the entry itself goes, nothing behind it
        return
    # each frame: (descriptor, name in its parent, the parent's descriptor, sub-folders still to delete)
    stack: list[tuple[int, str, int, list[str]]] = [(fd, name, root_fd, _clear_files(fd))]
    try:
        while stack:
            fd, current, parent, pending = stack[-1]
            if not pending:
                stack.pop()
                os.close(fd)
                os.rmdir(current, dir_fd=parent)
                continue
            child = pending.pop()
            if len(stack) >= MAX_REMOVE_DEPTH:
                moved = unique(PRUNE_PREFIX)
                os.rename(child, moved, src_dir_fd=fd, dst_dir_fd=root_fd)
                todo.append(moved)
                continue
            try:
                child_fd = os.open(child, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                os.unlink(child, dir_fd=fd)  # it became a link or a file since it was listed
                continue
            stack.append((child_fd, child, fd, _clear_files(child_fd)))
    finally:
        for frame in stack:
            os.close(frame[0])


def _clear_files(fd: int) -> list[str]:
    """Unlink every entry of the open folder ``fd`` that is not a folder; return the folders' names."""
    with os.scandir(fd) as entries:
        listing = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    folders: list[str] = []
    for name, is_dir in listing:
        if is_dir:
            folders.append(name)
            continue
        try:
            os.unlink(name, dir_fd=fd)
        except IsADirectoryError:
            folders.append(name)  # it became a folder since it was listed
        except FileNotFoundError:
            pass  # someone else removed it (a release the application user can write to)
    return folders
