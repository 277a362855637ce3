"""training.data: validation rules, atomic output, seeded splits, manifest, the hf path (hub patched)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import UserError
from training import data
from training.data import prepare, row_problem

GOOD = {"prompt": "Hi", "prompt_id": "x", "messages": [{"role": "user", "content": "Hi"},
                                                       {"role": "assistant", "content": "Hello."}]}


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, bytes] | None = None) -> Path:
    """Rows as JSONL; raw_lines replaces line i (1-based) with exact bytes."""
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    for line_no, raw in (raw_lines or {}).items():
        lines[line_no - 1] = raw
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def numbered_rows(n: int) -> list[dict]:
    return [{"prompt": f"q{i}", "prompt_id": str(i),
             "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(n)]


def read_ids(path: Path) -> list[str]:
    return [json.loads(line)["prompt_id"] for line in path.read_text(encoding="utf-8").splitlines()]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------- every validation rule

@pytest.mark.parametrize("line, expected", [
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"messages": [', "not valid JSON"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'"text"', "expected a JSON object, got str"),
    (b'{"prompt": "x"}', "no `messages` field"),
    (b'{"messages": []}', "`messages` must be a non-empty list"),
    (b'{"messages": "hello"}', "`messages` must be a non-empty list"),
    (b'{"messages": ["hello"]}', "messages[0] must be an object"),
    (b'{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}',
     "messages[0]: role 'tool' is not one of system, user, assistant"),
    (b'{"messages": [{"content": "x"}]}', "messages[0]: role None"),
    (b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": null}]}',
     "messages[1]: content must be a string, got null"),
    (b'{"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]}',
     "messages[0]: content must be a string, got list"),
    (b'{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]}', "no assistant turn"),
])
def test_each_rule_is_reported(line: bytes, expected: str) -> None:
    assert expected in row_problem(line)


def test_valid_rows_pass_including_unicode() -> None:
    assert row_problem(json.dumps(GOOD).encode()) is None
    row = {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "東京? 🙂"},
                        {"role": "assistant", "content": "Ναι."}]}
    assert row_problem(json.dumps(row, ensure_ascii=False).encode("utf-8")) is None


def test_bad_file_fails_with_file_and_line_and_writes_nothing(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", numbered_rows(6),
                      raw_lines={2: b'{"messages": []}', 5: b"not json"})
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        prepare(str(src), out)
    message = str(err.value)
    assert f"{src}:2: `messages` must be a non-empty list" in message
    assert f"{src}:5: not valid JSON" in message
    assert "2 of 6 rows" in message and "--skip-bad-rows" in message
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]  # no staging folder left behind


def test_only_the_first_problems_are_listed(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [[1]] * 25)
    with pytest.raises(UserError) as err:
        prepare(str(src), tmp_path / "out")
    assert str(err.value).count("expected a JSON object") == data.MAX_REPORTED_PROBLEMS
    assert "and 15 more" in str(err.value)


def test_skip_bad_rows_leaves_them_out_and_counts_them(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", numbered_rows(10), raw_lines={3: b"[]", 7: b"\xff"})
    result = prepare(str(src), tmp_path / "out", test_size=0.25, skip_bad_rows=True)
    counts = result.manifest["counts"]
    assert counts["bad_rows_skipped"] == 2 and counts["valid_rows"] == 8
    ids = read_ids(result.out / "train.jsonl") + read_ids(result.out / "test.jsonl")
    assert sorted(ids, key=int) == ["0", "1", "3", "4", "5", "7", "8", "9"]


def test_blank_lines_crlf_and_bom_are_tolerated(tmp_path: Path) -> None:
    rows = numbered_rows(4)
    text = "\ufeff" + "\r\n".join(json.dumps(r) for r in rows[:2]) + "\r\n\r\n" + "\n".join(json.dumps(r) for r in rows[2:])
    src = tmp_path / "in.jsonl"
    src.write_bytes(text.encode("utf-8"))
    result = prepare(str(src), tmp_path / "out", test_size=1)
    lines = (result.out / "train.jsonl").read_bytes().split(b"\n")[:-1] + (result.out / "test.jsonl").read_bytes().split(b"\n")[:-1]
    assert sorted(json.loads(l)["prompt_id"] for l in lines) == ["0", "1", "2", "3"]
    assert all(not l.endswith(b"\r") and not l.startswith(b"\xef\xbb\xbf") for l in lines)


# ---------------------------------------------------------------- splits, seeds, fraction, manifest

def test_split_sizes_no_row_lost_or_duplicated_and_rows_unchanged(tmp_path: Path) -> None:
    rows = numbered_rows(101)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = prepare(str(src), tmp_path / "out", test_size=0.2, seed=7)
    train, test = read_ids(result.out / "train.jsonl"), read_ids(result.out / "test.jsonl")
    assert (len(train), len(test)) == (81, 20)
    assert sorted(train + test, key=int) == [str(i) for i in range(101)]
    original = {json.dumps(r, ensure_ascii=False) for r in rows}
    written = (result.out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert set(written) <= original  # rows are copied byte for byte, prompt/prompt_id kept


def test_same_seed_same_split_other_seed_other_split(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", numbered_rows(50))
    a = prepare(str(src), tmp_path / "a", seed=1).out
    b = prepare(str(src), tmp_path / "b", seed=1).out
    c = prepare(str(src), tmp_path / "c", seed=2).out
    assert snapshot(a) == snapshot(b)
    assert set(read_ids(a / "test.jsonl")) != set(read_ids(c / "test.jsonl"))


def test_fraction_percent_and_count_and_test_size_count(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", numbered_rows(200))
    pct = prepare(str(src), tmp_path / "pct", fraction="10%")
    assert pct.manifest["counts"]["selected"] == 20 and pct.manifest["counts"]["test"] == 4
    count = prepare(str(src), tmp_path / "count", fraction="30", test_size=5)
    assert (count.manifest["counts"]["train"], count.manifest["counts"]["test"]) == (25, 5)
    with pytest.raises(UserError, match="only 200 valid rows"):
        prepare(str(src), tmp_path / "too-many", fraction="201")
    with pytest.raises(UserError, match="both train and test need"):
        prepare(str(src), tmp_path / "tiny", fraction="1", test_size=0.2)


def test_manifest_records_source_seed_counts_and_true_hashes(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", numbered_rows(30))
    out = prepare(str(src), tmp_path / "out", seed=3).out
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["source"] == str(src) and manifest["path"] == str(src.resolve())
    assert manifest["seed"] == 3 and manifest["fraction"] == "100%" and manifest["test_size"] == 0.2
    assert manifest["counts"]["train"] + manifest["counts"]["test"] == 30
    for name in ("train.jsonl", "test.jsonl"):
        body = (out / name).read_bytes()
        assert manifest["files"][name]["sha256"] == hashlib.sha256(body).hexdigest()
        assert manifest["files"][name]["bytes"] == len(body)
        assert manifest["files"][name]["rows"] == body.count(b"\n")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.jsonl", "train.jsonl"]


def test_sample_source(tmp_path: Path) -> None:
    result = prepare("sample", tmp_path / "out")
    assert result.manifest["source"] == "sample"
    assert result.manifest["counts"]["selected"] == 400
    rows = [json.loads(l) for l in (result.out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {"prompt", "prompt_id", "messages"} <= rows[0].keys()


def test_sample_data_dir_fixture(sample_data_dir: Path) -> None:
    assert json.loads((sample_data_dir / "manifest.json").read_text())["counts"]["train"] == 320


# ---------------------------------------------------------------- atomic output

def test_failed_run_leaves_earlier_output_byte_identical(tmp_path: Path) -> None:
    out = tmp_path / "out"
    good = prepare(str(write_jsonl(tmp_path / "good.jsonl", numbered_rows(20))), out).out
    before = snapshot(good)
    bad = write_jsonl(tmp_path / "bad.jsonl", numbered_rows(20), raw_lines={20: b'{"messages": [{}]}'})
    with pytest.raises(UserError):
        prepare(str(bad), out)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "out"]


def test_failure_while_writing_leaves_earlier_output_byte_identical(tmp_path: Path, monkeypatch) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", numbered_rows(20))
    out = prepare(str(src), tmp_path / "out").out
    before = snapshot(out)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data, "swap_in", disk_full)  # the last step: everything else already written
    with pytest.raises(OSError):
        prepare(str(src), out, seed=99)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out"]


def test_rerun_replaces_the_whole_set(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", numbered_rows(40))
    out = prepare(str(src), tmp_path / "out", seed=1).out
    first = snapshot(out)
    prepare(str(src), out, seed=2)
    assert snapshot(out) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out"]


def test_refuses_a_folder_with_foreign_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt"):
        prepare("sample", out)
    assert (out / "notes.txt").read_text() == "mine"


def test_missing_source_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        prepare(str(tmp_path / "nope.jsonl"), tmp_path / "out")


# ---------------------------------------------------------------- --source hf (hub patched at load_dataset)

@pytest.mark.slow
def test_hf_source_selects_the_seeded_fraction(tmp_path: Path, monkeypatch) -> None:
    import datasets

    calls = []
    table = datasets.Dataset.from_list(numbered_rows(1000))

    def fake_load_dataset(path, *args, **kwargs):
        calls.append((path, kwargs.get("split", args[1] if len(args) > 1 else None)))
        return table

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = prepare("hf", tmp_path / "out")  # default fraction 1%
    assert calls == [("HuggingFaceH4/ultrachat_200k", "train_sft")]
    m = result.manifest
    assert m["fraction"] == "1%" and m["dataset_rows"] == 1000 and m["counts"]["selected"] == 10
    assert (m["counts"]["train"], m["counts"]["test"]) == (8, 2)
    ids = read_ids(result.out / "train.jsonl") + read_ids(result.out / "test.jsonl")
    assert len(set(ids)) == 10
    again = prepare("hf", tmp_path / "again")
    assert snapshot(again.out) == snapshot(result.out)
    assert not any(p.name.startswith(".") for p in result.out.iterdir())


def test_hf_source_bad_row_names_the_dataset_row(tmp_path: Path, monkeypatch) -> None:
    import datasets

    rows = numbered_rows(10)
    rows[4]["messages"] = [{"role": "user", "content": "no answer"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    with pytest.raises(UserError, match=r"ultrachat_200k\[train_sft\] row 4: no assistant turn"):
        prepare("hf", tmp_path / "out", fraction="100%")


def test_hf_hub_failure_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach huggingface.co")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="could not load HuggingFaceH4/ultrachat_200k.*--source sample"):
        prepare("hf", tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the command line

def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.data", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cli_bad_input_exits_nonzero_with_file_and_line(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", numbered_rows(3), raw_lines={2: b'{"messages": [{"role": "bot"}]}'})
    proc = run_cli("--source", str(src), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 1
    assert "error: 1 of 3 rows" in proc.stderr and f"{src}:2: messages[0]: role 'bot'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_writes_and_prints_the_folder(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", numbered_rows(10))
    proc = run_cli("--source", str(src), "--out", str(tmp_path / "out"), "--fraction", "50%", "--test-size", "1",
                   "--seed", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str((tmp_path / "out").resolve())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["fraction"], manifest["seed"], manifest["counts"]["test"]) == ("50%", 5, 1)


def test_cli_rejects_bad_fraction(tmp_path: Path) -> None:
    proc = run_cli("--source", "sample", "--out", str(tmp_path / "o"), "--fraction", "0%", cwd=tmp_path)
    assert proc.returncode == 2 and "--fraction" in proc.stderr


def test_help_imports_nothing_heavy() -> None:
    code = ("import sys, training.data, training.sample_data, training.tiny_model; "
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'trl', 'tokenizers') if m in sys.modules]; "
            "print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr
