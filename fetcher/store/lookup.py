"""The good copy an earlier run left for a request: what ``DiskStore.prior`` answers.

A copy counts only for the request that stored it (the same method and URL) and only
while its file is there. A ``--skip-existing`` run asks for a million of them, so
``look_ahead`` finds a chunk of rows' copies in one query and their files in one
listing of each folder.

An output directory whose index notes no copy when the lookups start (a first run) has
no good copy for any row: nothing is looked up, not even a file's existence (a stat a
row). The copies a run stores are not its own rows' prior copies: no two rows of a job
store to one path, and a crawl fetches each URL once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from fetcher.models import PriorCopy, Request
from fetcher.store.files import files_in
from fetcher.store.index import CopyRow, Index
from fetcher.store.layout import head_meta_path, request_path

__all__ = ["PriorCopies"]


class PriorCopies:
    """Looks up the copies in the output directory ``root`` noted by ``index``."""

    def __init__(self, root: str, index: Index) -> None:
        self.root, self.index = root, index
        self._none = not index.has_copies()  # a first run: no row has a good copy
        self._ahead: dict[str, CopyRow | None] = {}  # path -> copies row (look_ahead)
        self._listed: tuple[str | None, set[str] | None] = (None, None)  # folder, its files

    def prior(self, request: Request) -> PriorCopy | None:
        """The copy an earlier run stored at ``request``'s path for the same method and
        URL, if it still exists."""
        # A POST's answer at a GET's path is no good copy of the GET (a HEAD stores none).
        if self._none:
            return None
        path = request_path(request)
        if path in self._ahead:  # looked up, its file seen, by look_ahead
            row = self._ahead.pop(path)
        elif os.path.isfile(f"{self.root}/{path}"):  # a stat is cheaper than a query: a
            row = self.index.copy_at(path)  # new row (no file) costs 1.5 us, not 22
        else:
            row = None
        if row is None or row[4] != request.safe_url or row[5] != request.method:
            return None
        return PriorCopy(path=path, etag=row[0], last_modified=row[1], size=row[2], sha256=row[3])

    def look_ahead(self, requests: Sequence[Request]) -> None:
        """Find the good copies of the next rows in one query (a million lookups one by
        one cost more than the rest of a ``--skip-existing`` run); ``prior`` takes them
        from here. Only for rows whose paths no other row stores to."""
        if self._none:
            return
        paths = [request_path(request) for request in requests if request.invalid is None]
        found = self.index.copies_at(paths)
        ahead: dict[str, CopyRow | None] = {}
        for path in paths:
            row = found.get(path)
            ahead[path] = row if row is not None and self._is_file(path) else None
        self._ahead = ahead

    def _is_file(self, path: str) -> bool:
        """``os.path.isfile`` from one listing of the folder for the many rows in it."""
        folder, _, name = path.rpartition("/")
        if folder != self._listed[0]:
            self._listed = (folder, files_in(f"{self.root}/{folder}"))
        names = self._listed[1]
        if names is None:  # a folder too big to hold its listing
            return os.path.isfile(f"{self.root}/{path}")
        return name in names

    def head_sidecar(self, request: Request) -> str | None:
        """The sidecar an earlier HEAD of ``request``'s URL left, if it is there."""
        path = head_meta_path(request_path(request))
        return path if os.path.isfile(f"{self.root}/{path}") else None
