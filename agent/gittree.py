"""Reading commits of the fleet repository straight from the Git object store (no checkout).

The desired state is the overlay of the node's paths in one commit; the tree id of each
path tells cheaply whether a branch move touched this node. Everything here is local and
blocking (the caller runs it in a thread); a missing object is a :class:`SourceError`.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator

from dulwich.object_store import BaseObjectStore, DiskObjectStore
from dulwich.objects import Blob, Commit, ObjectID, ShaFile, Tree

from agent.blobsize import SizeBudget, blob_size
from agent.desired import (
    GIT_MODE_SUBMODULE,
    OPTIONS_FILE,
    DesiredFile,
    DesiredState,
    Options,
    merge_options,
    parse_options,
)
from agent.errors import SourceError


def find_commit(store: BaseObjectStore, sha: str) -> Commit | None:
    """Commit ``sha`` if the store holds it (anything else, or a malformed sha: None)."""
    if len(sha) not in (40, 64) or any(c not in "0123456789abcdef" for c in sha):
        return None
    try:
        obj = store[ObjectID(sha.encode("ascii"))]
    except KeyError:
        return None
    return obj if isinstance(obj, Commit) else None


def _commit(store: BaseObjectStore, sha: str) -> Commit:
    found = find_commit(store, sha)
    if found is None:
        raise SourceError(f"commit {sha[:12]} is not in the local Git cache (fetch it first)")
    return found


def _object(store: BaseObjectStore, sha: ObjectID, commit: str) -> ShaFile:
    try:
        return store[sha]
    except KeyError as err:
        raise SourceError(
            f"object {sha.decode()[:12]} of commit {commit[:12]} is missing from the Git cache"
        ) from err


def _lookup(
    store: BaseObjectStore, commit: str, tree: ObjectID, path: str
) -> tuple[int, ObjectID] | None:
    """(mode, sha) of ``path`` below ``tree``, or None if it does not exist."""
    mode, sha = stat.S_IFDIR, tree
    for name in path.split("/"):
        if not stat.S_ISDIR(mode):
            return None
        obj = _object(store, sha, commit)
        assert isinstance(obj, Tree)
        try:
            mode, sha = obj[name.encode("utf-8")]
        except KeyError:
            return None
    return mode, sha


def tree_ids(store: BaseObjectStore, commit: str, paths: Iterable[str]) -> dict[str, str | None]:
    """Per path: its tree id in ``commit``, None if absent."""
    root = _commit(store, commit).tree
    result: dict[str, str | None] = {}
    for path in paths:
        found = _lookup(store, commit, root, path)
        result[path] = found[1].decode("ascii") if found else None
    return result


def read_desired(
    store: DiskObjectStore, commit: str, paths: tuple[str, ...], budget: SizeBudget
) -> DesiredState:
    """The overlay of ``paths`` at ``commit`` (a later path wins file by file); a blob over
    ``budget`` refuses the commit before it is read into memory."""
    root = _commit(store, commit).tree
    files: dict[str, DesiredFile] = {}
    layers: list[Options] = []
    for origin in paths:
        found = _lookup(store, commit, root, origin)
        if found is None or not stat.S_ISDIR(found[0]):
            what = "does not exist" if found is None else "is not a directory"
            raise SourceError(f"path {origin!r} {what} in commit {commit[:12]}")
        for rel, mode, data in _walk(store, commit, origin, found[1], budget):
            if rel == OPTIONS_FILE:
                layers.append(parse_options(origin, data))
            else:
                files[rel] = DesiredFile(path=rel, data=data, git_mode=mode, origin=origin)
    return DesiredState(commit=commit, paths=paths, files=files, options=merge_options(layers))


def _walk(
    store: DiskObjectStore, commit: str, origin: str, tree: ObjectID, budget: SizeBudget
) -> Iterator[tuple[str, int, bytes]]:
    """(relative path, git mode, bytes) of every blob below ``tree``, within ``budget``."""
    pending: list[tuple[str, ObjectID]] = [("", tree)]
    while pending:
        prefix, sha = pending.pop()
        obj = _object(store, sha, commit)
        assert isinstance(obj, Tree)
        for entry in obj.iteritems():
            name = prefix + entry.path.decode("utf-8", "surrogateescape")
            if entry.mode == GIT_MODE_SUBMODULE:
                raise SourceError(
                    f"{origin}/{name} in commit {commit[:12]} is a submodule "
                    "(not supported; vendor its files instead)"
                )
            if stat.S_ISDIR(entry.mode):
                pending.append((name + "/", entry.sha))
                continue
            size = blob_size(store, entry.sha)
            if size is not None:  # a missing blob: _object names it
                budget.take(f"{origin}/{name}", size)
            blob = _object(store, entry.sha, commit)
            assert isinstance(blob, Blob)
            yield name, entry.mode, blob.as_raw_string()


def signed_payload(store: BaseObjectStore, commit: str) -> tuple[bytes, bytes | None]:
    """(commit bytes without the gpgsig header, signature or None): what git signs."""
    obj = _commit(store, commit)
    signature: bytes | None = obj.gpgsig
    if signature is None:
        return obj.as_raw_string(), None
    return obj.raw_without_sig(), signature


def ancestry(store: BaseObjectStore, ancestor: str, descendant: str) -> bool | None:
    """True/False if the local history decides it, None if a parent is missing."""
    if ancestor == descendant:
        return True
    target = ObjectID(ancestor.encode("ascii"))
    pending = [_commit(store, descendant)]
    seen: set[ObjectID] = set()
    incomplete = False
    while pending:
        for parent in pending.pop().parents:
            if parent == target:
                return True
            if parent in seen:
                continue
            seen.add(parent)
            try:
                obj = store[parent]
            except KeyError:
                incomplete = True  # beyond the shallow boundary
                continue
            if isinstance(obj, Commit):
                pending.append(obj)
    return None if incomplete else False


def snapshot_objects(store: BaseObjectStore, roots: Iterable[ObjectID]) -> set[ObjectID]:
    """The commits ``roots`` and every tree and blob of their snapshots (no history)."""
    into: set[ObjectID] = set()
    for root in roots:
        commit = store[root]
        assert isinstance(commit, Commit)
        into.update((root, commit.tree))
        pending = [commit.tree]
        while pending:
            tree = store[pending.pop()]
            assert isinstance(tree, Tree)
            for entry in tree.iteritems():
                if entry.mode == GIT_MODE_SUBMODULE or entry.sha in into:
                    continue
                into.add(entry.sha)
                if stat.S_ISDIR(entry.mode):
                    pending.append(entry.sha)
    return into
