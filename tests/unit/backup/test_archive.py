"""The archive format: what a writer makes, a reader checks part by part, and every kind of
damage is refused with a reason."""

from __future__ import annotations

import json
import random

import pytest

from continuum.federation.distributed.backup import archive
from unit.backup import archives


def _read(data: bytes, expected: archive.Manifest | None = None, chunk: int = 997
          ) -> tuple[dict[str, bytes], archive.Manifest]:
    reader = archive.ArchiveReader(expected)
    parts: dict[str, bytearray] = {}
    for off in range(0, len(data), chunk):
        for ev in reader.feed(data[off:off + chunk]):
            if isinstance(ev, archive.PartStarted):
                parts[ev.name] = bytearray()
            else:
                parts[ev.name] += ev.data
    return {k: bytes(v) for k, v in parts.items()}, reader.finish()


def _offsets(data: bytes) -> dict[str, tuple[int, int]]:
    """Where each part's data payloads start and end in the archive (first and last byte)."""
    spans: dict[str, tuple[int, int]] = {}
    pos, current = archive.HEADER.size, None
    while pos < len(data):
        kind, length = archive.RECORD.unpack_from(data, pos)
        body = pos + archive.RECORD.size
        if kind == b"P":
            current = json.loads(data[body:body + length])["name"]
        elif kind == b"D" and current is not None:
            first, _ = spans.get(current, (body, 0))
            spans[current] = (first, body + length - 1)
        pos = body + length
    return spans


def test_parts_and_manifest_come_back_as_written_whatever_the_chunking() -> None:
    data, manifest = archives.build({"s1": {"a": 1}}, {f"k{i}": i for i in range(300)},
                                    chunk_rows=50)
    for chunk in (1, 7, 4096, len(data)):
        parts, got = _read(data, chunk=chunk)
        assert got == manifest
        assert [p.name for p in got.parts] == ["strong", "multimaster"]
        for p in got.parts:
            assert len(parts[p.name]) == p.size
    assert manifest.part("multimaster").items == 300


@pytest.mark.parametrize("part", ["strong", "multimaster"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_flipped_byte_in_a_part_is_refused_naming_the_part(part: str, where: str) -> None:
    data, manifest = archives.build({"s1": {"a": 1}, "s2": [1, 2]},
                                    {f"k{i}": {"v": i} for i in range(50)})
    first, last = _offsets(data)[part]
    at = {"first": first, "middle": (first + last) // 2, "last": last}[where]
    bad = bytearray(data)
    bad[at] ^= 0x40
    for expected in (manifest, None):  # against the stored manifest, or the embedded one
        with pytest.raises(archive.CorruptArchive, match=f"part '{part}' is corrupt"):
            _read(bytes(bad), expected)


def test_every_truncation_is_refused() -> None:
    data, manifest = archives.build({"s1": 1}, {"k": 2})
    for cut in range(len(data)):
        with pytest.raises(archive.BackupError):
            _read(data[:cut], manifest)


def test_random_damage_never_passes_and_never_escapes_as_another_error() -> None:
    data, manifest = archives.build({"s1": {"x": "y" * 100}}, {f"k{i}": i for i in range(40)})
    rng = random.Random(18)
    for _ in range(300):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            bad[rng.randrange(len(bad))] ^= rng.randint(1, 255)
        try:
            _, got = _read(bytes(bad), manifest)
        except archive.BackupError:
            continue
        # Only a change inside the manifest's JSON whitespace can read back equal, and the
        # archive's own checksum in the stored manifest catches that (restore.verify).
        assert got == manifest.embedded()


def test_bad_magic_an_unknown_record_and_data_after_the_manifest_are_refused() -> None:
    data, _ = archives.build({}, {})
    with pytest.raises(archive.CorruptArchive, match="magic"):
        _read(b"NOTABACK" + data[8:])
    with pytest.raises(archive.CorruptArchive, match="after the manifest"):
        _read(data + b"\x00")
    w = archive.ArchiveWriter()
    with pytest.raises(archive.CorruptArchive, match="unknown record"):
        _read(w.header() + b"Z\x00\x00\x00\x00")


def test_an_archive_of_a_newer_format_version_is_refused_as_such() -> None:
    data, manifest = archives.build({}, {})
    newer = archive.HEADER.pack(archive.MAGIC, 2, 0) + data[archive.HEADER.size:]
    with pytest.raises(archive.UnsupportedFormat, match="format version 2"):
        _read(newer)
    d = manifest.to_dict()
    d["format_version"] = 2
    with pytest.raises(archive.UnsupportedFormat, match="reads version"):
        archive.Manifest.from_dict(d)


def test_a_node_that_failed_mid_stream_is_reported() -> None:
    w = archive.ArchiveWriter()
    data = w.header() + w.start_part("strong") + archive.ArchiveWriter.failed("disk on fire")
    with pytest.raises(archive.BackupError, match="disk on fire"):
        _read(data)


def test_the_stored_manifest_round_trips_and_must_match_the_embedded_one() -> None:
    data, embedded = archives.build({"s": 1}, {"k": 1})
    stored = embedded.stored("nightly-1", len(data), "ab" * 32)
    back = archive.Manifest.from_json(stored.to_json())
    assert back == stored and back.embedded() == embedded
    other = archive.Manifest.from_dict({**embedded.to_dict(), "node_id": "node-9"})
    with pytest.raises(archive.CorruptArchive, match="differs from the stored"):
        _read(data, other.stored("x", 1, "ab" * 32))


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a" * 129, "x y"])
def test_backup_names_are_checked(name: str) -> None:
    with pytest.raises(archive.BackupError):
        archive.check_name(name)
