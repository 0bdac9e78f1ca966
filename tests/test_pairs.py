"""Preference pairs: from the versions of a reply its user regenerated or rated (real SQLite), carried in a published
file and traced back to it; on-policy pairs from judged samples; the pairs file format and its errors; the
repetition penalty the sampler applies; the frozen evaluation judge's win rate."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import ScriptedEngine
from typer.testing import CliRunner

from thresher.cli import app
from thresher.conversation import COMPLETE, INTERRUPTED, Conversation, Message
from thresher.engines import ChatParams, Chunk, penalised
from thresher.engines.scheduler import sample
from thresher.evaluate import FrozenJudge
from thresher.judge import FLAGGED, OK, Judgment
from thresher.pairs import (
    FEEDBACK,
    ON_POLICY,
    REGENERATION,
    Pair,
    PairError,
    balance_lengths,
    from_record,
    on_policy,
    read_pairs,
    record_pairs,
    write_pairs,
)
from thresher.store import ReplyVersion, Store


def v(content: str, rating: str | None = None, kept: bool = False, status: str = COMPLETE) -> ReplyVersion:
    return ReplyVersion(content, status, rating, kept)


def test_pairs_from_a_replys_versions() -> None:
    pairs = record_pairs({1: [v("first try", "down"), v("second try", kept=True)],
                          3: [v("a", "up"), v("b", kept=True, rating="down"), v("c", kept=False)],
                          5: [v("stopped half", status=INTERRUPTED), v("kept", kept=True)],
                          7: [v("same"), v("same", kept=True)]}, clean=str.upper)
    got = {(p["turn"], p["chosen"], p["rejected"], p["source"]) for p in pairs}
    assert got == {
        (1, "SECOND TRY", "FIRST TRY", FEEDBACK),  # kept over thumbed down
        (3, "A", "B", FEEDBACK),  # thumbed up over thumbed down, although b is kept
        (3, "A", "C", FEEDBACK),
    }  # an interrupted, unrated version and an identical one make no pair; texts went through the scrubber


def test_regenerated_away_from_is_a_weaker_pair_of_its_own_kind() -> None:
    (p,) = record_pairs({1: [v("the first"), v("the second", kept=True)]})
    assert p == {"turn": 1, "chosen": "the second", "rejected": "the first", "source": REGENERATION}


def test_reply_versions_come_from_the_real_store(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    store.migrate()
    conv = store.create(Conversation(messages=[Message("user", "Name a colour."), Message("assistant", "Blue.")]))
    _, turns = store.thread(conv.id)
    first = turns[1].id
    again = store.append(conv.id, Message("assistant", "Red is a colour."), after=turns[0].id)  # regenerated
    store.set_feedback(conv.id, first, "down", "too short")
    store.append(conv.id, Message("user", "Another?"))
    store.append(conv.id, Message("assistant", "Green."))  # one version only: no entry
    other = store.create(Conversation(messages=[Message("user", "Hi"), Message("assistant", "Hello")]))
    versions = store.reply_versions([conv.id, other.id])
    assert list(versions) == [conv.id] and list(versions[conv.id]) == [1]
    assert versions[conv.id][1] == [ReplyVersion("Blue.", COMPLETE, "down", False),
                                    ReplyVersion("Red is a colour.", COMPLETE, None, True)]
    store.switch(conv.id, first)  # back to the first version: now it is the kept one
    assert [x.kept for x in store.reply_versions([conv.id])[conv.id][1]] == [True, False]
    assert again != first
    store.close()


def test_a_published_files_pairs_are_traced_to_it() -> None:
    record = {"id": "c1", "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "good"}],
              "pairs": [{"turn": 1, "chosen": "good", "rejected": "bad", "source": FEEDBACK},
                        {"turn": 2, "chosen": "x", "rejected": "y"},  # its prompt would end on a reply
                        {"turn": 9, "chosen": "x", "rejected": "y"},  # past the end
                        {"chosen": "x"}, "junk"]}
    (p,) = from_record(record)
    assert p.conversation == "c1" and p.prompt == [{"role": "user", "content": "Q?"}] and p.source == FEEDBACK
    assert (p.chosen, p.rejected) == ("good", "bad")
    assert from_record({"id": "c2", "messages": record["messages"]}) == []


def test_pairs_files_round_trip_and_bad_lines_are_named(tmp_path: Path) -> None:
    pairs = [Pair([{"role": "user", "content": "Q?"}], "yes", "no", ON_POLICY, "c1", 2.5)]
    path = write_pairs(tmp_path / "pairs.jsonl", pairs)
    assert read_pairs(path) == pairs
    path.write_text(path.read_text() + json.dumps({"prompt": [{"role": "user", "content": "Q"}], "chosen": "a",
                                                   "rejected": "a"}) + "\n")
    with pytest.raises(PairError, match=r"pairs.jsonl:2: .*the same"):
        read_pairs(path)
    with pytest.raises(ValueError, match="ending with the user's"):
        Pair.from_json({"prompt": [{"role": "assistant", "content": "Q"}], "chosen": "a", "rejected": "b"})


def test_train_dpo_says_what_is_wrong_with_its_input(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["train", "dpo", "--pairs", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 1 and "no file or directory" in missing.output
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    bad = runner.invoke(app, ["train", "dpo", "--pairs", str(tmp_path / "bad.jsonl")])
    assert bad.exit_code == 1 and "bad.jsonl:1" in bad.output
    empty_dir = tmp_path / "built"
    empty_dir.mkdir()
    (empty_dir / "data.jsonl").write_text(json.dumps({"id": "c", "messages": []}) + "\n")
    none = runner.invoke(app, ["train", "dpo", "--pairs", str(empty_dir)])
    assert none.exit_code == 1 and "no preference pairs" in none.output
    (empty_dir / "data.jsonl").write_text("{broken\n")
    broken = runner.invoke(app, ["train", "dpo", "--pairs", str(empty_dir)])
    assert broken.exit_code == 1 and "data.jsonl line 1" in " ".join(broken.output.split())
    (empty_dir / "data.jsonl").unlink()
    unbuilt = runner.invoke(app, ["train", "dpo", "--pairs", str(empty_dir)])
    assert unbuilt.exit_code == 1 and "thresher dataset build" in " ".join(unbuilt.output.split())
    remote = runner.invoke(app, ["train", "dpo", "--pairs", str(tmp_path / "bad.jsonl"), "--base",
                                 "openai:http://127.0.0.1:9/v1"])
    assert remote.exit_code == 2 and "training needs local weights" in " ".join(remote.output.split())


@dataclass
class ByWords(ScriptedEngine):
    """Replies that differ by seed: seed k answers with the k-th of `answers` (cut off if longer than asked)."""

    answers: list[str] = field(default_factory=list)

    def stream_chat(self, messages, params: ChatParams):
        words = self.answers[(params.seed or 0) % len(self.answers)].split(" ")
        for w in words[: params.max_tokens]:
            yield Chunk(text=w + " ")
        yield Chunk(finish_reason="length" if len(words) > params.max_tokens else "stop")


@dataclass
class LengthJudge:
    """Scores a reply by its word count (a loop scores high too, which on_policy must not pick); flags 'IGNORE'."""

    judge_id: str = "length@1"
    threshold: float = 5.0
    rubric_hash: str = "len"

    def judge_many(self, convs):
        return [Judgment(1.0, FLAGGED, self.judge_id, self.rubric_hash) if "IGNORE" in c[-1]["content"]
                else Judgment(min(10.0, 1.0 + len(c[-1]["content"].split())), OK, self.judge_id, self.rubric_hash)
                for c in convs]


def test_on_policy_pairs_take_the_best_clean_reply_over_the_worst() -> None:
    loop = " ".join(["again and again"] * 8)
    engine = ByWords(answers=["Short.", "A clear and complete answer.", loop, "A good answer."])
    prompts = [("c1", [{"role": "user", "content": "Q1?"}]), (None, [{"role": "user", "content": "Q2?"}])]
    pairs = on_policy(engine, LengthJudge(), prompts, n=4, max_tokens=64, min_margin=2.0, max_length_ratio=10)
    assert len(pairs) == 2
    for p, (conv_id, msgs) in zip(pairs, prompts, strict=True):
        assert p.chosen.strip() == "A clear and complete answer."  # the loop scored higher and was passed over
        assert p.rejected.strip() == "Short." and p.source == ON_POLICY and p.conversation == conv_id
        assert p.prompt == msgs and p.margin == 4.0
    assert on_policy(engine, LengthJudge(), prompts, n=4, max_tokens=64, min_margin=5.0,
                     max_length_ratio=10) == []  # no clear margin
    # The rejected reply is the worst of those about as long as the chosen: a 1-word reply is not set against 5
    alike = on_policy(engine, LengthJudge(), prompts, n=4, max_tokens=64, min_margin=1.0, max_length_ratio=2.0)
    assert [(p.chosen.strip(), p.rejected.strip()) for p in alike] == [("A clear and complete answer.",
                                                                         "A good answer.")] * 2
    assert on_policy(engine, LengthJudge(), prompts, n=4, max_tokens=64, min_margin=1.0) == []  # none within 1.5x
    cut = on_policy(engine, LengthJudge(), prompts, n=4, max_tokens=3, min_margin=0.5, max_length_ratio=10)
    assert all(p.chosen.strip() in ("Short.", "A good answer.") for p in cut)  # cut-off replies are never chosen


def test_a_pair_set_is_length_balanced_by_dropping_the_most_shortened_chosen_replies() -> None:
    def pair(chosen_words: int, rejected_words: int, tag: str) -> Pair:
        return Pair([{"role": "user", "content": tag}], " ".join(["c"] * chosen_words),
                    " ".join(["r"] * rejected_words), ON_POLICY, tag)

    # Chosen 4x, 2x and 1.25x shorter, one chosen 2x longer: geometric mean ratio (1/4 * 1/2 * 4/5 * 2)^(1/4) < 1/1.1
    pairs = [pair(10, 40, "a"), pair(20, 40, "b"), pair(40, 50, "c"), pair(40, 20, "d")]
    kept = balance_lengths(pairs, 1.1)
    assert [p.conversation for p in kept] == ["b", "c", "d"]  # the 4x one dropped, and the order kept
    assert [p.conversation for p in balance_lengths(pairs, 5.0)] == ["a", "b", "c", "d"]  # balanced enough
    # Only chosen-shorter pairs are ever dropped: a set with none such stays as it is, however long its chosen side
    longer = [pair(30, 10, "x"), pair(12, 10, "y")]
    assert balance_lengths(longer, 1.0) == longer
    assert balance_lengths([pair(5, 50, "z")], 1.1) == [] and balance_lengths([], 1.1) == []


def test_the_repetition_penalty_makes_recent_tokens_less_likely() -> None:
    logits = np.array([3.0, 2.9, -1.0, 0.5])
    assert sample(logits.copy(), ChatParams(temperature=0.0), np.random.default_rng(0)) == 0
    pushed = penalised(logits.copy(), [0, 2], 1.3)
    assert pushed[0] == pytest.approx(3.0 / 1.3) and pushed[2] == pytest.approx(-1.3) and pushed[1] == 2.9
    assert sample(pushed, ChatParams(temperature=0.0), np.random.default_rng(0)) == 1
    assert penalised(logits.copy(), [], 2.0).tolist() == logits.tolist()
    assert penalised(logits.copy(), [0], 1.0).tolist() == logits.tolist()


@pytest.mark.slow
def test_the_penalty_reaches_the_real_engine(embedded_engine) -> None:
    """Greedy replies of the embedded model that fall into repeating themselves do not with the penalty (same
    prompts, same weights): the share of word 4-grams repeating an earlier one."""
    import re

    from thresher.signals import repeated_share

    qs = ["Write a long poem about the sea.", "Count from one to fifty in words."]

    def repeats(penalty: float) -> list[float]:
        out = []
        for q in qs:
            text = "".join(c.text for c in embedded_engine.stream_chat(
                [{"role": "user", "content": q}], ChatParams(max_tokens=120, temperature=0.0,
                                                             repetition_penalty=penalty)))
            out.append(repeated_share([w.lower() for w in re.findall(r"\w+", text)], 4))
        return out

    plain, penalised_ = repeats(1.0), repeats(1.3)
    assert sum(plain) > 0.2 and sum(penalised_) < sum(plain) / 2, (plain, penalised_)


def test_the_frozen_judge_reads_scores_as_preferences() -> None:
    judge = FrozenJudge(LengthJudge())
    wr = judge.win_rate(["Q1", "Q2", "Q3"], ["one two three four five six seven eight", "same", "a IGNORE b"],
                        ["one", "same", "x"])
    assert wr.prompts == 3 and wr.ties == 1 and wr.position_bias == 0.5
    p = [e["p_new"] for e in wr.examples]
    assert p[0] > 0.9 and p[1] == 0.5 and p[2] < 0.1  # longer wins here; a flagged reply loses
    assert wr.win_rate == pytest.approx(sum(p) / 3, abs=1e-3)
    assert judge.judge_id == "length@1" and judge.threshold == 5.0


def test_a_published_conversations_pairs_are_built_traced_and_taken_down(store: Store, tmp_path: Path,
                                                                          remote: Path) -> None:
    """Real store (SQLite and PostgreSQL), real git: a regenerated reply its user thumbed down becomes a pair in the
    published file (scrubbed), a dataset build carries it, `from_record` traces it to the conversation, and a
    takedown removes the file and the conversation's lines from a round's published pairs."""
    from thresher.dataset_repo import DatasetRepo
    from thresher.flywheel import publish, takedown
    from thresher.review import build_dataset, write_verdict

    cid = store.create(Conversation(messages=[Message("user", "How far away is the moon?")],
                                    publish_allowed=True)).id
    _, (question,) = store.thread(cid)
    kept = store.append(cid, Message("assistant", "About 384,000 km on average."))
    worse = store.append(cid, Message("assistant", "Quite far. Ask bob@example.org."), after=question.id)
    store.set_feedback(cid, worse, "down", "vague")
    store.switch(cid, kept)
    store.end(cid, "button")
    store.save_judgment(cid, Judgment(score=9.0, status=OK, judge_id="judge@1", rubric_hash="r1"))
    plain = store.create(Conversation(messages=[Message("user", "Hi"), Message("assistant", "Hello! How can I help?")],
                                      publish_allowed=True)).id
    store.end(plain, "button")
    store.save_judgment(plain, Judgment(score=9.0, status=OK, judge_id="judge@1", rubric_hash="r1"))
    repo = DatasetRepo(tmp_path / "clone", str(remote)).open()
    assert sorted(publish(store, repo, threshold=8.0).published) == sorted([cid, plain])
    files = {p.stem: json.loads(p.read_text()) for p in (repo.path / "conversations").rglob("*.json")}
    assert files[cid]["pairs"] == [{"turn": 1, "chosen": "About 384,000 km on average.",
                                    "rejected": "Quite far. Ask <EMAIL>.", "source": FEEDBACK}]
    assert "pairs" not in files[plain]  # no versions, no field

    for conv_id in (cid, plain):
        write_verdict(repo, conv_id, "approve", "fine", reviewer="ada")
    build_dataset(repo, repo.head(), tmp_path / "built")
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "built" / "data.jsonl").read_text().splitlines())}
    (pair,) = [p for r in rows.values() for p in from_record(r)]
    assert pair.conversation == cid and pair.prompt == [{"role": "user", "content": "How far away is the moon?"}]

    round_pairs = repo.path / "rounds" / "1-pairs.jsonl"  # as a round publishes its on-policy pairs
    write_pairs(round_pairs, [Pair(pair.prompt, "384,000 km.", "Far.", ON_POLICY, cid),
                              Pair([{"role": "user", "content": "Hi"}], "Hello!", "...", ON_POLICY, plain)])
    repo.commit(["rounds/1-pairs.jsonl"], "Round 1 pairs")
    report = takedown(store, repo, cid, "its owner asked")
    assert report.removed_path and not (repo.path / report.removed_path).exists() and report.pushed
    assert [p.conversation for p in read_pairs(round_pairs)] == [plain]
    assert git_show(remote, "main:rounds/1-pairs.jsonl").count("\n") == 1  # pushed with the tombstone


def git_show(remote: Path, what: str) -> str:
    import subprocess

    return subprocess.run(["git", "show", what], cwd=remote, capture_output=True, text=True, check=True).stdout


def test_a_reviewers_correction_is_a_pair_of_the_reply_they_changed() -> None:
    from thresher.pairs import CORRECTION, from_corrections

    q = {"role": "user", "content": "What is 7 x 6?"}
    old = [q, {"role": "assistant", "content": "It is 48."}, {"role": "user", "content": "Sure?"},
           {"role": "assistant", "content": "Yes."}]
    new = [q, {"role": "assistant", "content": "It is 42."}, *old[2:]]
    (p,) = from_corrections([("c1", new, old), ("c2", old, old),  # unchanged: no pair
                             ("c3", [{**q, "content": "changed question"}, *new[1:]], old)])  # a user turn edited
    assert (p.prompt, p.chosen, p.rejected, p.source, p.conversation) == ([q], "It is 42.", "It is 48.",
                                                                           CORRECTION, "c1")
