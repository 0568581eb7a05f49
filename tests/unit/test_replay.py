"""The text-replay set: the shipped file, its loader and the cleaning rules (no LLM load)."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest

from fmrilm.corpus.text import leaked_labels
from fmrilm.errors import FmrilmError
from fmrilm.model.replay import load_replay, load_replay_records

# the generator is a script on top of the library (scripts/make_replay.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import make_replay as replay  # noqa: E402
from make_replay import LABEL_WORDS, MAX_WORDS, clean_passage, generate_replay  # noqa: E402

LICENCES = {replay.SELF_LICENCE, replay.STDLIB_LICENCE}


@pytest.fixture(scope="module")
def records():
    return load_replay_records()


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


# ------------------------------------------------------------------------------------------
# the shipped file


def test_shipped_file_loads_with_both_splits(records):
    train, heldout = load_replay("train"), load_replay("heldout")
    assert len(train) >= 100 and len(heldout) >= 25
    assert len(train) + len(heldout) == len(records)
    assert all(isinstance(t, str) and t.strip() for t in train + heldout)


def test_splits_are_disjoint_by_text_and_topic(records):
    train, heldout = set(load_replay("train")), set(load_replay("heldout"))
    assert not train & heldout
    topics = {s: {r["topic"] for r in records if r["split"] == s} for s in replay.SPLITS}
    assert not topics["train"] & topics["heldout"]


def test_no_duplicates(records):
    texts = [_norm(r["text"]) for r in records]
    assert len(set(texts)) == len(texts)
    assert replay.dedupe(records) == records  # no near duplicates either


def test_every_row_has_source_and_licence(records):
    for r in records:
        assert set(replay.FIELDS) <= set(r)
        assert r["licence"] in LICENCES and r["source"].strip()
        assert r["split"] in replay.SPLITS
    # both sources on both sides: the held-out part measures human-written text too
    for split in replay.SPLITS:
        assert {r["licence"] for r in records if r["split"] == split} == LICENCES


def test_no_label_words(records):
    for word in ("male", "female", "diagnosis", "autism", "schizophrenia", "age", "brain"):
        assert word in LABEL_WORDS
    for r in records:
        assert not replay.label_words_in(r["text"]), r["text"]
        assert not leaked_labels(r["text"], []), r["text"]


def test_passages_are_short_prose(records):
    for r in records:
        words = r["text"].split()
        assert replay.MIN_WORDS <= len(words) <= MAX_WORDS, r["text"]
        assert r["text"][0].isupper() and r["text"][-1] in ".!?", r["text"]


# ------------------------------------------------------------------------------------------
# loading errors


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"text": "One passage.", "source": "s", "licence": "Apache-2.0", "split": "train"},
    {"text": "Another passage.", "source": "s", "licence": "Apache-2.0", "split": "heldout"},
]


def test_load_from_a_path(tmp_path):
    path = _write(tmp_path / "r.jsonl", ROWS)
    assert load_replay("train", path) == ["One passage."]
    assert load_replay("heldout", path) == ["Another passage."]


def test_missing_file(tmp_path):
    with pytest.raises(FmrilmError, match="missing"):
        load_replay(path=tmp_path / "nope.jsonl")


def test_corrupt_line_names_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(FmrilmError, match=r"r\.jsonl:2 is not valid JSON"):
        load_replay(path=path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"licence": ""}, "licence"),
        ({"split": "test"}, "split 'test'"),
        ({"text": None}, "text"),
    ],
)
def test_bad_rows(tmp_path, bad, message):
    path = _write(tmp_path / "r.jsonl", [ROWS[0], {**ROWS[1], **bad}])
    with pytest.raises(FmrilmError, match=message):
        load_replay(path=path)


def test_a_missing_split_and_a_bad_split_argument(tmp_path):
    path = _write(tmp_path / "r.jsonl", [ROWS[0]])
    with pytest.raises(FmrilmError, match="no heldout passages"):
        load_replay(path=path)
    with pytest.raises(FmrilmError, match="replay split"):
        load_replay("valid")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(FmrilmError, match="no passages"):
        load_replay(path=empty)


# ------------------------------------------------------------------------------------------
# cleaning


WORDS = (
    "river mill stone field wind cloud harbour lantern bridge meadow orchard valley kettle "
    "pebble window candle garden ribbon market island forest ladder basket compass"
).split()


def _prose(sentences: int, seed: int) -> str:
    """Varied sentences of plain words (no label words), deterministic for a seed."""
    rng = random.Random(seed)
    return " ".join(
        " ".join(rng.choice(WORDS) for _ in range(9)).capitalize() + "." for _ in range(sentences)
    )


LONG = _prose(5, seed=0)


def test_clean_drops_openers_markdown_and_lists():
    raw = (
        "Sure! Here is a paragraph:\n**Tides** rise and fall twice a day because the moon "
        "pulls on the oceans. The sun adds a smaller pull, and when both line up the tides are "
        "at their highest, which sailors call spring tides. Harbours plan around them.\n"
        "- a list item\n1. another"
    )
    out = clean_passage(raw)
    assert out is not None and out.startswith("Tides rise")
    assert "**" not in out and "list item" not in out and out.endswith("around them.")


def test_clean_drops_later_label_sentences_but_not_a_label_opening():
    body = (
        "Lighthouses guide ships along rocky coasts at night. Their lamps turn behind large "
        "glass lenses that bend the light into a beam. Keepers once lived beside them for many "
        "years. Today most of them run automatically and are watched from afar by radio."
    )
    out = clean_passage(body)
    assert out is not None and "years" not in out and out.endswith("by radio.")
    assert clean_passage("A female keeper lived there. " + body) is None


def test_clean_cuts_to_whole_sentences_within_the_word_limit():
    out = clean_passage(_prose(40, seed=1))
    assert out is not None and len(out.split()) <= MAX_WORDS and out.endswith(".")
    sentence = "Clouds form when warm air rises and cools until its water vapour condenses. "
    assert clean_passage(sentence * 6) is None  # repetition is rejected


def test_clean_rejects_greetings_short_and_boilerplate():
    assert clean_passage("Hello there! " + LONG) is None
    assert clean_passage("Too short. Really.") is None
    assert clean_passage("As an AI assistant I explain tides. " + LONG) is None


# ------------------------------------------------------------------------------------------
# generation, with a stand-in model


class _FakeTokenizer:
    pad_token = None
    eos_token = "<eos>"
    pad_token_id = 0
    padding_side = "right"

    def __init__(self, answers):
        self.answers = answers
        self.calls = 0

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return messages[-1]["content"]

    def __call__(self, texts, return_tensors, padding):
        import torch

        return {"input_ids": torch.ones(len(texts), 3, dtype=torch.long)}

    def batch_decode(self, ids, skip_special_tokens):
        out = []
        for _ in range(len(ids)):
            out.append(self.answers[self.calls % len(self.answers)])
            self.calls += 1
        return out


class _FakeModel:
    def generate(self, input_ids, max_new_tokens, pad_token_id, **kwargs):
        import torch

        return torch.cat([input_ids, torch.full((len(input_ids), 5), 7)], dim=1)


def test_generate_replay_with_a_stand_in_model(tmp_path):
    pytest.importorskip("torch")
    answers = [_prose(5, seed=i) for i in range(40)]
    tokenizer = _FakeTokenizer(answers + ["Hello! I'm an AI assistant."])
    out = tmp_path / "replay.jsonl"
    summary = generate_replay(
        out,
        n=24,
        stdlib=0,
        batch_size=8,
        model=_FakeModel(),
        tokenizer=tokenizer,
        autocast=False,
    )
    rows = load_replay_records(out)
    assert summary["passages"] == len(rows) <= 24
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<eos>"
    assert {r["source"] for r in rows} == {replay.SELF_SOURCE}
    train_topics = {r["topic"] for r in rows if r["split"] == "train"}
    assert not train_topics & {r["topic"] for r in rows if r["split"] == "heldout"}
    assert summary["generation"]["generated_tokens"] == 5 * summary["generation"]["prompts_used"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n", "-1"], "passage counts"),
        (["--heldout-fraction", "1.5"], "heldout fraction"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_command_line_errors_are_one_line(tmp_path, capsys, argv, message):
    assert replay.main(["--out", str(tmp_path / "r.jsonl"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmrilm: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r.jsonl").exists()


def test_stdlib_only_file_round_trips(tmp_path):
    out = tmp_path / "r.jsonl"
    summary = replay.main(["--out", str(out), "--n", "0", "--stdlib", "30"])
    assert summary == 0
    rows = load_replay_records(out)
    assert 0 < len(rows) <= 30 and {r["licence"] for r in rows} == {replay.STDLIB_LICENCE}
    assert all("Python Software Foundation" in r["source"] for r in rows)
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_prompts_are_deterministic_and_label_free():
    assert replay.replay_prompts(3) == replay.replay_prompts(3)
    assert replay.replay_prompts(3) != replay.replay_prompts(4)
    for topic, prompt in replay.replay_prompts(0):
        assert not replay.label_words_in(topic) and topic in prompt
