"""Text replay: plain English passages that keep the LLM's language ability during stage 2.

Stage 2 teaches the backbone fMRI tokens; mixing in ordinary text ("replay") keeps it from
forgetting language, and a held-out part measures how much it forgot (perplexity before vs.
after). The set ships inside the package (``fmrilm/model/data/replay_text.jsonl``), one JSON
object a line with the fields ``text``, ``source``, ``licence``, ``split`` (``"train"`` or
``"heldout"``) and ``topic``. It mixes two sources the project may carry:

- **self-generated** (Apache-2.0): passages written by the default backbone,
  SmolLM2-135M-Instruct, from prompts about general-knowledge topics (self-rehearsal, as in
  self-distillation work). Fluent but not fact-checked: a language-retention set, not a
  knowledge source;
- **Python standard-library docstrings** (PSF-2.0): prose paragraphs of the docstrings of the
  running interpreter's pure-Python standard library, whitespace normalised (human-written text,
  so the retention measure is not only on the model's own distribution).

Passages are split by topic (self-generated) or module (docstrings), so no topic has passages
on both sides. :func:`generate_replay` rebuilds the file (``python -m fmrilm.model.replay --out
FILE``); see docs/replay.md.
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
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from fmrilm.corpus.text import FORBIDDEN_WORDS
from fmrilm.errors import FmrilmError

SPLITS = ("train", "heldout")
FIELDS = ("text", "source", "licence", "split")
RESOURCE = "data/replay_text.jsonl"  # inside the fmrilm.model package
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
# medicine or the brain

TOPICS = (
    # earth, weather and nature
    "how rainbows form",
    "the water cycle",
    "why the sky is blue",
    "how volcanoes erupt",
    "how glaciers shape valleys",
    "what causes tides",
    "how clouds form",
    "why leaves change colour in autumn",
    "how deserts form",
    "coral reefs",
    "the Amazon rainforest",
    "how rivers carve canyons",
    "thunderstorms and lightning",
    "how snowflakes form",
    "the northern lights",
    "how earthquakes happen",
    "caves and stalactites",
    "wetlands",
    "monsoon rains",
    "how soil is made",
    "sand dunes",
    "tropical cyclones",
    "fog",
    "ocean currents",
    "the tundra",
    "mountain ranges",
    "islands formed by volcanoes",
    # plants and animals
    "how bees make honey",
    "the migration of birds",
    "how plants use sunlight",
    "octopuses",
    "the life of an ant colony",
    "how trees grow rings",
    "penguins",
    "elephants",
    "owls",
    "how spiders spin webs",
    "butterflies and caterpillars",
    "sea turtles",
    "wolves",
    "cacti in the desert",
    "mushrooms and fungi",
    "whales and their songs",
    "dolphins",
    "how seeds travel",
    "camels",
    "beavers and their dams",
    "hummingbirds",
    "bamboo",
    "frogs and tadpoles",
    "honeybee dances",
    "jellyfish",
    "sunflowers",
    "moss and lichen",
    # space and physics
    "the phases of the moon",
    "how stars are born",
    "the planet Mars",
    "Jupiter and its moons",
    "what a black hole is",
    "how the seasons work",
    "comets",
    "the Milky Way",
    "eclipses",
    "how gravity keeps planets in orbit",
    "Saturn's rings",
    "how magnets work",
    "how sound travels",
    "why ice floats",
    "how a lens focuses light",
    "static electricity",
    "friction",
    "how a rocket reaches space",
    "the speed of light",
    "how a rainbow prism splits light",
    "the boiling point of water",
    "how a thermometer works",
    "energy from the sun",
    "how wind turbines make electricity",
    "how batteries store energy",
    # everyday technology
    "how a refrigerator keeps food cold",
    "how a bicycle stays upright",
    "how a lighthouse works",
    "how a compass works",
    "how bridges carry heavy loads",
    "how an elevator works",
    "how a microwave oven heats food",
    "how a camera captures a picture",
    "how a clock keeps time",
    "how paper is made",
    "how glass is made",
    "how a sailboat moves against the wind",
    "how a printing press works",
    "how a telephone carries a voice",
    "how radio works",
    "how the internet sends messages",
    "how email works",
    "how a search engine finds pages",
    "how a pencil is made",
    "how a zipper works",
    "how a lock and key work",
    "how a canal lock lifts boats",
    "how a steam engine works",
    "how trains run on rails",
    "how an aeroplane flies",
    "how a hot air balloon rises",
    "how a submarine dives",
    "how solar panels work",
    "how a washing machine works",
    "how traffic lights work",
    # food and cooking
    "why bread rises",
    "how cheese is made",
    "how to brew a good cup of tea",
    "the history of chocolate",
    "how rice is grown",
    "making soup from vegetables",
    "spices and where they come from",
    "how coffee beans are roasted",
    "baking a simple cake",
    "pasta",
    "how olive oil is made",
    "fermentation in cooking",
    "the tomato",
    "how maple syrup is made",
    "salt and its uses",
    "street food around the world",
    "how apples are harvested",
    "sourdough starters",
    "the potato",
    "a picnic in the park",
    # history, places and culture
    "the invention of paper",
    "the history of the bicycle",
    "the Silk Road",
    "the Great Wall of China",
    "ancient Egyptian pyramids",
    "the Roman aqueducts",
    "Viking ships",
    "the printing of the first books",
    "the history of the Olympic Games",
    "medieval castles",
    "the invention of the telescope",
    "the first railways",
    "lighthouses along the coast",
    "the city of Venice",
    "the history of maps",
    "the invention of writing",
    "windmills in the Netherlands",
    "the history of coins and money",
    "the story of the alphabet",
    "the building of cathedrals",
    "the history of tea",
    "Mount Everest",
    "the river Nile",
    "the Sahara desert",
    "Iceland",
    "Japan's cherry blossom season",
    "the Andes mountains",
    "the Mediterranean Sea",
    "Antarctica",
    # arts, language and games
    "the rules of chess",
    "how an orchestra works together",
    "the piano",
    "the guitar",
    "painting with watercolours",
    "how a novel is written",
    "poetry and rhyme",
    "the history of theatre",
    "folk tales",
    "origami",
    "knitting",
    "pottery on a wheel",
    "photography as a hobby",
    "how a film is made",
    "jazz music",
    "libraries",
    "learning a second language",
    "the game of football",
    "how to play tennis",
    "swimming",
    "marathon running",
    "the game of go",
    "crossword puzzles",
    "board games on a rainy day",
    "kites",
    "the circus",
    "museums",
    "choirs and singing together",
    "calligraphy",
    # society, work and everyday life
    "how a post office delivers letters",
    "gardening in small spaces",
    "recycling",
    "how a town plans its streets",
    "saving money with a budget",
    "how a market works",
    "keeping a journal",
    "how volunteers help a community",
    "the weekly farmers' market",
    "planning a hiking trip",
    "camping under the stars",
    "how a library lends books",
    "the job of a firefighter",
    "the work of a carpenter",
    "the work of a baker",
    "life on a farm",
    "fishing villages",
    "how a newspaper is produced",
    "public parks",
    "cycling to work",
    "the joy of reading",
    "writing a letter to a friend",
    "building a birdhouse",
    "how to tie common knots",
    "keeping bees in a garden",
    # numbers and ideas
    "prime numbers",
    "the number zero",
    "how a calendar is organised",
    "measuring distance",
    "the metric system",
    "probability and dice",
    "geometry in nature",
    "how maps show height",
    "time zones",
    "the scientific method",
    "how a vote is counted",
    "logic puzzles",
)

TEMPLATES = (
    "Write one short paragraph of about 80 words explaining {topic} to a curious reader. "
    "Use plain prose, with no lists or headings.",
    "Describe {topic} in a few clear sentences, as an encyclopedia entry would.",
    "Write a short informative paragraph about {topic}.",
    "Explain {topic} in simple terms, in one paragraph.",
    "In one paragraph of plain prose, explain what is interesting about {topic}.",
)


def replay_prompts(seed: int = 0, per_topic: int = 2) -> list[tuple[str, str]]:
    """(topic, instruction) pairs: ``per_topic`` distinct templates per topic, seeded order."""
    rng = random.Random(seed)
    pairs = []
    for topic in TOPICS:
        for template in rng.sample(TEMPLATES, min(per_topic, len(TEMPLATES))):
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
) -> tuple[list[dict], dict]:
    """Up to ``n`` passages written by the backbone (default: SmolLM2-135M-Instruct).

    Prompts come from :func:`replay_prompts`; each batch samples with
    ``torch.manual_seed(seed * 1_000_003 + batch index)`` (greedy when ``temperature`` is 0), so
    a run is deterministic for a seed on a given machine, torch version and ``autocast``
    setting. Generation stops once ``n`` passages survive cleaning and de-duplication, or after
    the batch that passes ``max_seconds``; the passages are then a prefix of a longer run's, so
    ``n`` = the number kept reproduces them. Returns (records, stats).
    """
    from fmrilm.llm.backbones import _require_llm_stack

    torch, _ = _require_llm_stack()  # a clear install hint when torch is missing

    if model is None or tokenizer is None:
        from fmrilm.llm import load_backbone

        model, tokenizer = load_backbone()
    if autocast is None:
        from fmrilm.runtime import cpu_has_bf16

        autocast = cpu_has_bf16()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    heldout_topics = _heldout(sorted(set(TOPICS)), heldout_fraction, seed)
    prompts = replay_prompts(seed)
    records: list[dict] = []
    seen: list[set] = []
    generated = used = 0
    start = time.perf_counter()
    sample = temperature > 0
    kwargs: dict[str, Any] = {"do_sample": sample, "repetition_penalty": 1.1}
    if sample:
        kwargs.update(temperature=temperature, top_p=0.9, top_k=None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    for b, first in enumerate(range(0, len(prompts), batch_size)):
        if len(records) >= n or (max_seconds and time.perf_counter() - start > max_seconds):
            break
        chunk = prompts[first : first + batch_size]
        chats = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for _, p in chunk
        ]
        batch = tokenizer(chats, return_tensors="pt", padding=True)
        torch.manual_seed(seed * 1_000_003 + b)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **kwargs,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        used += len(chunk)
        generated += int((new != tokenizer.pad_token_id).sum())
        for (topic, _), raw in zip(
            chunk, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True
        ):
            text = clean_passage(raw)
            if text is None or len(records) >= n:
                continue
            sh = _shingles(text)
            if any(len(sh & o) > 0.3 * min(len(sh), len(o)) for o in seen):
                continue
            seen.append(sh)
            records.append(
                {
                    "text": text,
                    "source": SELF_SOURCE,
                    "licence": SELF_LICENCE,
                    "split": "heldout" if topic in heldout_topics else "train",
                    "topic": topic,
                }
            )
        if log:
            elapsed = time.perf_counter() - start
            log(
                f"batch {b + 1}: {len(records)}/{n} passages, {generated} tokens, "
                f"{generated / elapsed:.0f} tokens/s"
            )
    elapsed = time.perf_counter() - start
    stats = {
        "prompts_used": used,
        "passages_kept": len(records),
        "generated_tokens": generated,
        "seconds": round(elapsed, 1),
        "tokens_per_s": round(generated / elapsed, 1) if elapsed > 0 else 0.0,
        "temperature": temperature,
        "autocast_bf16": bool(autocast),
        "torch": torch.__version__,
    }
    return records, stats


def stdlib_passages(n: int = 100, seed: int = 0, heldout_fraction: float = 0.2) -> list[dict]:
    """Up to ``n`` prose paragraphs from the docstrings of the running Python's standard library.

    Only pure-Python modules outside the test suites whose source names no other copyright or
    licence are read (so the text is the PSF's), and only paragraphs that read as prose: no code
    characters, identifiers or doctests, complete sentences, no label words.
    """
    lib = Path(sysconfig.get_paths()["stdlib"])
    version = ".".join(map(str, sys.version_info[:3]))
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
            doc = ast.get_docstring(node)
            for para in re.split(r"\n\s*\n", doc or ""):
                text = " ".join(para.split())
                if _prose(text):
                    by_module.setdefault(module, []).append(text)
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
    rng = random.Random(seed)
    rng.shuffle(pool)
    # at most three paragraphs of one module, so no module dominates
    counts: dict[str, int] = {}
    chosen = []
    for record in pool:
        if len(chosen) >= n:
            break
        if counts.get(record["topic"], 0) < 3:
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
# the shipped file


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
    ``autocast``). Returns a summary (sizes per source and split, generation speed).
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
    _check(records, str(out))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; this is a data file
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    summary = {"out": str(out), "passages": len(records), **_sizes(records)}
    if stats:
        summary["generation"] = stats
    return summary


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
# loading


def replay_path() -> Any:
    """The shipped replay file (an importlib.resources Traversable)."""
    return resources.files("fmrilm.model").joinpath(RESOURCE)


def load_replay_records(path: str | os.PathLike | None = None) -> list[dict]:
    """Every record of the replay file (default: the shipped one), validated."""
    where = str(path) if path is not None else f"fmrilm/model/{RESOURCE}"
    hint = (
        "reinstall fmrilm or rebuild it with `python -m fmrilm.model.replay --out FILE`"
        if path is None
        else "rebuild it with `python -m fmrilm.model.replay --out FILE`"
    )
    source = replay_path() if path is None else Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FmrilmError(f"replay text {where} is missing: {hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FmrilmError(f"replay text {where} is unreadable ({exc}): {hint}") from None
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise FmrilmError(f"replay text {where}:{lineno} is not valid JSON: {hint}") from None
        records.append((lineno, record))
    _check([r for _, r in records], where, [n for n, _ in records])
    return [r for _, r in records]


def _check(records: Sequence[Any], where: str, linenos: Sequence[int] | None = None) -> None:
    if not records:
        raise FmrilmError(f"replay text {where} holds no passages")
    for i, record in enumerate(records):
        at = f"{where}:{linenos[i] if linenos else i + 1}"
        if not isinstance(record, dict):
            raise FmrilmError(f"replay text {at}: expected a JSON object")
        missing = [f for f in FIELDS if not isinstance(record.get(f), str) or not record[f]]
        if missing:
            raise FmrilmError(f"replay text {at}: missing or empty field(s) {', '.join(missing)}")
        if record["split"] not in SPLITS:
            raise FmrilmError(
                f"replay text {at}: split {record['split']!r} is not one of {', '.join(SPLITS)}"
            )
    for split in SPLITS:
        if not any(r["split"] == split for r in records):
            raise FmrilmError(f"replay text {where} has no {split} passages")


def load_replay(split: str = "train", path: str | os.PathLike | None = None) -> list[str]:
    """The replay passages of one split (``"train"`` or ``"heldout"``), in file order."""
    if split not in SPLITS:
        raise FmrilmError(f"replay split must be one of {', '.join(SPLITS)}, got {split!r}")
    return [r["text"] for r in load_replay_records(path) if r["split"] == split]


# ------------------------------------------------------------------------------------------
# command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmrilm.model.replay",
        description="Rebuild the text-replay set: passages written by the default backbone "
        "plus prose from Python's standard-library docstrings.",
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
    args = parser.parse_args(argv)
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
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except FmrilmError as exc:
        print(f"fmrilm: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
