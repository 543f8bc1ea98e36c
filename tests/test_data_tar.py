"""The fast tar reader against Python's tarfile: real shards, every tar dialect tarfile writes, and
damaged archives (which tarfile's stream mode partly accepts, and the reader must not)."""

import gzip
import io
import os
import tarfile
import zlib

import numpy as np
import pytest

from noisecraft.data import tar
from noisecraft.data.tar import TarFormatError, header_checksum_ok, iter_members


def tarfile_members(path):
    """What tarfile reads: (name, bytes) of each regular file (webdataset's selection)."""
    with tarfile.open(path) as t:
        return [(m.name, t.extractfile(m).read()) for m in t if m.isreg()]


def build(path, entries, fmt=tarfile.PAX_FORMAT, pax_headers=None):
    """entries: (name, bytes) files, (name, "dir") directories, (name, "->target") symlinks."""
    mode = "w:gz" if str(path).endswith(".gz") else "w"
    with tarfile.open(path, mode, format=fmt, pax_headers=pax_headers or {}) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:]
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return str(path)


def payload(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# Every shape of entry the reader must handle: sizes around block edges, USTAR prefix names,
# names only GNU long-name or pax headers can hold, non-ASCII names, and non-files to skip.
ENTRIES = [
    ("a.jpg", payload(0)), ("a.cls", b"7"), ("b.txt", payload(511, 1)), ("b.png", payload(512, 2)),
    ("sub", "dir"), ("sub/c.json", payload(513, 3)), ("link.txt", "->a.cls"),
    ("p" * 90 + "/" + "q" * 90 + ".bin", payload(1500, 4)),          # ustar: prefix + name
    ("long/" + "r" * 150 + ".seg.png", payload(4000, 5)),             # > 100 chars in the base name
    ("ünïcødé_ключ.txt", "fünf €".encode()),
    ("big.npy", payload(300_000, 6)),
]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_every_tar_dialect_reads_like_tarfile(tmp_path, monkeypatch, fmt, suffix):
    # Small chunks, so that headers and members straddle the reader's buffer edges.
    monkeypatch.setattr(tar, "READ_SIZE", 1000)
    monkeypatch.setattr(tar, "MAX_OUTPUT", 777)
    entries = ENTRIES if fmt != tarfile.USTAR_FORMAT else [
        e for e in ENTRIES if len(e[0].encode()) <= 100 or e[0].startswith("p")]
    path = build(tmp_path / f"x{suffix}", entries, fmt)
    expected = tarfile_members(path)
    assert len(expected) == sum(isinstance(d, bytes) for _, d in entries)  # the build worked
    assert list(iter_members(path)) == expected


def test_pax_global_header_and_base256_size_read_like_tarfile(tmp_path):
    path = build(tmp_path / "g.tar", ENTRIES[:4], pax_headers={"comment": "global"})
    assert list(iter_members(path)) == tarfile_members(path)
    # A GNU base-256 size field (tarfile writes one only past 8 GiB): rewrite a.cls's header by hand.
    raw = bytearray(open(build(tmp_path / "b.tar", ENTRIES[:2], tarfile.USTAR_FORMAT), "rb").read())
    header = raw[512:1024]
    header[124:136] = b"\x80" + (1).to_bytes(11, "big")
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    raw[512:1024] = header
    (tmp_path / "b.tar").write_bytes(bytes(raw))
    assert list(iter_members(str(tmp_path / "b.tar"))) == tarfile_members(str(tmp_path / "b.tar"))
    assert list(iter_members(str(tmp_path / "b.tar")))[1] == ("a.cls", b"7")


def test_real_shards_read_like_tarfile(shared_data):
    for name in ("cifar10/train-0000.tar.gz", "twemoji64/twemoji-0003.tar.gz"):
        path = os.path.join(shared_data, name)
        assert list(iter_members(path)) == tarfile_members(path), name


def test_checksum_sum_by_adler32_equals_the_byte_sum():
    rng = np.random.default_rng(0)
    blocks = [bytes(512), b"\xff" * 512, *(rng.integers(0, 256, 512, np.uint8).tobytes()
                                           for _ in range(200))]
    for block in blocks:
        # POSIX: the sum of the header's bytes with the chksum field read as 8 spaces; old Sun
        # tars summed them as signed chars
        unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
        signed = unsigned - 256 * sum(b >= 128 for b in block[:148] + block[156:])
        for stored in (unsigned, signed):
            assert header_checksum_ok(block[:148] + b"%07o\0" % stored + block[156:])
        assert not header_checksum_ok(block[:148] + b"%07o\0" % (unsigned + 1) + block[156:])


def test_every_truncation_of_a_plain_tar_is_caught_or_harmless(tmp_path):
    path = build(tmp_path / "t.tar", ENTRIES[:6], tarfile.USTAR_FORMAT)
    raw = open(path, "rb").read()
    expected = tarfile_members(path)
    end_marker = raw.rindex(ENTRIES[5][1]) + len(ENTRIES[5][1]) + (-len(ENTRIES[5][1]) % 512)
    cut_path = tmp_path / "cut.tar"
    for cut in [*range(0, len(raw), 512), *range(7, len(raw), 331)]:
        cut_path.write_bytes(raw[:cut])
        got = []
        try:
            for member in iter_members(str(cut_path)):
                got.append(member)
        except TarFormatError as e:
            assert "truncated" in str(e), (cut, e)
            assert cut < end_marker + 512, cut       # only a cut before the end marker is an error
            assert got == expected[:len(got)]        # what came before the cut is intact
        else:
            assert cut >= end_marker + 512 and got == expected, cut


def test_every_truncation_of_a_gzip_shard_is_caught(tmp_path):
    path = build(tmp_path / "t.tar.gz", ENTRIES[:6])
    raw = open(path, "rb").read()
    cut_path = tmp_path / "cut.tar.gz"
    for cut in range(10, len(raw)):  # the trailer (CRC-32, length) is part of the stream too
        cut_path.write_bytes(raw[:cut])
        with pytest.raises(TarFormatError, match="truncated"):
            list(iter_members(str(cut_path)))


def test_damage_is_caught(tmp_path):
    path = build(tmp_path / "d.tar", ENTRIES[:4], tarfile.USTAR_FORMAT)
    raw = bytearray(open(path, "rb").read())
    raw[1536 + 2] ^= 0x20  # a name byte in the third header (b.txt; a.jpg is empty, a.cls 1 block)
    (tmp_path / "d.tar").write_bytes(bytes(raw))
    # tarfile's stream mode stops quietly at the bad header; this reader names it
    with tarfile.open(tmp_path / "d.tar", "r|") as t:
        assert len([m for m in t]) == 2
    with pytest.raises(TarFormatError, match="bad checksum in the tar header at byte 1536"):
        list(iter_members(str(tmp_path / "d.tar")))
    gz = bytearray(gzip.compress(bytes(open(path, "rb").read())))
    gz[len(gz) // 2] ^= 0x01
    (tmp_path / "d.tar.gz").write_bytes(bytes(gz))
    with pytest.raises(TarFormatError, match="corrupt gzip data|bad checksum"):
        list(iter_members(str(tmp_path / "d.tar.gz")))
    gz[len(gz) // 2] ^= 0x01
    gz[-6] ^= 0x01  # the stored CRC-32
    (tmp_path / "d.tar.gz").write_bytes(bytes(gz))
    with pytest.raises(TarFormatError, match="corrupt gzip data.*(check|crc)"):
        list(iter_members(str(tmp_path / "d.tar.gz")))


def test_gzip_members_padding_and_trailing_garbage(tmp_path):
    plain = open(build(tmp_path / "p.tar", ENTRIES[:4], tarfile.USTAR_FORMAT), "rb").read()
    expected = tarfile_members(str(tmp_path / "p.tar"))
    half = len(plain) // 2
    # gzip -c a >> b: two gzip members form one stream; zero padding after a member is allowed
    (tmp_path / "m.tar.gz").write_bytes(gzip.compress(plain[:half]) + gzip.compress(plain[half:])
                                        + bytes(100))
    assert list(iter_members(str(tmp_path / "m.tar.gz"))) == expected
    (tmp_path / "j.tar.gz").write_bytes(gzip.compress(plain) + b"junk")
    with pytest.raises(TarFormatError, match="not gzip after the gzip stream"):
        list(iter_members(str(tmp_path / "j.tar.gz")))


def test_unsupported_and_malformed_headers(tmp_path):
    def one_header(**fields):
        info = tarfile.TarInfo("s.bin")
        info.size = 4
        for k, v in fields.items():
            setattr(info, k, v)
        return info.tobuf(tarfile.GNU_FORMAT) + b"data" + bytes(508) + bytes(1024)

    (tmp_path / "s.tar").write_bytes(one_header(type=tarfile.GNUTYPE_SPARSE))
    with pytest.raises(TarFormatError, match="GNU sparse"):
        list(iter_members(str(tmp_path / "s.tar")))
    raw = bytearray(one_header())
    raw[124:136] = b"12x4567\0    "  # not octal
    raw[148:156] = b"        "
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    (tmp_path / "n.tar").write_bytes(bytes(raw))
    with pytest.raises(TarFormatError, match="bad size field"):
        list(iter_members(str(tmp_path / "n.tar")))
    assert zlib.decompress(gzip.compress(b"x"), 31) == b"x"  # the wbits the reader relies on
