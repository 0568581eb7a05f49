"""Rebuild the text-replay set, ``src/fmrilm/model/data/replay_text.jsonl``.

The set mixes two sources the project may carry:

- **self-generated** (Apache-2.0): passages written by the default backbone,
  SmolLM2-135M-Instruct, from prompts about general-knowledge topics (self-rehearsal, as in
  self-distillation work; the topics and templates are in ``replay_topics.json`` beside this
  script). Fluent but not fact-checked: a language-retention set, not a knowledge source;
- **Python standard-library docstrings** (PSF-2.0): prose paragraphs of the docstrings of the
  running interpreter's pure-Python standard library, whitespace normalised (human-written text,
  so the retention measure is not only on the model's own distribution).

Passages are split by topic (self-generated) or module (docstrings), so no topic has passages
on both sides. The library only loads the file (:mod:`fmrilm.model.replay`); this script writes
it::

    HF_HUB_OFFLINE=1 python scripts/make_replay.py --out src/fmrilm/model/data/replay_text.jsonl

See docs/replay.md. torch and transformers are imported only when passages are generated, so
``--n 0`` (docstrings only) runs without the LLM stack.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from fmrilm.corpus.text import FORBIDDEN_WORDS
from fmrilm.errors import FmrilmError
from fmrilm.io import atomic_path
from fmrilm.llm import load_backbone
from fmrilm.llm.backbones import INSTALL_HINT
from fmrilm.model.replay import FIELDS, SPLITS, check_records

TOPICS_FILE = Path(__file__).with_name("replay_topics.json")
MAX_WORDS = 120
MIN_WORDS = 30

SELF_SOURCE = "SmolLM2-135M-Instruct self-generated"
SELF_LICENCE = "Apache-2.0"
STDLIB_LICENCE = "PSF-2.0"

# Words a replay passage must not contain (whole words, any case): the corpus's label-revealing
# words plus clinical, demographic and brain-imaging vocabulary, so replay text never hints at a
# subject label nor overlaps the fMRI descriptions.
LABEL_WORDS = tuple(
    sorted(
        set(FORBIDDEN_WORDS)
        | set(
            "male males female females boy boys girl girls gender sexes ages elderly adult "
            "adults child children teenager teenagers infant infants aging ageing "
            "diagnosis diagnoses diagnosed diagnostic patients clinical clinic clinician "
            "psychiatric psychiatry disorders disease diseases illness syndrome symptom "
            "symptoms healthy autism autistic asd schizophrenia schizophrenic adhd bipolar "
            "depression depressive anxiety dementia alzheimer alzheimers parkinson parkinsons "
            "epilepsy "
            "brain brains neuron neurons neural neuroscience fmri mri cortex cortical "
            "hippocampus amygdala scanner scanners bold connectome".split()
        )
    )
)
# chat-assistant boilerplate that is not replayable prose
_ASSISTANT = re.compile(
    r"\b(smollm|hugging ?face|ai assistant|as an ai|language model|i'm sorry|i am sorry|"
    r"i cannot|i can't|paragraph|sentences?|word count|curious reader|encyclopedia|"
    r"beginner)\b",
    re.IGNORECASE,
)
_OPENER = re.compile(
    r"^(sure|certainly|absolutely|of course|here('s| is| are)|title|okay|great)\b", re.IGNORECASE
)
_GREETING = re.compile(r"^(hello|hi|hey|welcome|greetings|dear)\b", re.IGNORECASE)
_LIST_LINE = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)]|[a-z][.)])\s")
_SENTENCE_END = re.compile(r"[.!?](?=[\"')\]]*(?:\s|$))")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_DASHES = str.maketrans({"\u2013": "-", "\u2014": " - ", "\u2026": "..."})


# ------------------------------------------------------------------------------------------
# prompts for the self-generated part: general knowledge, nothing about people's labels,
# medicine or the brain (the topics and templates are data: replay_topics.json)


def read_topics(path: str | os.PathLike = TOPICS_FILE) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(topics, templates) of a topics file: ``{"topics": {group: [topic, ...]}, "templates":
    [template with {topic}, ...]}``; topics in file order, groups flattened."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        topics = tuple(str(t) for group in data["topics"].values() for t in group)
        templates = tuple(str(t) for t in data["templates"])
    except FileNotFoundError:
        raise FmrilmError(f"replay topics file {path} is missing") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FmrilmError(f"replay topics file {path} is unreadable ({exc!r})") from None
    if not topics or not templates or not all("{topic}" in t for t in templates):
        raise FmrilmError(f"replay topics file {path} needs topics and templates with {{topic}}")
    return topics, templates


def replay_prompts(
    seed: int = 0, per_topic: int = 2, topics_file: str | os.PathLike = TOPICS_FILE
) -> list[tuple[str, str]]:
    """(topic, instruction) pairs: ``per_topic`` distinct templates per topic, seeded order."""
    topics, templates = read_topics(topics_file)
    rng = random.Random(seed)
    pairs = []
    for topic in topics:
        for template in rng.sample(templates, min(per_topic, len(templates))):
            pairs.append((topic, template.format(topic=topic)))
    rng.shuffle(pairs)
    return pairs


# ------------------------------------------------------------------------------------------
# cleaning


def label_words_in(text: str) -> list[str]:
    """The :data:`LABEL_WORDS` that occur in ``text`` as whole words."""
    words = set(re.findall(r"[a-z0-9_]+", text.lower()))
    return [w for w in LABEL_WORDS if w in words]


def clean_passage(text: str) -> str | None:
    """One replayable passage from a raw answer, or None.

    Drops openers ("Sure! ..."), headings and list lines, strips markdown and quotes, drops
    later sentences with label words or assistant boilerplate, keeps whole sentences up to
    :data:`MAX_WORDS` words, and rejects passages shorter than :data:`MIN_WORDS` words, greetings
    and repetitive text.
    """
    text = text.translate(_QUOTES).translate(_DASHES).replace("**", "").replace("__", "")
    lines = []
    for raw in text.splitlines():
        line = raw.strip().lstrip("#").strip().strip('"').strip()
        if not line or _LIST_LINE.match(raw):
            continue
        if not lines and (_OPENER.match(line) or line.endswith(":")):
            continue
        if line.endswith(":"):  # a heading inside the answer: keep what came before
            break
        lines.append(line)
    joined = " ".join(" ".join(lines).split())
    if _GREETING.match(joined):
        return None
    kept: list[str] = []
    count = 0
    start = 0
    for m in _SENTENCE_END.finditer(joined):
        sentence = joined[start : m.end()].strip().strip('"').strip()
        start = m.end()
        words = len(sentence.split())
        if count + words > MAX_WORDS:
            break
        if not sentence or label_words_in(sentence) or _ASSISTANT.search(sentence):
            if not kept:  # the opening sentence carries the topic: without it, nothing
                return None
            continue
        kept.append(sentence)
        count += words
    passage = " ".join(kept)
    if count < MIN_WORDS or len(kept) < 2 or not passage[0].isupper() or not passage.isascii():
        return None
    if _repetitive(passage):
        return None
    return passage


def _repetitive(text: str, min_distinct: float = 0.9) -> bool:
    words = re.findall(r"[a-z']+", text.lower())
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    return bool(trigrams) and len(set(trigrams)) < min_distinct * len(trigrams)


def _shingles(text: str, k: int = 6) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}


def dedupe(records: Iterable[dict], max_overlap: float = 0.3) -> list[dict]:
    """Drop exact and near duplicates (share of 6-word shingles above ``max_overlap``)."""
    kept: list[dict] = []
    seen: list[set] = []
    for record in records:
        sh = _shingles(record["text"])
        if any(len(sh & other) > max_overlap * min(len(sh), len(other)) for other in seen):
            continue
        kept.append(record)
        seen.append(sh)
    return kept


# ------------------------------------------------------------------------------------------
# the two sources


def self_generated_passages(
    n: int = 300,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    batch_size: int = 16,
    temperature: float = 0.6,
    max_new_tokens: int = 150,
    model: Any = None,
    tokenizer: Any = None,
    autocast: bool | None = None,
    max_seconds: float | None = None,
    log: Callable[[str], None] | None = None,
    topics_file: str | os.PathLike = TOPICS_FILE,
) -> tuple[list[dict], dict]:
    """Up to ``n`` passages written by the backbone (default: SmolLM2-135M-Instruct).

    Prompts come from :func:`replay_prompts`; each batch samples with
    ``torch.manual_seed(seed * 1_000_003 + batch index)`` (greedy when ``temperature`` is 0), so
    a run is deterministic for a seed on a given machine, torch version and ``autocast``
    setting. Generation stops once ``n`` passages survive cleaning and de-duplication, or after
    the batch that passes ``max_seconds``; the passages are then a prefix of a longer run's, so
    ``n`` = the number kept reproduces them. Returns (records, stats).
    """
    topics, _ = read_topics(topics_file)  # a bad file fails before the backbone loads
    torch = _torch()
    # fmrilm.runtime imports torch: lazy, like the rest of the LLM stack
    from fmrilm.runtime import autocast as bf16_autocast
    from fmrilm.runtime import cpu_has_bf16

    if model is None or tokenizer is None:
        model, tokenizer = load_backbone()
    if autocast is None:
        autocast = cpu_has_bf16()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    heldout_topics = _heldout(sorted(set(topics)), heldout_fraction, seed)
    prompts = replay_prompts(seed, topics_file=topics_file)
    sampling = _sampling(temperature)
    records: list[dict] = []
    seen: list[set] = []
    generated = used = 0
    start = time.perf_counter()
    for b, first in enumerate(range(0, len(prompts), batch_size)):
        if len(records) >= n or (max_seconds and time.perf_counter() - start > max_seconds):
            break
        chunk = prompts[first : first + batch_size]
        batch = _chat_batch(tokenizer, [p for _, p in chunk])
        torch.manual_seed(seed * 1_000_003 + b)
        with torch.inference_mode(), bf16_autocast(autocast):
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )  # fmt: skip
        new = out[:, batch["input_ids"].shape[1] :]
        used += len(chunk)
        generated += int((new != tokenizer.pad_token_id).sum())
        answers = tokenizer.batch_decode(new, skip_special_tokens=True)
        for (topic, _), raw in zip(chunk, answers, strict=True):
            if len(records) < n and (text := _new_passage(raw, seen)) is not None:
                records.append(_self_record(text, topic, heldout_topics))
        if log:
            log(_progress(b, len(records), n, generated, time.perf_counter() - start))
    stats = _generation_stats(used, len(records), generated, time.perf_counter() - start)
    stats.update(temperature=temperature, autocast_bf16=bool(autocast), torch=torch.__version__)
    return records, stats


def _torch() -> Any:
    """torch, or a one-line error with the install command (the LLM stack is optional)."""
    try:
        import torch
    except ImportError as exc:
        raise FmrilmError(f"generating passages needs torch ({exc}); {INSTALL_HINT}") from None
    return torch


def _sampling(temperature: float) -> dict[str, Any]:
    """``generate`` keywords: nucleus sampling at ``temperature``, greedy at 0."""
    sample = temperature > 0
    kwargs: dict[str, Any] = {"do_sample": sample, "repetition_penalty": 1.1}
    if sample:
        kwargs.update(temperature=temperature, top_p=0.9, top_k=None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def _chat_batch(tokenizer: Any, prompts: Sequence[str]) -> Any:
    """The prompts as one padded batch of user turns, ready for the assistant's reply."""
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    return tokenizer(chats, return_tensors="pt", padding=True)


