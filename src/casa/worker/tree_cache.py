"""Trees kept open on Dask workers, so that a chunk does not deserialise its tree again.

coffea opens the file of every chunk anew and reads the ``TTree`` from it: the tree's
metadata (every branch, leaf and basket table) is deserialised in Python each time, and
each branch's interpretation is worked out again when NanoEvents builds its form. On the
bench's files that is about two thirds of a light query's chunk once its columns are in
the column cache (adl1: 22 ms a chunk, 7 ms with the tree kept).

With this plugin on the workers and :func:`tree_cache_options` in a run's uproot
options, the file is still opened for every chunk (so the storage checks the caller's
token on every chunk, and a file that is gone fails as before), but its ``TTree`` is
taken from a file the worker keeps open: the first chunk of a file on a worker reads the
tree there once, later chunks of the same file (same path, same ROOT UUID, same key) get
that tree, whose branches already know their interpretations. Baskets are then read
through the kept file. The kept files have no array cache (columns are the column
cache's business) and are closed when they fall out of the LRU and no chunk uses them
any more, or when the worker stops. A chunk that fails forgets its file's tree on that
worker (:func:`forget`), so that a retry opens everything afresh.

The hook is uproot's own ``custom_classes`` option: the class read for ``TTree`` is
:class:`KeptTTree`, which asks the worker's plugin. Anywhere else (no worker, no plugin,
a ``TTree`` read as part of another object) it reads the tree as uproot does.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

import uproot
import uproot.models.TTree
from distributed import WorkerPlugin

from casa.worker.plugins import install_worker_plugin

#: The plugin's name on a worker.
PLUGIN_NAME = "casa-tree-cache"
#: Files a worker keeps open.
DEFAULT_FILES = 16


class TreeCache(WorkerPlugin):
    """The worker's kept files and their trees, by file path, ROOT UUID and key."""

    name = PLUGIN_NAME
    #: Registering it again (every run on a long-lived cluster does) keeps the trees.
    idempotent = True

    def __init__(self, files: int = DEFAULT_FILES):
        if files < 1:
            raise ValueError(f"files must be at least 1, got {files}")
        self.files = files

    def setup(self, worker: Any) -> None:
        """Start empty."""
        self.lock = threading.Lock()
        self.trees: OrderedDict[tuple, Any] = OrderedDict()
        self.opened = self.hits = 0
        #: Bytes requested through files no longer kept.
        self.released_bytes = 0

    def teardown(self, worker: Any) -> None:
        """Close every kept file."""
        with self.lock:
            trees, self.trees = list(self.trees.values()), OrderedDict()
        for tree in trees:
            tree.file.close()

    def tree(self, file: Any, key: Any) -> Any:
        """The tree ``key`` of ``file`` (a file just opened for a chunk), from a kept file."""
        ident = (str(file.file_path), file.uuid, key.cache_key)
        with self.lock:
            tree = self.trees.get(ident)
            if tree is not None and not tree.file.closed:
                self.trees.move_to_end(ident)
                self.hits += 1
                return tree
        kept = uproot.reading.ReadOnlyFile(
            file.file_path,
            object_cache=None,
            array_cache=None,
            decompression_executor=file.decompression_executor,
            interpretation_executor=file.interpretation_executor,
            **file.options,
        )
        _count_in_thread(kept.source)
        try:
            tree = kept.root_directory[key.object_path]
        except BaseException:
            kept.close()
            raise
        with self.lock:
            self.opened += 1
            kept_already = self.trees.get(ident)  # another thread was quicker
            if kept_already is None or kept_already.file.closed:
                self.trees[ident] = kept_already = tree
                while len(self.trees) > self.files:
                    self._release(self.trees.popitem(last=False)[1])
        if kept_already is not tree:
            kept.close()
        return kept_already

    def _release(self, tree: Any) -> None:
        """Stop keeping ``tree``: its file closes once no chunk holds the tree any more."""
        self.released_bytes += tree.file.source.num_requested_bytes
        weakref.finalize(tree, tree.file.source.close)

    def forget(self, file_path: str) -> None:
        """Stop keeping the trees of ``file_path`` (after a chunk of it failed)."""
        with self.lock:
            for ident in [i for i in self.trees if i[0] == file_path]:
                self._release(self.trees.pop(ident))

    def requested_bytes(self) -> int:
        """Bytes read through kept files since the worker started."""
        with self.lock:
            kept = sum(t.file.source.num_requested_bytes for t in self.trees.values())
            return self.released_bytes + kept

    def stats(self) -> dict[str, int]:
        """Trees kept, files opened for trees, hits and bytes read through kept files."""
        with self.lock:
            trees, opened, hits = len(self.trees), self.opened, self.hits
        return {"trees": trees, "opened": opened, "hits": hits, "bytes": self.requested_bytes()}


