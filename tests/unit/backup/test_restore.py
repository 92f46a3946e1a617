"""Verify and restore from a directory target: what a restored data directory holds, and
every refusal (corrupt, truncated, no manifest, newer format, another cluster's data, a
directory that is not empty), each with nothing changed."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from continuum.federation.distributed import cli, consensus, raft_storage, replication, statemachine
from continuum.federation.distributed.backup import archive, restore, targets
from continuum.federation.distributed.core.raft import raft_node as rnode
from unit.backup import archives

STRONG = {f"s{i}": {"n": i, "tags": ["a", "b"]} for i in range(20)}
MM = {f"e{i}": {"v": "x" * i} for i in range(30)}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


async def _restore(root: Path, name: str, data_dir: Path) -> restore.Restored:
    return await restore.restore(targets.DirectoryTarget(root), name, data_dir, "node-7",
                                 "127.0.0.7:7000")


async def test_a_restored_data_dir_is_a_one_voter_cluster_holding_both_stores(
        tmp_path: Path) -> None:
    m = await archives.store(tmp_path / "bk", "b1", STRONG, MM)
    data = tmp_path / "nodes" / "node-7"
    r = await _restore(tmp_path / "bk", "b1", data)
    assert not r.already and (r.contents.strong_concepts, r.contents.multimaster_keys) == (20, 30)
    assert json.loads((data / restore.MARKER).read_text())["backup_id"] == m.backup_id
    assert [p for p in os.listdir(data.parent) if p.startswith(".")] == []  # no staging left

    # The Raft state starts as the sole voter, at the backup's index, with its state machine.
    applied: list[Any] = []
    sm = statemachine.FederationStateMachine(lambda c: None, dict, lambda s: None)
    raft = consensus.RaftConsensus("node-7", [], storage_path=data / "raft", join=True,
                                   election_timeout_ms=(50, 100), heartbeat_interval_ms=10)
    raft.register_apply_callback(applied.append)
    raft.register_snapshot_callbacks(sm.snapshot, sm.restore)
    await raft.start()
    try:
        assert raft.is_leader and [x["id"] for x in raft.members()] == ["node-7"]
        assert raft.members()[0]["address"] == "127.0.0.7:7000"
        assert raft.get_stats()["snapshot_index"] == 42
        assert {c: sm.concepts.get(c) for c in STRONG} == STRONG
        assert sm.identity == {"id": archives.CLUSTER_ID, "name": "src"}
        assert await raft.append_entry({"type": "noop"})  # it commits alone
        _, snap, _ = raft_storage.read_durable(raft._store, "node-7")  # type: ignore[arg-type]
        assert snap is not None and snap.config.voters == {"node-7"}  # old members are gone
        # Retries stay once-only.
        assert rnode.unpack_snapshot(snap.data)[1].rows() == [["req-1", 7]]
    finally:
        await raft.stop()
    repl = replication.MultiMasterReplicator("node-7", storage_path=data / "replication")
    try:
        assert {k: await repl.read(k) for k in MM} == MM
    finally:
        await repl.stop()


async def test_restoring_again_into_the_same_directory_changes_nothing(tmp_path: Path) -> None:
    await archives.store(tmp_path / "bk", "b1", STRONG, MM)
    data = tmp_path / "node"
    await _restore(tmp_path / "bk", "b1", data)
    (data / "written-after").write_text("the node ran")
    again = await _restore(tmp_path / "bk", "b1", data)
    assert again.already and (data / "written-after").exists()


def _damage(root: Path, name: str, how: str) -> None:
    path = root / name / targets.ARCHIVE
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "manifest":
        (root / name / targets.MANIFEST).unlink()
        return
    else:  # flip a byte in a part's data
        needle = b"e17" if how == "multimaster" else b"s13"
        data[data.index(needle) + 1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("how", "why"), [
    ("strong", "part 'strong' is corrupt"),
    ("multimaster", "part 'multimaster' is corrupt"),
    ("truncate", "truncated|corrupt"),
    ("manifest", "incomplete or failed backup"),
])
async def test_a_damaged_backup_is_refused_and_nothing_is_written(
        tmp_path: Path, how: str, why: str) -> None:
    await archives.store(tmp_path / "bk", "b1", STRONG, MM)
    _damage(tmp_path / "bk", "b1", how)
    target = targets.DirectoryTarget(tmp_path / "bk")
    with pytest.raises(archive.BackupError, match=why):
        await restore.verify(target, "b1")
    before = _tree(tmp_path / "nodes")
    with pytest.raises(archive.BackupError, match=why):
        await _restore(tmp_path / "bk", "b1", tmp_path / "nodes" / "node-7")
    assert _tree(tmp_path / "nodes") == before  # no data dir, no staging directory


async def test_a_backup_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    await archives.store(tmp_path / "bk", "b1", STRONG, MM)
    path = tmp_path / "bk" / "b1" / targets.MANIFEST
    path.write_text(path.read_text().replace('"format_version": 1', '"format_version": 9'))
    with pytest.raises(archive.UnsupportedFormat, match="version 9"):
        await _restore(tmp_path / "bk", "b1", tmp_path / "node")
    assert not (tmp_path / "node").exists()


async def test_another_clusters_data_dir_and_a_non_empty_dir_are_refused_unchanged(
        tmp_path: Path) -> None:
    await archives.store(tmp_path / "bk", "ours", STRONG, MM)
    await archives.store(tmp_path / "bk", "theirs", {"t": 1}, {}, cluster_id="f" * 32)
    await archives.store(tmp_path / "bk", "ours-later", {"x": 2}, {}, index=50)
    theirs = tmp_path / "theirs"
    await _restore(tmp_path / "bk", "theirs", theirs)
    before = _tree(theirs)
    with pytest.raises(archive.BackupError, match=r"another cluster .* id f{32}"):
        await _restore(tmp_path / "bk", "ours", theirs)
    assert _tree(theirs) == before
    ours = tmp_path / "ours"
    await _restore(tmp_path / "bk", "ours", ours)
    with pytest.raises(archive.BackupError, match="not empty: it holds a node of this backup"):
        await _restore(tmp_path / "bk", "ours-later", ours)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("keep me")
    with pytest.raises(archive.BackupError, match="not empty"):
        await _restore(tmp_path / "bk", "ours", stray)
    assert _tree(stray) == ["notes.txt"]


async def test_the_cli_lists_verifies_and_restores_and_reports_incomplete_backups(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bk = tmp_path / "bk"
    await archives.store(bk, "nightly-1", STRONG, MM)
    await archives.store(bk, "nightly-2", STRONG, MM, index=77)
    _damage(bk, "nightly-2", "manifest")
    loop = asyncio.get_running_loop()

    async def run(*argv: str) -> tuple[int, str, str]:
        rc = await loop.run_in_executor(None, cli.main, list(argv))
        out = capsys.readouterr()
        return rc, out.out, out.err

    rc, out, err = await run("backup", "list", str(bk))
    assert rc == 0 and "nightly-1" in out and "nightly-2" not in out
    assert "ignored nightly-2: an incomplete or failed backup" in err
    rc, out, _ = await run("backup", "verify", f"{bk}/nightly-1")
    assert rc == 0 and "ok, every checksum matches" in out and "20 strong concepts" in out
    rc, _, err = await run("backup", "verify", f"file://{bk}/nightly-2")
    assert rc == 1 and err.startswith("error: ") and "no manifest" in err
    data = tmp_path / "node"
    rc, out, _ = await run("restore", "--from", f"{bk}/nightly-1", "--data-dir", str(data),
                           "--node-id", "node-1", "--address", "127.0.0.1:7000")
    assert rc == 0 and "sole voter of a new cluster" in out
    rc, _, err = await run("restore", "--from", f"{bk}/nightly-1", "--data-dir",
                           str(tmp_path / "other"), "--node-id", "node-1", "--address", "nope")
    assert rc == 1 and "error:" in err and not (tmp_path / "other").exists()


async def test_a_volume_root_is_restored_in_place_and_an_interrupted_move_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PVC mounted at the data directory: nothing can be renamed over it and its parent
    may be read-only, so the restore stages inside it; a fresh volume's lost+found is not
    data. A restore stopped while moving its entries up finishes when run again."""
    m = await archives.store(tmp_path / "bk", "b1", STRONG, MM)
    volume = tmp_path / "pvc"
    (volume / "lost+found").mkdir(parents=True)
    parent_before = sorted(os.listdir(tmp_path))
    r = await _restore(tmp_path / "bk", "b1", volume)
    assert not r.already and r.contents.strong_concepts == len(STRONG)
    assert sorted(os.listdir(tmp_path)) == parent_before  # nothing written beside it
    assert sorted(os.listdir(volume)) == sorted(
        ["lost+found", restore.MARKER, "raft", "replication"])
    assert json.loads((volume / restore.MARKER).read_text())["backup_id"] == m.backup_id
    assert (await _restore(tmp_path / "bk", "b1", volume)).already

    # Stop a second in-place restore after its first entry moved up.
    other = tmp_path / "pvc2"
    other.mkdir()
    real_replace = os.replace
    moved: list[str] = []

    def replace_once(src: Any, dst: Any) -> None:
        if Path(src).parent.name.startswith(restore.STAGING_PREFIX) and moved:
            raise OSError("the pod was killed")
        moved.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(restore.os, "replace", replace_once)
    with pytest.raises(OSError, match="killed"):
        await _restore(tmp_path / "bk", "b1", other)
    monkeypatch.setattr(restore.os, "replace", real_replace)
    # A complete staging folder is left, with the marker: the next run finishes the move.
    (left,) = [p for p in os.listdir(other) if p.startswith(restore.STAGING_PREFIX)]
    assert (other / left / restore.MARKER).exists() and len(moved) == 1
    again = await _restore(tmp_path / "bk", "b1", other)
    assert again.already
    assert sorted(os.listdir(other)) == sorted([restore.MARKER, "raft", "replication"])