def _new_passage(raw: str, seen: list[set]) -> str | None:
    """The cleaned passage of a raw answer, unless it is unusable or near one in ``seen``
    (which it then joins)."""
    text = clean_passage(raw)
    if text is None:
        return None
    sh = _shingles(text)
    if any(len(sh & o) > 0.3 * min(len(sh), len(o)) for o in seen):
        return None
    seen.append(sh)
    return text


def _self_record(text: str, topic: str, heldout_topics: set[str]) -> dict:
    return {
        "text": text,
        "source": SELF_SOURCE,
        "licence": SELF_LICENCE,
        "split": "heldout" if topic in heldout_topics else "train",
        "topic": topic,
    }


def _progress(b: int, kept: int, n: int, generated: int, elapsed: float) -> str:
    return (
        f"batch {b + 1}: {kept}/{n} passages, {generated} tokens, "
        f"{generated / elapsed:.0f} tokens/s"
    )


def _generation_stats(used: int, kept: int, generated: int, elapsed: float) -> dict[str, Any]:
    return {
        "prompts_used": used,
        "passages_kept": kept,
        "generated_tokens": generated,
        "seconds": round(elapsed, 1),
        "tokens_per_s": round(generated / elapsed, 1) if elapsed > 0 else 0.0,
    }


def stdlib_passages(n: int = 100, seed: int = 0, heldout_fraction: float = 0.2) -> list[dict]:
    """Up to ``n`` prose paragraphs from the docstrings of the running Python's standard library.

    Only pure-Python modules outside the test suites whose source names no other copyright or
    licence are read (so the text is the PSF's), and only paragraphs that read as prose: no code
    characters, identifiers or doctests, complete sentences, no label words.
    """
    lib = Path(sysconfig.get_paths()["stdlib"])
    version = ".".join(map(str, sys.version_info[:3]))
    by_module = _docstring_paragraphs(lib)
    heldout_modules = _heldout(sorted(by_module), heldout_fraction, seed)
    source = f"Python {version} standard library docstring; {_psf_notice(lib)}"
    pool = [
        {
            "text": text,
            "source": source,
            "licence": STDLIB_LICENCE,
            "split": "heldout" if module in heldout_modules else "train",
            "topic": module,
        }
        for module in sorted(by_module)
        for text in by_module[module]
    ]
    pool = dedupe(pool)
    random.Random(seed).shuffle(pool)
    return _few_per_topic(pool, n, per_topic=3)  # so no module dominates


