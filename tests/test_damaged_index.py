"""A damaged shard index (``.idx``) or checksum sidecar is one ValueError naming the file (and the line) when the
shard is opened: by IndexedShard, by both loaders at start-up, by ``avmae-shard verify`` (a problem line). Never an
IndexError, an int() or UnicodeDecodeError naming no file, nor an OSError or OverflowError from os.pread once
training reads the sample a negative or huge size describes. A list file's bad cells and bytes name file and line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from avmae.cli.shard import main as shard_main
from avmae.data.config import DataConfig
from avmae.data.faults import SampleError
from avmae.data.loader import build_loader
from avmae.data.tar_reader import IndexedShard
from avmae.shard.checking.verify import verify
from avmae.shard.inputs.lists import ListFormatError, detect_format, read_list
from avmae.shard.shard_tar import MAX_MEMBER_SIZE, Member, index_text, parse_index

FIRST = "train-000000"


def _fields(change):
    """A damage of the index's first sample line, given as ``change(fields)`` on its split fields."""
    def damage(text: str) -> str:
        lines = text.splitlines()
        fields = lines[1].split()
        change(fields)
        lines[1] = " ".join(fields)
        return "\n".join(lines) + "\n"
    return damage


def _set(position: int, value):
    def change(fields: list[str]) -> None:
        fields[position] = value(fields) if callable(value) else value
    return change


def _recount(text: str) -> str:
    header, rest = text.split("\n", 1)
    return f"v1.2 {int(header.split()[1]) + 1}\n{rest}"


# case -> (damage of the index text, what the error says after "<idx>"; the fields in braces are the undamaged
# index's: _expected)
CASES = {
    "count": (_recount, ": index says {more} samples but lists {samples}"),
    "bad_number": (_fields(_set(2, "5x2")), ":2: {name}: size '5x2' is not a whole number"),
    "negative_size": (_fields(_set(2, "-600")),
                      f":2: {{name}}: size -600 is not one a tar member can have (0 to {MAX_MEMBER_SIZE} bytes)"),
    "overflowing_size": (_fields(_set(2, str(2 ** 64))),  # past os.pread's ssize_t: an OverflowError unchecked
                         f":2: {{name}}: size {2 ** 64} is not one a tar member can have (0 to {MAX_MEMBER_SIZE} "
                         "bytes)"),
    "far_offset_alone": (_fields(_set(1, str(2 ** 64))),
                         ":2: the members of sample {key} span bytes {second} to {far_alone} of the tar; side by side, "
                         "as a tar holds them, they take {blocks}"),
    "offset_in_header": (_fields(_set(1, "0")), ":2: {name}: offset 0 is not where member data can start (after a "
                                                "512-byte header, on a 512-byte block boundary)"),
    "misaligned_offset": (_fields(_set(1, "612")), ":2: {name}: offset 612 is not where member data can start "
                                                   "(after a 512-byte header, on a 512-byte block boundary)"),
    "far_offset": (_fields(_set(5, lambda f: str(int(f[5]) + 512 * 10 ** 6))),
                   ":2: the members of sample {key} span bytes 0 to {far_end} of the tar; side by side, as a tar "
                   "holds them, they take {blocks}"),
    "bad_header": (lambda text: "v9 2\n" + text.split("\n", 1)[1], ":1: index header 'v9 2' is not 'v1.2 <count>'"),
    "empty": (lambda text: "\n", ": empty index"),
}


