import json
from pathlib import Path

import pytest

from arte_edge.errors import ArteError
from arte_edge.methods.common import DurableCollector, Outcome
from arte_edge.rundir import JsonlAppender, RunDir, read_jsonl, stable_id


def test_jsonl_torn_tail_is_dropped_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    JsonlAppender(path).write_batch([{"a": 1}, {"a": 2}])
    with open(path, "a") as fh:
        fh.write('{"a": 3, "b"')  # a kill mid-write
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    JsonlAppender(path).write_batch([{"a": 4}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4}]


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ArteError, match=r"x.jsonl:2: corrupt JSONL"):
        read_jsonl(path)


def test_stage_status_and_reset(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with run.stage("generate") as out:
        out["n"] = 3
    assert run.is_done("generate")
    assert run.stage_info("generate")["outputs"] == {"n": 3}
    with pytest.raises(RuntimeError), run.stage("train"):
        raise RuntimeError("boom")
    assert run.stage_info("train")["status"] == "failed"
    run.reset_from("generate")
    assert not run.is_done("generate")
    assert json.loads(run.manifest_path.read_text())["stages"]["generate"]["status"] == "pending"


def test_stable_id_depends_on_every_part() -> None:
    assert stable_id("a", 1) == stable_id("a", 1)
    assert stable_id("a", 1) != stable_id("a", 2)


def _candidates(n: int, accept_every: int, calls: list[str]):
    for i in range(n):
        rid = f"r{i}"

        def make(i=i, rid=rid) -> Outcome:
            calls.append(rid)
            meta = {"teacher_calls": 1, "prompt_tokens": 10, "completion_tokens": 5}
            if i % accept_every == 0:
                return Outcome(rid, {"id": rid, "messages": [], "meta": meta}, None)
            return Outcome(rid, None, {"id": rid, "reason": "wrong", "meta": meta})

        yield rid, make


def test_collector_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    ex, rej = tmp_path / "examples.jsonl", tmp_path / "rejected.jsonl"
    calls: list[str] = []
    first = DurableCollector(ex, rej)
    first.run(_candidates(6, 2, calls), target=100, max_attempts=6, batch_size=4)
    # A new process (resume) continues with the rest only.
    resumed_calls: list[str] = []
    second = DurableCollector(ex, rej)
    second.run(_candidates(10, 2, resumed_calls), target=100, max_attempts=10, batch_size=4)
    assert resumed_calls == ["r6", "r7", "r8", "r9"]
    ids = [r["id"] for r in read_jsonl(ex)] + [r["id"] for r in read_jsonl(rej)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(10)) and len(ids) == len(set(ids))
    totals = second.totals()
    assert totals["n_examples"] == 5 and totals["n_rejected"] == 5 and totals["teacher_calls"] == 10


def test_collector_stops_at_target(tmp_path: Path) -> None:
    calls: list[str] = []
    c = DurableCollector(tmp_path / "e.jsonl", tmp_path / "r.jsonl")
    c.run(_candidates(50, 1, calls), target=3, max_attempts=50, batch_size=2)
    assert c.n_accepted == 3 and len(calls) == 3


def test_ensure_free_space_names_the_folder(tmp_path: Path) -> None:
    from arte_edge.rundir import ensure_free_space, free_bytes

    missing = tmp_path / "not" / "yet"
    assert free_bytes(missing) == free_bytes(tmp_path) > 0  # nearest existing parent
    ensure_free_space(missing, 1, "a file")
    with pytest.raises(ArteError, match=r"yet: a file needs about 1000000\.0 GB but the disk has .* GB free"):
        ensure_free_space(missing, 10**15, "a file")
