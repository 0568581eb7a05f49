"""Optional LLM paraphrasing of template descriptions, checked fact by fact.

A small local LLM rewrites each sentence of a description for lexical variety. A rewrite is kept
only when :func:`check_paraphrase` finds every fact of the original in it: the same numbers
(verbatim), the same network/region names, the same qualitative words (direction and strength,
synonyms allowed), the same measures, each z or t value still labelled as such, and nothing
added (numbers, names, negations, label words). Anything else keeps the template sentence, so a
paraphrased description can never state less, or other, than the record.

The check is deliberately conservative: a faithful rewrite it cannot prove faithful is rejected
(that costs variety, never correctness).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from fmrilm.corpus.text import leaked_labels
from fmrilm.data.networks import NETWORKS

# ------------------------------------------------------------------------------------------
# facts of a sentence

# a number is not part of an identifier (Frontal_Sup_2) nor of a longer number
_NUMBER = re.compile(r"(?<![\w.])[+-]?\d+(?:\.\d+)?%?(?![\w])")
# words; "DorsalAttention-Visual" (a network pair) stays one word, "Event-locked" does not
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:-[A-Z][A-Za-z0-9_]*)*(?:'t)?")
_UNDERSCORE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+$")
_CAMEL_NAME = re.compile(r"^[A-Z][a-z]+(?:[A-Z][a-z0-9]*)+$")
_KNOWN_NAMES = frozenset(NETWORKS)
# capitalised words inside template sentences that are not names
_NOT_NAMES = frozenset({"Fisher", "SNR"})

# word -> direction ("increased" / "reduced") or "typical"
_DIRECTION = {
    **dict.fromkeys(
        "increased elevated higher stronger greater enhanced heightened raised increase "
        "increases above".split(),
        "increased",
    ),
    **dict.fromkeys(
        "reduced decreased lower weaker diminished lowered decrease decreases reduction "
        "reductions below".split(),
        "reduced",
    ),
    **dict.fromkeys("typical normal unremarkable ordinary usual".split(), "typical"),
}
# word -> strength prefix of the qualifier ("markedly " / "slightly ")
_STRENGTH = {
    **dict.fromkeys(
        "markedly strongly substantially considerably greatly highly significantly severely "
        "sharply dramatically much very marked strong substantial considerable large".split(),
        "markedly ",
    ),
    **dict.fromkeys(
        "slightly mildly somewhat modestly marginally bit little slight mild modest "
        "marginal".split(),
        "slightly ",
    ),
    # the scale has no middle word: "moderately increased" matches no qualifier, so is rejected
    **dict.fromkeys("moderately moderate".split(), "moderately "),
}
# "average" is a qualifier only as a predicate ("is average", "average for this cohort"),
# not in "average dwell" or "mean Fisher z"
_AVERAGE_AS_TYPICAL = re.compile(
    r"\b(?:is|are|was|were|remains|remain|appears|appear|seems|looks)\s+(?:about\s+|roughly\s+)?"
    r"average\b|(?<!on )\baverage\b(?=\s*(?:[,.;)]|$|for\b|in\b))",
    re.IGNORECASE,
)
_NEGATIONS = frozenset("not no never neither nor without isn't aren't doesn't don't lacks".split())

# measures a sentence is about: every concept in the original must survive (any spelling)
_CONCEPTS = {
    "modularity": ("modul",),
    "efficiency": ("efficien",),
    "fALFF": ("falff",),
    "SNR": ("snr", "signal-to-noise"),
    "timescale": ("timescale", "time scale", "time-scale"),
    "displacement": ("displacement",),
    "gradient": ("gradient",),
    "hubs": ("hub",),
    "dwell": ("dwell",),
    "transitions": ("transition", "switch"),
    "variability": ("variab",),
    "global signal": ("global signal",),
    "state": ("state",),
    # what is measured: within/between coupling vs. connectivity vs. responses
    "coupling": ("coupl",),
    "connectivity": ("connectiv",),
    "response": ("respons",),
    "amplitude": ("amplitud",),
}
# a value labelled "z = ..." or "t = ..." must stay labelled with the same letter
_TAGGED = re.compile(
    r"\b([zt])(?:[- ]?(?:score|value|statistic))?\s*(?:=|:|of|is|was)\s*$", re.IGNORECASE
)
# "reduced by 0.2" / "increased by a mean z = 0.2" / "increases by: 0.1" turn a level into a change
_BY_NUMBER = re.compile(r"\bby\b[^.]*?[+-]?\d", re.IGNORECASE)
MAX_LENGTH_RATIO = 3.0


def numbers(sentence: str) -> list[str]:
    """Number tokens as written: 0.31, -1.3, +0.7, 12, 45%."""
    return _NUMBER.findall(sentence)


def names(sentence: str) -> list[str]:
    """Network and region names: known networks, CamelCase, underscore tokens, and capitalised
    words that do not start the sentence."""
    out = []
    for i, m in enumerate(_WORD.finditer(sentence)):
        w = m.group()
        if w in _NOT_NAMES:
            continue
        capitalised_inside = i > 0 and w[0].isupper() and not w.isupper()
        if capitalised_inside or all(_is_name(part) for part in w.split("-")):
            out.append(w)
    return out


def _is_name(word: str) -> bool:
    return bool(word in _KNOWN_NAMES or _UNDERSCORE_NAME.match(word) or _CAMEL_NAME.match(word))


def qualifiers(sentence: str) -> list[str]:
    """Qualitative words mapped onto :data:`fmrilm.corpus.text.QUALIFIERS`, in order.

    Words off that scale ("moderately increased") come out as themselves and match nothing.

    A direction word takes the strength of a strength word up to two words before it
    ("markedly reduced", "a slight increase", "much higher").
    """
    words = [m.group().lower() for m in _WORD.finditer(sentence)]
    out = []
    for i, w in enumerate(words):
        direction = _DIRECTION.get(w)
        if direction is None:
            continue
        if direction == "typical":
            out.append("typical")
            continue
        strength = next((_STRENGTH[p] for p in words[max(0, i - 2) : i] if p in _STRENGTH), "")
        out.append(strength + direction)
    out += ["typical"] * len(_AVERAGE_AS_TYPICAL.findall(sentence))
    return out


def concepts(sentence: str) -> set[str]:
    low = sentence.lower()
    return {c for c, spellings in _CONCEPTS.items() if any(s in low for s in spellings)}


def _tags(sentence: str) -> dict[str, str]:
    """number -> 'z' or 't' for numbers written as "z = -1.3", "t-value of 2.1", ..."""
    out = {}
    for m in _NUMBER.finditer(sentence):
        tag = _TAGGED.search(sentence[max(0, m.start() - 16) : m.start()])
        if tag:
            out[m.group()] = tag.group(1).lower()
    return out


def _bindings(sentence: str, pattern: Callable[[str], list[str]]) -> dict[str, str]:
    """name -> the first item (qualifier or number) after it and before the next name."""
    known = set(names(sentence))
    spans = [(m.start(), m.group()) for m in _WORD.finditer(sentence) if m.group() in known]
    out = {}
    for k, (start, name) in enumerate(spans):
        end = spans[k + 1][0] if k + 1 < len(spans) else len(sentence)
        items = pattern(sentence[start + len(name) : end])
        if items:
            out[name] = items[0]
    return out


# ------------------------------------------------------------------------------------------
# the check


def check_paraphrase(original: str, candidate: str, labels: Sequence[str] = ()) -> list[str]:
    """Problems that make ``candidate`` an unfaithful rewrite of ``original`` (empty: accept).

    Each problem starts with a short reason code (``dropped number``, ``flipped qualifier``,
    ...) so rejections can be counted by kind.
    """
    candidate = candidate.strip()
    if not candidate:
        return ["empty"]
    if " ".join(candidate.split()) == " ".join(original.split()):
        return ["unchanged"]
    if len(candidate) > MAX_LENGTH_RATIO * len(original):
        return [f"too long: {len(candidate)} > {MAX_LENGTH_RATIO:g} x {len(original)} characters"]
    problems = []
    orig_nums, cand_nums = numbers(original), numbers(candidate)
    problems += [f"dropped number: {n}" for n in _missing(orig_nums, cand_nums)]
    problems += [f"added number: {n}" for n in sorted(set(cand_nums) - set(orig_nums))]
    orig_names, cand_names = names(original), names(candidate)
    problems += [f"dropped name: {n}" for n in _missing(orig_names, cand_names)]
    problems += [
        f"added name: {n}"
        for n in sorted(set(cand_names) - set(orig_names))
        if all(_is_name(part) for part in n.split("-"))
    ]
    # order carries meaning ("from the Visual network to the Default network", the strongest
    # response first, hubs by strength): keep it
    kept = [n for n in cand_names if n in set(orig_names)]
    if not problems and _first_seen(orig_names) != _first_seen(kept):
        problems.append(f"reordered names: {_first_seen(kept)}")
    orig_q, cand_q = set(qualifiers(original)), set(qualifiers(candidate))
    if orig_q != cand_q:
        problems.append(f"changed qualifier: {sorted(orig_q)} -> {sorted(cand_q)}")
    # with several names, each must keep its own word and number (no swapped pairs)
    for label, pattern in (("qualifier", qualifiers), ("number", numbers)):
        bound = _bindings(original, pattern)
        if len(bound) >= 2:
            got = _bindings(candidate, pattern)
            problems += [
                f"swapped {label}: {n} {v} -> {got.get(n)}"
                for n, v in bound.items()
                if got.get(n) != v
            ]
    orig_tags, cand_tags = _tags(original), _tags(candidate)
    problems += [
        f"relabelled number: {t} = {n}"
        for n, t in orig_tags.items()
        if n in cand_nums and cand_tags.get(n) != t
    ]
    problems += [f"dropped measure: {c}" for c in sorted(concepts(original) - concepts(candidate))]
    problems += [f"added measure: {c}" for c in sorted(concepts(candidate) - concepts(original))]
    # "increased by 0.68" turns a value into a change
    if _BY_NUMBER.search(candidate) and not _BY_NUMBER.search(original):
        problems.append("number as a change: " + _BY_NUMBER.search(candidate).group())
    cand_words = {w.lower() for w in _WORD.findall(candidate)}
    orig_words = {w.lower() for w in _WORD.findall(original)}
    problems += [f"negation: {w}" for w in sorted((cand_words & _NEGATIONS) - orig_words)]
    problems += [f"label word: {w}" for w in leaked_labels(candidate, list(labels))]
    return problems


def _missing(required: list[str], present: list[str]) -> list[str]:
    """Items of ``required`` not in ``present``, counting repeats."""
    return sorted((Counter(required) - Counter(present)).elements())


def _first_seen(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def reason_code(problem: str) -> str:
    """'dropped number: 0.31' -> 'dropped number'."""
    return problem.split(":", 1)[0]


# ------------------------------------------------------------------------------------------
# sentences and descriptions

_SENTENCE_END = re.compile(r"(?<=\.)\s+")


def split_sentences(text: str) -> list[str]:
    """Template sentences end with '.'; numbers contain '.' but never '. '."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def paraphrase_description(
    text: str,
    paraphraser: Callable[[list[str]], list[str]],
    labels: Sequence[str] = (),
) -> tuple[str, dict[str, Any]]:
    """Paraphrase each sentence of ``text``; keep a rewrite only when it passes the check.

    Returns
    -------
    (new_text, stats) where stats holds ``sentences``, ``accepted``, ``rejected``, ``reasons``
    (a Counter of rejection reason codes) and ``replaced``: one dict (index, original,
    paraphrase) per replaced sentence. Sentences not replaced are the template originals, so
    :func:`fmrilm.corpus.text.verify` still parses them; replaced ones were checked here
    against their original instead.
    """
    sentences = split_sentences(text)
    candidates = paraphraser(sentences) if sentences else []
    if len(candidates) != len(sentences):
        raise ValueError(f"paraphraser returned {len(candidates)} texts for {len(sentences)}")
    out, reasons, replaced = [], Counter(), []
    for i, (original, candidate) in enumerate(zip(sentences, candidates, strict=True)):
        problems = check_paraphrase(original, candidate, labels)
        if problems:
            reasons.update({reason_code(p) for p in problems})
            out.append(original)
        else:
            candidate = candidate.strip()
            replaced.append({"index": i, "original": original, "paraphrase": candidate})
            out.append(candidate)
    stats = {
        "sentences": len(sentences),
        "accepted": len(replaced),
        "rejected": len(sentences) - len(replaced),
        "reasons": reasons,
        "replaced": replaced,
    }
    return " ".join(out), stats