def _expected(case: str, original: str) -> str:
    fields = original.splitlines()[1].split()
    samples = parse_index(original)
    members = samples[0]
    far_end = max(m.offset + m.size + (512 * 10 ** 6 if i == 1 else 0) for i, m in enumerate(members))
    far_alone = 2 ** 64 + members[0].size
    blocks = sum(512 + -(-m.size // 512) * 512 for m in members)
    return CASES[case][1].format(name=fields[3], key=members[0].key, far_end=far_end, far_alone=far_alone,
                                 second=members[1].offset - 512, blocks=blocks, samples=len(samples),
                                 more=len(samples) + 1)


@pytest.fixture
def copy(shards, tmp_path) -> Path:
    return Path(shutil.copytree(shards, tmp_path / "shards"))


def _damage(folder: Path, case: str) -> tuple[Path, str]:
    """Damage the first training shard's index of ``folder``; returns its path and the message expected after it."""
    idx = folder / f"{FIRST}.idx"
    original = idx.read_text()
    idx.write_text(CASES[case][0](original))
    return idx, _expected(case, original)


@pytest.mark.parametrize("case", sorted(CASES))
def test_opening_a_shard_with_a_damaged_index_names_the_file_and_line(copy, case):
    idx, expected = _damage(copy, case)
    with pytest.raises(ValueError) as caught:
        IndexedShard(str(copy / f"{FIRST}.tar"), str(idx), str(copy / f"{FIRST}.crc"))
    assert type(caught.value) is ValueError and str(caught.value) == f"{idx}{expected}"


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=pytest.mark.dali)])
@pytest.mark.parametrize("case", ["bad_number", "negative_size", "overflowing_size", "count"])
def test_both_loaders_refuse_a_damaged_index_at_start_up_in_one_line(copy, case, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    idx, expected = _damage(copy, case)
    config = DataConfig(shards=str(copy), batch_size=1, workers=0, num_frames=4, crop_size=64, shuffle_buffer=1,
                        backend=backend)
    with pytest.raises(ValueError) as caught:
        build_loader(config, "train", train=True)
    assert str(caught.value) == f"{idx}{expected}"


@pytest.mark.parametrize("case", ["bad_number", "negative_size", "count", "far_offset"])
def test_verify_reports_a_damaged_index_as_a_problem(copy, case, capsys):
    _, expected = _damage(copy, case)
    problems = verify(copy)["problems"]
    assert f"{FIRST}: unreadable: {FIRST}.idx{expected}" in problems, problems
    assert shard_main(["verify", str(copy)]) == 1


def test_avmae_train_on_a_damaged_index_is_one_line_naming_it(copy, tmp_path, capsys):
    from avmae.cli.train import main as train_main
    from tests.helpers import run_config

    idx, expected = _damage(copy, "negative_size")
    assert train_main(["--config", str(run_config(tmp_path, copy))]) == 2
    assert capsys.readouterr().err.strip() == f"avmae-train: {idx}{expected}"


def test_a_non_utf8_index_or_sidecar_names_the_file(copy, capsys):
    tar, idx, crc = (str(copy / f"{FIRST}{suffix}") for suffix in (".tar", ".idx", ".crc"))
    original = Path(idx).read_bytes()
    Path(idx).write_bytes(original.replace(b".00.jpg", b".\xff0.jpg", 1))
    with pytest.raises(ValueError) as caught:
        IndexedShard(tar, idx, crc)
    assert type(caught.value) is ValueError
    assert str(caught.value).startswith(f"{idx}: not UTF-8 text ('utf-8' codec can't decode byte 0xff in position")
    config = DataConfig(shards=str(copy), batch_size=1, workers=0, num_frames=4, crop_size=64, shuffle_buffer=1)
    with pytest.raises(ValueError, match=f"^{idx}: not UTF-8 text"):  # the loaders read it as bytes: named too
        build_loader(config, "train", train=True)
    assert any(p.startswith(f"{FIRST}: unreadable: {FIRST}.idx: not UTF-8 text") for p in verify(copy)["problems"])

    Path(idx).write_bytes(original)
    Path(crc).write_bytes(b"\xfe" + Path(crc).read_bytes())
    with pytest.raises(ValueError) as caught:
        IndexedShard(tar, idx, crc)
    assert type(caught.value) is ValueError and str(caught.value).startswith(f"{crc}: not UTF-8 text")
    problems = verify(copy)["problems"]
    assert any(p.startswith(f"{FIRST}: checksum sidecar unusable: {FIRST}.crc: not UTF-8 text") for p in problems)


def test_a_member_name_without_a_dot_is_a_missing_member_of_its_sample(copy):
    """Names are data as the tar holds them (avmae-shard verify reports such a member): the index opens, and the
    sample lacks the member a reader asks for, where Member.ext was an IndexError for the whole shard."""
    idx = copy / f"{FIRST}.idx"
    fields = idx.read_text().splitlines()[1].split()
    idx.write_text(_fields(_set(7, fields[7].replace(".", "")))(idx.read_text()))
    shard = IndexedShard(str(copy / f"{FIRST}.tar"), str(idx), str(copy / f"{FIRST}.crc"))
    assert shard.keys[0] == fields[3].partition(".")[0] and "" in shard.samples[0]
    with pytest.raises(SampleError) as caught:
        shard.read(0, ["00.jpg", "01.jpg"])
    assert (caught.value.key, caught.value.member, caught.value.reason) == (shard.keys[0], "01.jpg", "missing_member")


def test_an_index_as_the_writer_makes_it_parses_as_before():
    members = [Member("a.json", 512, 10), Member("a.npy", 1536, 600), Member("b.json", 3072, 0)]
    assert parse_index(index_text(members), "x.idx") == [members[:2], members[2:]]
    assert parse_index(b"\n" + index_text(members).encode() + b"\n\n", "x.idx") == [members[:2], members[2:]]
    assert [m.ext for m in parse_index(index_text(members))[0]] == ["json", "npy"]


# --- list files -----------------------------------------------------------------------------------------------------

def test_a_generic_list_names_the_file_and_line_of_a_bad_time(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,labels,start,end\n\nclips/a.mp4,cat,1,3\nclips/b.mp4,dog,abc,4\n")  # line 2 is blank
    with pytest.raises(ListFormatError) as caught:
        read_list(bad, "generic", None)
    assert str(caught.value) == f"{bad}:4: start 'abc' is not a number of seconds"
    bad.write_text("path,labels,start,end\nclips/a.mp4,cat,1,nan\n")
    with pytest.raises(ListFormatError, match=rf"^{bad}:2: end 'nan' is not a number of seconds$"):
        read_list(bad, "generic", None)


def test_a_list_that_is_not_utf8_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"path,labels\nclips/a.mp4,cat\nclips/\xe9t\xe9.mp4,dog\n")  # Latin-1
    with pytest.raises(ListFormatError) as caught:
        read_list(bad, "generic", None)
    assert str(caught.value) == f"{bad}:3: not UTF-8 text (invalid continuation byte); save the list as UTF-8"
    with pytest.raises(ListFormatError, match=rf"^{bad}:3: not UTF-8 text"):
        detect_format(bad)  # it reads the first lines only, but decodes ahead of them
    bad.write_bytes(b"\xff\xfep\x00a\x00t\x00h\x00\n\x00")  # UTF-16
    with pytest.raises(ListFormatError, match=rf"^{bad}:1: not UTF-8 text"):
        read_list(bad, "auto", None)


def test_an_epic_list_names_the_line_of_a_bad_class(tmp_path):
    bad = tmp_path / "epic.csv"
    bad.write_text("narration_id,video_id,start_timestamp,stop_timestamp,verb_class,noun_class\n"
                   "P01_01_0,P01_01,00:00:01.00,00:00:02.00,3,4\nP01_01_1,P01_01,00:00:02.00,00:00:03.00,x,4\n")
    with pytest.raises(ListFormatError) as caught:
        read_list(bad, "epic", None)
    assert str(caught.value) == f"{bad}:3: verb_class 'x' is not a class index"