#: Bytes each thread requested through kept files since it last took them.
_thread_bytes = threading.local()


def _count_in_thread(source: Any) -> None:
    """Make a kept file's source also count what it is asked for in the asking thread.

    uproot counts a source's requested bytes for the whole file (every chunk of it that
    reads through the kept file); a chunk's own share is what its thread asked for.
    """
    # What opening the file read already (its header and top directory).
    _thread_bytes.n = getattr(_thread_bytes, "n", 0) + source.num_requested_bytes
    chunk, chunks = source.chunk, source.chunks

    def counted_chunk(start, stop):
        _thread_bytes.n = getattr(_thread_bytes, "n", 0) + (stop - start)
        return chunk(start, stop)

    def counted_chunks(ranges, notifications):
        _thread_bytes.n = getattr(_thread_bytes, "n", 0) + sum(b - a for a, b in ranges)
        return chunks(ranges, notifications)

    source.chunk, source.chunks = counted_chunk, counted_chunks


def take_thread_bytes() -> int:
    """Bytes this thread read through kept files since it last called this (then zero).

    A chunk calls it once it is done: the tree it took (read once per file and worker) and
    the baskets it read through the kept file, which coffea's metrics do not see.
    """
    n = getattr(_thread_bytes, "n", 0)
    _thread_bytes.n = 0
    return n


def _worker_plugin() -> TreeCache | None:
    try:
        from distributed import get_worker

        plugin = get_worker().plugins.get(PLUGIN_NAME)
    except ValueError:  # not on a worker
        return None
    return plugin if isinstance(plugin, TreeCache) else None


class KeptTTree(uproot.models.TTree.Model_TTree):
    """uproot's ``TTree`` class, except that a tree read from a key comes from the worker's
    kept files (:class:`TreeCache`) when the worker has them."""

    @classmethod
    def read(cls, chunk, cursor, context, file, selffile, parent, concrete=None):
        """The kept tree for a top-level key on a worker with the plugin; uproot's otherwise."""
        plugin = _worker_plugin() if concrete is None else None
        if plugin is None or not isinstance(parent, uproot.reading.ReadOnlyKey):
            return uproot.models.TTree.Model_TTree.read(
                chunk, cursor, context, file, selffile, parent, concrete=concrete
            )
        return plugin.tree(file, parent)


class _KeptTreeClasses(dict):
    """uproot's classes with ``TTree`` read by :class:`KeptTTree`, built anew where unpickled
    (so a task carries the name of this class, not uproot's whole class table)."""

    def __init__(self) -> None:
        super().__init__(uproot.classes)
        self["TTree"] = KeptTTree

    def __reduce__(self):
        return (_KeptTreeClasses, ())


def tree_cache_options() -> dict[str, Any]:
    """uproot options that make a chunk take its tree from the worker's kept files."""
    return {"custom_classes": _KeptTreeClasses()}


def register_tree_cache(client: Any, files: int = DEFAULT_FILES) -> bool:
    """Install the plugin on the cluster's workers (and on workers that join later).

    Returns False when the workers cannot load it (another casa in the workers'
    environment): runs then read every chunk's tree as coffea does.
    """
    return install_worker_plugin(client, TreeCache(files))


def _worker_stats(dask_worker: Any) -> dict[str, int] | None:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    return plugin.stats() if isinstance(plugin, TreeCache) else None


def tree_cache_stats(client: Any) -> dict[str, dict[str, int] | None]:
    """Each worker's figures by address (None on a worker without the plugin)."""
    return client.run(_worker_stats)


def forget(file_path: str) -> None:
    """On a worker: stop keeping the trees of ``file_path``; nothing elsewhere."""
    plugin = _worker_plugin()
    if plugin is not None:
        plugin.forget(file_path)
