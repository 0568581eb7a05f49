"""Stage 2 (joint fMRI-language model) on held-out scans: prediction, descriptions, language, speed.

Steps:

1. measure this machine's matmul peak (float32 and bfloat16 ``torch.matmul`` of large square
   matrices, best of a few runs) for the MFU denominator;
2. build the **untuned** model (backbone + zero-B LoRA + fMRI rows at their initial embeddings,
   i.e. ``build_model`` before any training) and measure on it: descriptions of
   ``--describe-scans`` held-out scans, held-out temporal prediction, text perplexity;
3. train stage 2 with :func:`fmrilm.recipes.pretrain.run_pretrain` (short preset below, any
   ``key=value`` overrides) into ``--out`` (reused when it already holds a model, unless
   ``--retrain``);
4. on the **test** split with the trained model:

   * temporal prediction: top-1 accuracy / perplexity of the codes of steps 2..n of held-out
     spans (``span_patches`` steps), teacher-forced, vs. the unigram frequency of the training
     codes and copy-the-previous-time-step, on the same targets;
   * description quality: every descriptor claim the generated text states (parsed with
     :func:`fmrilm.corpus.text.extract_claims`) is checked against the scan's JSON record with
     :func:`fmrilm.corpus.text.verify`; reported as claims stated / claims correct, pooled and
     per scan, vs. the untuned model, plus a control that checks the same texts against
     *another* scan's record (how much of the score is scan-specific rather than a prior);
   * language retention: perplexity of held-out plain text before vs. after stage 2;

5. speed: training tokens/s (from the training history), MFU, peak RSS, generation tokens/s.

Usage::

    python benchmarks/pretrain_quality.py [--tokenizer demo-output/tokenizer]
        [--data demo-output/sim] [--corpus demo-output/sim_corpus] [--out runs/bench_pretrain]
        [--retrain] [--json benchmarks/results/pretrain_quality.json] [key=value ...]

Prints one JSON object. ``make demo`` creates the default inputs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from _common import peak_rss_mb, write_result

ROOT = Path(__file__).resolve().parents[1]

# about 35 minutes of training on 2 CPU cores with SmolLM2-135M (interrupted runs resume from
# the last checkpoint); key=value overrides win, e.g. steps=60 warmup=6 for a quick look
PRESET = (
    "steps=200",
    "batch_size=4",
    "span_patches=2",
    "warmup=20",
    "log_every=10",
    "ckpt_every=50",
)

# used only when the shipped replay set (fmrilm.model.replay) is missing: plain sentences
# written for this benchmark, about general topics, never seen in training
FALLBACK_HELDOUT_TEXT = (
    "The old lighthouse stood at the edge of the cliff, and every night its lamp turned slowly "
    "over the dark water so that ships could find the harbour.",
    "Bread rises because yeast feeds on sugar in the dough and releases small bubbles of gas "
    "that are trapped by the stretchy gluten.",
    "In autumn the leaves of many trees turn yellow and red, since the green pigment breaks "
    "down and the other colours that were hidden all summer show through.",
    "A bicycle is easier to balance when it moves, because small turns of the front wheel keep "
    "bringing the wheels back under the rider.",
    "The library opens at nine in the morning, and on weekends it hosts reading groups, chess "
    "clubs and a small market of second-hand books.",
    "Rivers carry sand and stones downstream, and over thousands of years the moving water can "
    "cut deep valleys and wide canyons into solid rock.",
    "To brew a good cup of tea, heat fresh water, warm the pot, and let the leaves steep for a "
    "few minutes before pouring.",
    "The train left the station on time, crossed the long bridge over the bay and reached the "
    "mountain village just after sunset.",
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# machine peak


def matmul_peak(dtype) -> float:
    from fmrilm.runtime import matmul_peak_flops

    return matmul_peak_flops(dtype)


# ------------------------------------------------------------------------------------------
# descriptions


class _AllFacts:
    """rng stand-in for :func:`fmrilm.corpus.text.facts` that adds no random extra network."""

    def random(self) -> float:
        return 1.0

    def integers(self, n: int) -> int:
        return 0


def score_description(text: str, record: dict) -> dict:
    """Claims stated / correct in ``text`` against ``record``.

    :func:`verify` returns (claims checked, problems) where a profile claim ("Within-network
    coupling by network: ...") may add one problem per wrong item, so problems are not claims.
    Each claim is therefore re-rendered alone with its kind's first template and verified on
    its own: correct when verify finds no problem in it.
    """
    from fmrilm.corpus.text import PROFILE_KINDS, TEMPLATES, extract_claims, facts, verify

    claims = extract_claims(text)
    checked, problems = verify(text, record)
    correct = items = items_correct = 0
    for kind, fields in claims:
        single = TEMPLATES[kind][0].text.format(**fields)
        n, errs = verify(single, record)
        correct += int(n >= 1 and not errs)
        if kind in PROFILE_KINDS:  # qualitative only: one word per network (pair)
            k = len(next(iter(fields.values())).split(", "))
            items += k
            items_correct += k - len(errs)
    kinds = sorted({k for k, _ in claims})
    return {
        "claims": len(claims),
        "correct": correct,
        "verify_checked": checked,
        "verify_problems": len(problems),
        "record_facts": len(facts(record, _AllFacts())),
        "profile_items": items,
        "profile_items_correct": items_correct,
        "kinds": kinds,
    }


def summarise_scores(scores: list[dict]) -> dict:
    stated = sum(s["claims"] for s in scores)
    correct = sum(s["correct"] for s in scores)
    per_scan = [s["correct"] / s["claims"] for s in scores if s["claims"]]
    return {
        "scans": len(scores),
        "scans_with_claims": len(per_scan),
        "claims_stated": stated,
        "claims_correct": correct,
        "fraction_correct_pooled": round(correct / stated, 4) if stated else None,
        # scans that state nothing count as 0 correct out of 0: left out of the mean
        "fraction_correct_mean_over_scans": round(float(np.mean(per_scan)), 4)
        if per_scan
        else None,
        # recall-like: correct claims / facts a reference description of the record states
        "correct_per_record_fact": round(
            correct / max(1, sum(s["record_facts"] for s in scores)), 4
        ),
        # the qualitative words of profile sentences ("Default reduced, Visual typical, ...")
        "profile_items_stated": sum(s["profile_items"] for s in scores),
        "profile_items_correct": sum(s["profile_items_correct"] for s in scores),
        "distinct_claim_kinds": sorted({k for s in scores for k in s["kinds"]}),
    }


def evaluate_descriptions(model, text_tok, eval_scans, corpus, span_patches, args, bf16):
    from fmrilm.model.generate import describe_batch
    from fmrilm.tokenizer.codes import complete_steps

    windows, vectors = [], []
    for s in eval_scans:
        w = s.codes[0]
        n = min(span_patches, complete_steps(w))
        windows.append(w[:, :n])
        if s.vectors is not None:  # the continuous ablation
            vectors.append(s.vectors[0][:, :n])
    texts, stats = [], {"generated_tokens": 0, "seconds": 0.0}
    for b in range(0, len(windows), args.gen_batch):
        out, st = describe_batch(
            model,
            text_tok,
            windows[b : b + args.gen_batch],
            vectors=vectors[b : b + args.gen_batch] if vectors else None,
            max_new_tokens=args.max_new_tokens,
            bf16=bf16,
            return_stats=True,
        )
        texts += out
        stats["generated_tokens"] += st["generated_tokens"]
        stats["seconds"] += st["seconds"]
    records = [corpus.record(s.scan_id) for s in eval_scans]
    scores = [score_description(t, r) for t, r in zip(texts, records, strict=True)]
    # control: the same texts against another held-out scan's record
    shifted = records[1:] + records[:1]
    control = [score_description(t, r) for t, r in zip(texts, shifted, strict=True)]
    return {
        "own_record": summarise_scores(scores),
        "other_scan_record_control": summarise_scores(control),
        "generation": {
            "batch_size": args.gen_batch,
            "max_new_tokens": args.max_new_tokens,
            "generated_tokens": stats["generated_tokens"],
            "seconds": round(stats["seconds"], 2),
            "tokens_per_s": round(stats["generated_tokens"] / max(stats["seconds"], 1e-9), 1),
        },
        "examples": [
            {"scan_id": s.scan_id, "text": t[:600], **{k: sc[k] for k in ("claims", "correct")}}
            for s, t, sc in list(zip(eval_scans, texts, scores, strict=True))[: args.examples]
        ],
    }


# ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", type=Path, default=ROOT / "demo-output/tokenizer")
    p.add_argument("--data", type=Path, default=ROOT / "demo-output/sim")
    p.add_argument("--corpus", type=Path, default=ROOT / "demo-output/sim_corpus")
    p.add_argument("--out", type=Path, default=ROOT / "runs/bench_pretrain")
    p.add_argument("--retrain", action="store_true", help="delete --out's model and train again")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--describe-scans", type=int, default=10, help="held-out scans to describe")
    p.add_argument("--eval-scans", type=int, default=40, help="held-out scans for prediction")
    p.add_argument("--eval-spans", type=int, default=128, help="held-out spans (subsampled)")
    p.add_argument("--unigram-scans", type=int, default=0, help="training scans (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--gen-batch", type=int, default=10)
    p.add_argument("--examples", type=int, default=2, help="generated texts shown in the JSON")
    p.add_argument("overrides", nargs="*", help="PretrainConfig key=value (after the preset)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    missing = [
        f"{flag} {path}"
        for flag, path, probe in (
            ("--tokenizer", args.tokenizer, "config.json"),
            ("--data", args.data, "manifest.parquet"),
            ("--corpus", args.corpus, "corpus.json"),
        )
        if not (path / probe).is_file()
    ]
    if missing:
        print(f"error: missing input(s): {'; '.join(missing)} (run `make demo`)", file=sys.stderr)
        return 2

    import torch

    from fmrilm.config import PretrainConfig, load_config, to_dict
    from fmrilm.corpus.build import Corpus
    from fmrilm.data.cohort import Cohort
    from fmrilm.errors import FmrilmError
    from fmrilm.model.fusion import build_model, load_model
    from fmrilm.model.generate import code_counts, code_predictions, held_out_spans, text_perplexity
    from fmrilm.recipes.pretrain import run_pretrain
    from fmrilm.runtime import use_bf16
    from fmrilm.tokenizer import FMRITokenizer
    from fmrilm.tokenizer.codes import encode_scans

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    config = load_config(PretrainConfig, None, list(PRESET) + list(args.overrides))
    notes = []

    # held-out text for language retention
    try:
        from fmrilm.model.replay import load_replay

        heldout_text = load_replay("heldout")
        text_source = "fmrilm.model.replay heldout split"
        load_replay("train")
    except (ImportError, FmrilmError) as exc:
        heldout_text = list(FALLBACK_HELDOUT_TEXT)
        text_source = "fallback plain sentences in benchmarks/pretrain_quality.py"
        notes.append(f"replay set unavailable ({exc}); retention measured on fallback sentences")
        if config.replay_weight > 0:
            config = load_config(
                PretrainConfig, None, list(PRESET) + list(args.overrides) + ["replay_weight=0"]
            )
            notes.append("trained with replay_weight=0 (no replay text)")

    bf16 = use_bf16(config.bf16)
    log("measuring the matmul peak ...")
    peak = {"float32": matmul_peak(torch.float32)}
    if bf16:
        peak["bfloat16"] = matmul_peak(torch.bfloat16)

    fmri_tok = FMRITokenizer.from_pretrained(args.tokenizer)
    cohort = Cohort(args.data)
    corpus = Corpus(args.corpus)
    test = cohort.split("test")
    # a spread of held-out scans: every k-th row (subjects come in blocks of runs)
    pick = np.unique(np.linspace(0, len(test) - 1, args.eval_scans).round().astype(int))
    log(f"encoding {len(pick)} held-out scans ...")
    continuous = config.fmri_input == "continuous"
    eval_scans = encode_scans(fmri_tok, cohort, test.iloc[pick], corpus, with_vectors=continuous)
    described = [s for s in eval_scans if s.texts][: args.describe_scans]
    span_vecs = None
    if continuous:
        spans, span_vecs = held_out_spans(
            [s.codes for s in eval_scans],
            config.span_patches,
            limit=args.eval_spans,
            scan_vectors=[s.vectors for s in eval_scans],
        )
    else:
        spans = held_out_spans(
            [s.codes for s in eval_scans], config.span_patches, limit=args.eval_spans
        )
    train_rows = cohort.split("train")
    if args.unigram_scans:
        train_rows = train_rows.iloc[
            np.unique(np.linspace(0, len(train_rows) - 1, args.unigram_scans).astype(int))
        ]
    log(f"encoding {len(train_rows)} training scans for the unigram reference ...")
    t0 = time.perf_counter()
    train_codes = [s.codes for s in encode_scans(fmri_tok, cohort, train_rows)]
    counts = code_counts((w for c in train_codes for w in c), fmri_tok.config.codebook_size)
    encode_s = time.perf_counter() - t0

    # -- untuned ---------------------------------------------------------------------------
    log("untuned model: descriptions, prediction, text perplexity ...")
    untuned, text_tok = build_model(config, fmri_tok)
    untuned.eval()
    before = {
        "descriptions": evaluate_descriptions(
            untuned, text_tok, described, corpus, config.span_patches, args, bf16
        ),
        "temporal": code_predictions(
            untuned, spans, train_counts=counts, bf16=bf16, vectors=span_vecs
        ),
        "text_perplexity": text_perplexity(untuned, text_tok, heldout_text, bf16=bf16),
        "text_perplexity_fp32": text_perplexity(untuned, text_tok, heldout_text),
    }
    backbone_params = sum(
        p.numel()
        for n, p in untuned.backbone.named_parameters()
        if "embed_tokens" not in n and "lm_head" not in n and "lora_" not in n
    )
    del untuned
    gc.collect()

    # -- train -------------------------------------------------------------------------------
    if args.retrain and args.out.exists():
        if not any((args.out / f).exists() for f in ("config.json", "checkpoint.safetensors")):
            print(f"error: {args.out} is not a stage-2 run folder; not deleting", file=sys.stderr)
            return 2
        shutil.rmtree(args.out)
    trained_now = not (args.out / "config.json").exists()
    if trained_now:
        log(f"training stage 2 into {args.out} ...")
        t0 = time.perf_counter()
        summary = run_pretrain(
            args.tokenizer, args.data, args.out, config, args.corpus, progress=False, log=log
        )
        train_wall = time.perf_counter() - t0
    else:
        notes.append(f"reused the model in {args.out} (pass --retrain to train again)")
        summary = json.loads((args.out / "training.json").read_text())
        train_wall = summary.get("seconds")
    rss_after_training = peak_rss_mb()

    # -- trained -----------------------------------------------------------------------------
    log("trained model: descriptions, prediction, text perplexity ...")
    model, text_tok, _, trained_config = load_model(args.out)
    after = {
        "descriptions": evaluate_descriptions(
            model, text_tok, described, corpus, trained_config.span_patches, args, bf16
        ),
        "temporal": code_predictions(
            model, spans, train_counts=counts, bf16=bf16, vectors=span_vecs
        ),
        "text_perplexity": text_perplexity(model, text_tok, heldout_text, bf16=bf16),
        "text_perplexity_fp32": text_perplexity(model, text_tok, heldout_text),
    }

    # -- speed -------------------------------------------------------------------------------
    history = summary["history"]
    rates = [h["tokens_per_s"] for h in history]
    steady = rates[1:] if len(rates) > 1 else rates
    tokens_per_s = float(np.mean(steady))
    flops_per_token = 6 * backbone_params
    achieved = flops_per_token * tokens_per_s
    train_dtype = "bfloat16" if use_bf16(trained_config.bf16) else "float32"
    # measured again at the end: a busy machine depresses either measurement; keep the best
    peak_start = dict(peak)
    peak_end = {dt: matmul_peak(getattr(torch, dt)) for dt in peak}
    peak = {dt: max(peak_start[dt], peak_end[dt]) for dt in peak}
    mfu = achieved / peak[train_dtype]

    def rnd(x, d=4):
        return None if x is None else round(float(x), d)

    result = {
        "benchmark": "pretrain_quality",
        "inputs": {
            "tokenizer": str(args.tokenizer),
            "data": str(args.data),
            "corpus": str(args.corpus),
            "out": str(args.out),
        },
        "config": to_dict(trained_config),
        "preset": list(PRESET),
        "overrides": list(args.overrides),
        "held_out": {
            "split": "test",
            "scans_for_prediction": len(eval_scans),
            "spans": len(spans),
            "span_patches": trained_config.span_patches,
            "scans_described": len(described),
            "described_window": f"first window, first {trained_config.span_patches} time steps",
            "unigram_training_scans": len(train_rows),
            "unigram_training_codes": int(counts.sum()),
        },
        "temporal_prediction": {
            "targets": "codes of time steps 2..n of each span, teacher-forced",
            "trained": after["temporal"]["model"],
            "untuned": before["temporal"]["model"],
            "unigram": after["temporal"]["unigram"],
            "copy_previous": after["temporal"]["copy_previous"],
            "n_targets": after["temporal"]["targets"],
            "chance_perplexity": fmri_tok.config.codebook_size,
        },
        "description_quality": {
            "how": "claims parsed from the generated text (extract_claims), each verified "
            "against the scan's JSON record (verify); greedy decoding",
            "trained": {k: v for k, v in after["descriptions"].items() if k != "generation"},
            "untuned": {k: v for k, v in before["descriptions"].items() if k != "generation"},
        },
        "language_retention": {
            "texts": text_source,
            "passages": len(heldout_text),
            "perplexity_before": rnd(before["text_perplexity"], 3),
            "perplexity_after": rnd(after["text_perplexity"], 3),
            "perplexity_before_fp32": rnd(before["text_perplexity_fp32"], 3),
            "perplexity_after_fp32": rnd(after["text_perplexity_fp32"], 3),
            "autocast_bf16": bf16,
        },
        "speed": {
            "trained_in_this_run": trained_now,
            "training_wall_s": rnd(train_wall, 1),
            "training_history": history,
            "training_tokens_per_s": rnd(tokens_per_s, 1),
            "training_tokens_per_s_note": "mean of the logged rates after the first log window "
            "(attention-mask tokens of all objectives)",
            "train_dtype": train_dtype,
            "backbone_params_non_embedding": backbone_params,
            "flops_formula": "achieved FLOP/s = (2 N forward + 4 N backward) x tokens/s = "
            "6 N tokens/s, N = backbone parameters outside the embedding table and LM head "
            "(LoRA and fMRI rows excluded); attention-score and LM-head FLOPs not counted, so "
            "MFU is a lower bound. With frozen weights the backward computes activation "
            "gradients only (~2 N), so 4 N tokens/s (mfu_frozen_backward) is the tighter count",
            "achieved_flops_per_s": rnd(achieved / 1e9, 2),
            "achieved_unit": "GFLOP/s",
            "matmul_peak_gflops": {k: rnd(v / 1e9, 1) for k, v in peak.items()},
            "matmul_peak_how": "best of 5 torch.matmul 2048x2048 @ 2048x2048 at the start and "
            "at the end of this process, the higher of the two",
            "matmul_peak_gflops_start": {k: rnd(v / 1e9, 1) for k, v in peak_start.items()},
            "matmul_peak_gflops_end": {k: rnd(v / 1e9, 1) for k, v in peak_end.items()},
            "mfu": rnd(mfu),
            "mfu_frozen_backward": rnd(mfu * 4 / 6),
            "generation_trained": after["descriptions"]["generation"],
            "generation_untuned": before["descriptions"]["generation"],
            "generation_autocast_bf16": bf16,
            "peak_rss_mb_after_training": rnd(rss_after_training, 0),
            "peak_rss_mb": rnd(peak_rss_mb(), 0),
            "encode_training_scans_s": rnd(encode_s, 1),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        },
        "total_s": round(time.perf_counter() - t_start, 1),
        "notes": notes,
    }
    write_result(args.json, result)
    return 0


def _cli() -> int:
    from fmrilm.errors import FmrilmError

    try:
        return main()
    except FmrilmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_cli())
