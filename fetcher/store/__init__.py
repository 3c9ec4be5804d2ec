"""Stage 3: the output directory. Bodies and sidecars, the manifest, run records, the lock.

The package, one idea a module:

- ``layout``: the names of an output directory (drawn in its docstring) and where each
  row's files go;
- ``files``: temp files, the one atomic writer, the lock, folder listings;
- ``records``: what is on disk as types (``ManifestRecord``, ``Sidecar``); ``runs``: a
  run's record (``RunRecord``) and what a store notes of its runs;
- ``index``: the SQLite cache of the above; with ``rebuild`` (makes it again from the
  files) and ``view`` (its read side, for ``fetch ls/show/stats``), the only code that
  knows SQL;
- ``sink``: a body streamed to temp files and staged (step 1 of the crash protocol);
- ``place``: staged copies renamed into place (step 3), never over another URL's file;
- ``manifest``: the manifest file, appended to a batch at a time;
- ``recovery``: what the next open does about a crash;
- ``lookup``: the good copy an earlier run left for a request;
- ``disk``: ``DiskStore``, the facade a run uses, whose docstring holds the crash
  protocol; ``protocol``: ``Store``, what the runner needs of it;
- ``part`` and ``merge``: a sharded run's workers each write a part (``PartStore``),
  which the coordinator merges into the directory.
"""

from fetcher.store.disk import DiskStore
from fetcher.store.files import write_atomic
from fetcher.store.index import (
    BUSY_MS,
    LATEST_COLUMNS,
    LATEST_SCHEMA,
    SCHEMA_VERSION,
    latest_row,
    latest_upsert,
)
from fetcher.store.layout import (
    INDEX,
    MANIFEST,
    RUNS_DIR,
    STATE_DIR,
    add_request,
    path_collisions,
    request_path,
)
from fetcher.store.protocol import Store
from fetcher.store.rebuild import Reindexed
from fetcher.store.records import (
    ManifestRecord,
    Sidecar,
    manifest_record,
    read_manifest,
    read_records,
    sidecar,
)
from fetcher.store.runs import RunRecord, read_runs

__all__ = [
    "BUSY_MS",
    "INDEX",
    "LATEST_COLUMNS",
    "LATEST_SCHEMA",
    "MANIFEST",
    "RUNS_DIR",
    "SCHEMA_VERSION",
    "STATE_DIR",
    "DiskStore",
    "ManifestRecord",
    "Reindexed",
    "RunRecord",
    "Sidecar",
    "Store",
    "add_request",
    "latest_row",
    "latest_upsert",
    "manifest_record",
    "path_collisions",
    "read_manifest",
    "read_records",
    "read_runs",
    "request_path",
    "sidecar",
    "write_atomic",
]
