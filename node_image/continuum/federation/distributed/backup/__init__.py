"""Backups: a consistent copy of a cluster taken online, and its restore into a new cluster.

* ``archive``  the archive format and its manifest (pure: bytes in, events out);
* ``source``   the node side: ``POST /v1/backup`` streams an archive of the strong store
  as of a committed Raft index plus this node's multi-master store;
* ``targets``  where backups live: a directory, or S3-compatible object storage
  (``s3``, whose client is imported only when such a target is used);
* ``restore``  checks and writes a node's data directory from a backup;
* ``commands`` ``backup create|list|verify`` and ``restore`` for the CLI.

A backup named NAME at a target is two objects, ``NAME/archive`` and ``NAME/manifest.json``;
the manifest is written last, once the archive is stored and checked, so a backup without
a valid manifest never counts as one. Nothing here is imported by a node that does not
back up, except ``source`` (no third-party dependency).
"""