async def test_an_incomplete_staging_folder_in_a_volume_is_discarded(tmp_path: Path) -> None:
    await archives.store(tmp_path / "bk", "b1", STRONG, MM)
    volume = tmp_path / "pvc"
    (volume / f"{restore.STAGING_PREFIX}dead" / "raft").mkdir(parents=True)
    r = await _restore(tmp_path / "bk", "b1", volume)
    assert not r.already
    assert sorted(os.listdir(volume)) == sorted([restore.MARKER, "raft", "replication"])


async def test_the_cli_deletes_backups_manifest_first_and_tolerates_absent_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bk = tmp_path / "bk"
    await archives.store(bk, "old-1", STRONG, MM)
    await archives.store(bk, "keep", STRONG, MM)
    loop = asyncio.get_running_loop()
    rc = await loop.run_in_executor(None, cli.main, [
        "backup", "delete", f"{bk}/old-1", f"file://{bk}/never-was"])
    out = capsys.readouterr().out
    assert rc == 0 and f"{bk}/old-1: deleted" in out and "never-was: not there" in out
    assert sorted(os.listdir(bk)) == ["keep"]
    rc = await loop.run_in_executor(None, cli.main, ["backup", "delete", f"{bk}/Bad name"])
    assert rc == 1 and "backup name" in capsys.readouterr().err
