"""How often the local LLM's paraphrases pass the fact check, and how fast it paraphrases.

Paraphrases the first text variant of N descriptions of a simulated cohort with the default
backbone (SmolLM2-135M-Instruct) and :func:`fmrilm.corpus.paraphrase.paraphrase_description`.

    python benchmarks/paraphrase_acceptance.py                        # simulate a cohort, 20 texts
    python benchmarks/paraphrase_acceptance.py --corpus DIR --n 5     # an existing corpus

Prints one JSON object: sentence acceptance rate, rejection reasons (a sentence may have several),
throughput (sentences/s and generated tokens/s), the backbone's first load (GGUF -> safetensors
conversion, into a fresh temporary cache) and cached load times, peak RSS, and a few accepted
examples.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import write_result


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fmrilm", *args], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="corpus folder (default: simulate 12 subjects)")
    parser.add_argument("--n", type=int, default=20, help="descriptions to paraphrase")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    import torch

    from fmrilm.corpus.build import Corpus
    from fmrilm.corpus.paraphrase import Paraphraser
    from fmrilm.corpus.paraphrase import paraphrase_description as paraphrase
    from fmrilm.llm import load_backbone
    from fmrilm.runtime import cpu_has_bf16

    tmp = tempfile.TemporaryDirectory(prefix="fmrilm-paraphrase-")
    corpus_dir = args.corpus
    if corpus_dir is None:
        cohort, corpus_dir = Path(tmp.name) / "cohort", str(Path(tmp.name) / "corpus")
        _cli("data", "simulate", "--out", str(cohort), "--subjects", "12", "--tasks", "1")
        _cli("corpus", "build", str(cohort), "--out", corpus_dir)
    corpus = Corpus(corpus_dir)
    rows = corpus.table[corpus.table["skipped"] == ""].head(args.n)

    # first load converts the GGUF into a fresh cache; the second reads that cache
    os.environ["FMRILM_CACHE"] = str(Path(tmp.name) / "backbones")
    t0 = time.perf_counter()
    load_backbone()
    first_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, tokenizer = load_backbone()
    cached_load = time.perf_counter() - t0

    paraphraser = Paraphraser(model, tokenizer, batch_size=args.batch_size)
    totals, reasons, examples = Counter(), Counter(), []
    t0 = time.perf_counter()
    for i, texts in enumerate(rows["texts"]):
        _, stats = paraphrase(texts[0], paraphraser)
        print(
            f"{i + 1}/{len(rows)}: {stats['accepted']}/{stats['sentences']} accepted, "
            f"{time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        totals.update({k: stats[k] for k in ("sentences", "accepted", "rejected")})
        reasons.update(stats["reasons"])
        examples += stats["replaced"][:1]
    seconds = time.perf_counter() - t0

    result = {
        "descriptions": len(rows),
        "sentences": totals["sentences"],
        "accepted": totals["accepted"],
        "rejected": totals["rejected"],
        "acceptance_rate": round(totals["accepted"] / max(totals["sentences"], 1), 3),
        "rejection_reasons": dict(reasons.most_common()),
        "paraphrase_seconds": round(seconds, 1),
        "sentences_per_s": round(totals["sentences"] / seconds, 2),
        "generated_tokens_per_s": round(paraphraser.generated_tokens / seconds, 1),
        "batch_size": args.batch_size,
        "bf16_autocast": cpu_has_bf16(),
        "first_load_s": round(first_load, 1),
        "cached_load_s": round(cached_load, 2),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "examples": examples[:5],
    }
    write_result(args.out, result)
    tmp.cleanup()


if __name__ == "__main__":
    main()