def _docstring_paragraphs(lib: Path) -> dict[str, list[str]]:
    """Module name -> the prose paragraphs of its docstrings (PSF-only sources, no tests)."""
    skip = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "ensurepip"}
    by_module: dict[str, list[str]] = {}
    for path in sorted(lib.glob("*.py")) + sorted(lib.glob("*/*.py")):
        if skip & set(path.relative_to(lib).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        if re.search(r"copyright|licen[cs]e", source, re.IGNORECASE):
            continue
        module = path.relative_to(lib).with_suffix("").as_posix().replace("/", ".")
        module = module.removesuffix(".__init__")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                continue
            for para in re.split(r"\n\s*\n", ast.get_docstring(node) or ""):
                text = " ".join(para.split())
                if _prose(text):
                    by_module.setdefault(module, []).append(text)
    return by_module


def _few_per_topic(pool: Iterable[dict], n: int, per_topic: int) -> list[dict]:
    """The first ``n`` records of ``pool`` taking at most ``per_topic`` of any one topic."""
    counts: dict[str, int] = {}
    chosen = []
    for record in pool:
        if len(chosen) >= n:
            break
        if counts.get(record["topic"], 0) < per_topic:
            counts[record["topic"]] = counts.get(record["topic"], 0) + 1
            chosen.append(record)
    return chosen


def _psf_notice(lib: Path) -> str:
    """The PSF copyright notice the PSF licence asks to retain, read from the interpreter's
    LICENSE.txt (``2001-2023`` for Python 3.11)."""
    try:
        text = " ".join((lib / "LICENSE.txt").read_text(encoding="utf-8").split())
    except OSError:
        text = ""
    m = re.search(r"Copyright \(c\) ((?:\d{4}, )*\d{4}) Python Software Foundation", text)
    years = re.findall(r"\d{4}", m.group(1)) if m else []
    span = f"{years[0]}-{years[-1]} " if years else ""
    return f"Copyright (c) {span}Python Software Foundation; All Rights Reserved"


_CODEY = re.compile(
    r"[=<>{}\[\]\\|`*#@$~^%/]|\(\)|--|\.\.\.|\w_\w|_\b|\b_|\w\.\w|[a-z][A-Z]|\bself\b|"
    r"\b(?:None|True|False|args?|kwargs|str|int|bytes|dict|tuple|func)\b|'|\""
)


def _prose(text: str) -> bool:
    words = text.split()
    return (
        MIN_WORDS <= len(words) <= MAX_WORDS
        and text[0].isupper()
        and text.endswith(".")
        and text.isascii()
        and not _CODEY.search(text)
        and all(ch.isalpha() or ch in " .,;:-()?!" for ch in text)
        and not label_words_in(text)
        and not _ASSISTANT.search(text)
    )


def _heldout(groups: Sequence[str], fraction: float, seed: int) -> set[str]:
    if not 0 < fraction < 1:
        raise FmrilmError(f"heldout fraction must lie strictly between 0 and 1, got {fraction}")
    rng = random.Random(f"heldout-{seed}")
    k = max(1, round(fraction * len(groups))) if groups else 0
    return set(rng.sample(list(groups), k))


# ------------------------------------------------------------------------------------------
# the file


def generate_replay(
    out: str | os.PathLike,
    n: int = 300,
    seed: int = 0,
    stdlib: int = 100,
    heldout_fraction: float = 0.2,
    log: Callable[[str], None] | None = None,
    **generation: Any,
) -> dict:
    """Write the replay set to ``out`` (JSONL, atomically): ``n`` self-generated passages plus
    ``stdlib`` docstring paragraphs. ``generation`` goes to :func:`self_generated_passages`
    (``batch_size``, ``temperature``, ``max_new_tokens``, ``model``, ``tokenizer``,
    ``autocast``, ``max_seconds``, ``topics_file``). Returns a summary (sizes per source and
    split, generation speed).
    """
    if n < 0 or stdlib < 0:
        raise FmrilmError(f"passage counts must be >= 0, got n={n}, stdlib={stdlib}")
    _heldout(["a"], heldout_fraction, seed)  # check the fraction before any generation
    records, stats = (
        self_generated_passages(n, seed, heldout_fraction, log=log, **generation) if n else ([], {})
    )
    records += stdlib_passages(stdlib, seed, heldout_fraction) if stdlib else []
    records = dedupe(records)
    records.sort(key=lambda r: (SPLITS.index(r["split"]), r["source"], r["topic"], r["text"]))
    check_records(records, str(out))
    write_records(out, records)
    summary = {"out": str(out), "passages": len(records), **_sizes(records)}
    if stats:
        summary["generation"] = stats
    return summary


def write_records(out: str | os.PathLike, records: Iterable[dict]) -> None:
    """One JSON object a line (the fields of FIELDS first), written atomically, mode 0644."""
    with atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                ordered = {**{k: record[k] for k in FIELDS}, **record}
                f.write(json.dumps(ordered, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # a data file, readable by all whatever the umask


def _sizes(records: Sequence[dict]) -> dict:
    sizes: dict[str, Any] = {}
    for split in SPLITS:
        part = [r for r in records if r["split"] == split]
        sizes[split] = {
            "passages": len(part),
            "words": sum(len(r["text"].split()) for r in part),
            "by_licence": {
                lic: sum(r["licence"] == lic for r in part)
                for lic in sorted({r["licence"] for r in part})
            },
        }
    return sizes


# ------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python scripts/make_replay.py",
        description="Rebuild the text-replay set (src/fmrilm/model/data/replay_text.jsonl): "
        "passages written by the default backbone plus prose from Python's standard-library "
        "docstrings.",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    parser.add_argument("--n", type=int, default=300, help="self-generated passages (300)")
    parser.add_argument("--stdlib", type=int, default=100, help="docstring paragraphs (100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout-fraction", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.6, help="0: greedy")
    parser.add_argument("--max-new-tokens", type=int, default=150)
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="stop generating after this long"
    )
    parser.add_argument(
        "--topics", type=Path, default=TOPICS_FILE, help="topics and templates (JSON)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.batch_size < 1 or args.max_new_tokens < 1 or args.temperature < 0:
            raise FmrilmError("--batch-size and --max-new-tokens must be >= 1, --temperature >= 0")
        summary = generate_replay(
            args.out,
            n=args.n,
            seed=args.seed,
            stdlib=args.stdlib,
            heldout_fraction=args.heldout_fraction,
            batch_size=args.batch_size,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            max_seconds=args.max_minutes * 60 if args.max_minutes else None,
            topics_file=args.topics,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except FmrilmError as exc:
        print(f"fmrilm: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