# ------------------------------------------------------------------------------------------
# the LLM

INSTRUCTION = (
    "Rewrite this sentence in different words. Keep every number and every name exactly as "
    "written. Sentence: "
)
# two worked examples: a 135M model follows a pattern far better than an instruction alone. They
# come from another domain (weather) so the model does not copy brain-network names from them.
FEW_SHOT = (
    (
        "Rainfall in the NorthCoast region is markedly reduced (12.4 mm, z = -2.1).",
        "The NorthCoast region receives markedly reduced rainfall (12.4 mm, z = -2.1).",
    ),
    (
        "Wind speeds by station: Harbor_A typical, HillTop increased.",
        "Per station, wind speeds are: Harbor_A typical, HillTop increased.",
    ),
)
_PREFIX = re.compile(r"^\s*(?:rewritten|rewrite|paraphrase|sentence|answer)\s*:\s*", re.I)


class Paraphraser:
    """Sentence rewriter around a chat LLM (default: the offline SmolLM2-135M-Instruct).

    Parameters
    ----------
    model, tokenizer
        A causal LM and its tokenizer (with a chat template); both None loads the default
        backbone through :func:`fmrilm.model.load_backbone`.
    temperature
        0 decodes greedily; above 0 samples, seeded by ``seed`` for reproducibility.
    batch_size
        Sentences generated together (left-padded).
    autocast
        bf16 autocast; default: on where the CPU has native bf16 (AMX / AVX512-BF16).
    few_shot
        (sentence, rewrite) example pairs put in the chat before each request.
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        temperature: float = 0.0,
        seed: int = 0,
        batch_size: int = 8,
        autocast: bool | None = None,
        few_shot: Sequence[tuple[str, str]] = FEW_SHOT,
    ):
        # torch and the LLM stack are the optional `llm` extra: imported only when rewriting
        from fmrilm.llm import load_backbone
        from fmrilm.runtime import cpu_has_bf16

        if model is None or tokenizer is None:
            model, tokenizer = load_backbone()
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.temperature, self.seed, self.batch_size = temperature, seed, batch_size
        self.autocast = cpu_has_bf16() if autocast is None else autocast
        self.few_shot = tuple(few_shot)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.generated_tokens = 0  # running total, for throughput reports

    def prompt(self, sentence: str) -> str:
        messages = []
        for source, target in self.few_shot:
            messages += [
                {"role": "user", "content": INSTRUCTION + source},
                {"role": "assistant", "content": target},
            ]
        messages.append({"role": "user", "content": INSTRUCTION + sentence})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def __call__(self, sentences: list[str]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(sentences), self.batch_size):
            out += self._generate(sentences[start : start + self.batch_size])
        return out

    def _generate(self, sentences: list[str]) -> list[str]:
        import torch  # the optional `llm` extra (see __init__)

        tok = self.tokenizer
        tok.padding_side = "left"  # generation appends on the right: pad on the left
        batch = tok([self.prompt(s) for s in sentences], return_tensors="pt", padding=True)
        longest = max(len(tok(s)["input_ids"]) for s in sentences)
        sample = self.temperature > 0
        kwargs = {"do_sample": sample}
        if sample:
            kwargs["temperature"] = self.temperature
            torch.manual_seed(self.seed)
        else:  # silence "temperature is set but do_sample=False" from generation configs
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast),
        ):
            generated = self.model.generate(
                **batch,
                max_new_tokens=2 * longest + 8,
                pad_token_id=tok.pad_token_id,
                **kwargs,
            )
        new = generated[:, batch["input_ids"].shape[1] :]  # (batch, new tokens)
        self.generated_tokens += int((new != tok.pad_token_id).sum())
        texts = tok.batch_decode(new, skip_special_tokens=True)
        return [_clean(t) for t in texts]


def _clean(text: str) -> str:
    """First line of the answer, without a 'Rewritten:' prefix or surrounding quotes."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    line = _PREFIX.sub("", lines[0]) if lines else ""
    return line.strip().strip('"“”').strip()
