"""Command line: ``fmrilm data import|simulate|info|split``, ``fmrilm corpus build|norms|show``,
``fmrilm tokenizer train|encode|inspect``, ``fmrilm pretrain``, ``fmrilm instruct``,
``fmrilm eval``, ``fmrilm ask`` and ``fmrilm demo``.

Parsing and dispatch only.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.resources import files
from pathlib import Path

from fmrilm.errors import FmrilmError


def _shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--shard must look like I/N (e.g. 0/4), got {value!r}"
        ) from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {value!r}")
    return i, n


def _positive(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return v


def _fractions(value: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f"--fractions needs three numbers like 0.7,0.1,0.2, got {value!r}"
        )
    return parts  # type: ignore[return-value]


def _config_file(value: str) -> Path:
    """``--config``: a YAML file, or the name of a config shipped with fmrilm (``demo/tokenizer``)."""
    path = Path(value)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = files("fmrilm") / "configs" / f"{value}.yaml"
    return Path(str(shipped)) if shipped.is_file() else path


_TASKS_HELP = "comma-separated tasks or phenotype columns (default: all)"


def build_parser() -> argparse.ArgumentParser:
    from fmrilm import __version__

    p = argparse.ArgumentParser(
        prog="fmrilm", description="fMRI + language foundation model toolkit"
    )
    p.add_argument("--version", action="version", version=f"fmrilm {__version__}")
    sub = p.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for add in (
        _add_data_parser, _add_corpus_parser, _add_tokenizer_parser, _add_pretrain_parser,
        _add_instruct_parser, _add_eval_parser, _add_ask_parser, _add_demo_parser,
    ):  # fmt: skip
        add(sub)
    return p


def _add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="import, simulate and inspect cohorts")
    dsub = data.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    _add_import_parser(dsub)
    _add_simulate_parser(dsub)
    info = dsub.add_parser("info", help="summarise a cohort folder")
    info.add_argument("cohort", type=Path)
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    spl = dsub.add_parser("split", help="(re)assign subject-disjoint train/val/test splits")
    spl.add_argument("cohort", type=Path)
    _add_split_args(spl)
    spl.add_argument(
        "--reassign",
        action="store_true",
        help="re-split every subject (breaks earlier models' splits)",
    )


def _add_import_parser(dsub) -> None:
    imp = dsub.add_parser(
        "import",
        help="import fMRI into a cohort folder",
        description=(
            "SOURCE is builtin:hcp, builtin:gw, a BIDS/fMRIPrep folder, a 4D NIfTI, a CIFTI "
            ".dtseries.nii, or a folder/file of ROI time series (.npy, .csv, .tsv, .h5, .mat)."
        ),
    )
    imp.add_argument("source")
    imp.add_argument("--out", required=True, type=Path, help="cohort folder to create (or extend)")
    imp.add_argument(
        "--atlas", help="aal3 (default for volumes), aal, hcpex, a label image, or a ROI table"
    )
    imp.add_argument("--atlas-labels", help="label table (value name) for an --atlas label image")
    imp.add_argument(
        "--roi-table", help="ROI table (name, x, y, z[, network]) for ROI files with unknown names"
    )
    imp.add_argument(
        "--tr", type=_positive, help="repetition time in seconds (when the source lacks it)"
    )
    imp.add_argument(
        "--phenotypes", help="phenotype table (participant_id + columns) for ROI files"
    )
    imp.add_argument("--key", dest="array_key", help="dataset key inside .h5/.mat files")
    imp.add_argument("--site", default="", help="site label for all imported scans")
    _add_preprocess_args(imp)
    mode = imp.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true", help="add scans to an existing cohort")
    mode.add_argument(
        "--resume", action="store_true", help="skip scans already stored (after an interruption)"
    )
    imp.add_argument("--jobs", type=int, default=1, help="parallel workers (default 1)")
    imp.add_argument(
        "--shard", type=_shard, help="process only part I of N of the runs (for schedulers)"
    )
    _add_split_args(imp)


def _add_simulate_parser(dsub) -> None:
    sim = dsub.add_parser("simulate", help="generate a cohort with known ground truth")
    sim.add_argument("--out", required=True, type=Path)
    sim.add_argument("--subjects", type=int, default=200)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--preset", default="default", help="simulation preset (default, easy, hard)")
    sim.add_argument(
        "--tasks", type=int, default=3, help="task runs per subject besides rest (0-4)"
    )
    sim.add_argument("--jobs", type=int, default=1)
    _add_preprocess_args(sim, sim_defaults=True)
    _add_split_args(sim)


def _add_corpus_parser(sub) -> None:
    corpus = sub.add_parser("corpus", help="build and inspect the descriptive corpus")
    csub = corpus.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    build = csub.add_parser("build", help="descriptors + texts for every scan of a cohort")
    build.add_argument("cohort", type=Path)
    build.add_argument(
        "--out", required=True, type=Path, help="corpus folder (created, or resumed)"
    )
    build.add_argument(
        "--norms", type=Path, help="reuse norms.json fitted on another cohort's training split"
    )
    build.add_argument("--variants", type=int, default=3, help="text variants per scan (default 3)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--part-size", type=int, default=256, help="scans per Parquet part")
    build.add_argument("--jobs", type=int, default=1)
    build.add_argument(
        "--shard", type=_shard, help="build only parts I, I+N, ... (needs norms first)"
    )
    build.add_argument(
        "--paraphrase",
        action="store_true",
        help="add an LLM rewrite of each scan's first text; rewrites that change a fact are rejected (slow)",
    )
    norms = csub.add_parser(
        "norms", help="fit descriptor norms on the training split (before sharded builds)"
    )
    norms.add_argument("cohort", type=Path)
    norms.add_argument(
        "--out", required=True, type=Path, help="corpus folder to write norms.json into"
    )
    norms.add_argument("--seed", type=int, default=0)
    norms.add_argument("--jobs", type=int, default=1)
    show = csub.add_parser("show", help="print one scan's record and texts")
    show.add_argument("corpus", type=Path)
    show.add_argument("scan_id")
    show.add_argument("--json", action="store_true", help="print the record as JSON")


def _add_tokenizer_parser(sub) -> None:
    tokenizer = sub.add_parser("tokenizer", help="stage 1: train and use the neural tokenizer")
    tsub = tokenizer.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    train = tsub.add_parser(
        "train",
        help="train a tokenizer on a cohort's training split (resumes an interrupted run)",
        epilog="Settings: see docs/tokenizer.md or the shipped config tokenizer/default "
        "(--config tokenizer/default). Example: "
        "fmrilm tokenizer train --data runs/sim --corpus runs/corpus --out runs/tok steps=300",
    )
    _add_training_args(
        train, corpus="descriptive corpus (for the text alignment)", out="tokenizer folder"
    )
    enc = tsub.add_parser("encode", help="encode a cohort into a Parquet token table")
    enc.add_argument("--tokenizer", required=True, type=Path)
    enc.add_argument("--data", required=True, type=Path)
    enc.add_argument("--out", required=True, type=Path, help="output .parquet file")
    enc.add_argument("--split", choices=("train", "val", "test"), help="only this split")
    enc.add_argument("--shard", type=_shard, help="only scans I, I+N, ... (e.g. 0/4)")
    ins = tsub.add_parser("inspect", help="write PNGs: training curves, code usage, reconstruction")
    ins.add_argument("tokenizer", type=Path)
    ins.add_argument("--out", type=Path, help="figure folder (default TOKENIZER/figures)")
    ins.add_argument("--data", type=Path, help="cohort for the reconstruction figure")
    ins.add_argument("--scan", help="scan id for the reconstruction (default: first test scan)")


def _add_pretrain_parser(sub) -> None:
    pre = sub.add_parser(
        "pretrain",
        help="stage 2: adapt an LLM to fMRI tokens and text with LoRA (torchrun-ready)",
    )
    pre.add_argument("--tokenizer", required=True, type=Path, help="stage-1 tokenizer folder")
    pre.add_argument("--llm", help="backbone name or folder (default smollm2-135m-instruct)")
    _add_training_args(pre, corpus="descriptive corpus (description objective)", distributed=True)
    pre.set_defaults(command="run")


def _add_instruct_parser(sub) -> None:
    ins = sub.add_parser(
        "instruct", help="stage 3: instruction-tune a stage-2 model on questions about scans"
    )
    ins.add_argument("--model", required=True, type=Path, help="stage-2 model folder")
    ins.add_argument("--tasks", help=_TASKS_HELP)
    ins.add_argument("--held-out", help="comma-separated tasks never trained (zero-shot tests)")
    _add_training_args(ins, corpus="descriptive corpus (description/facts tasks)", distributed=True)
    ins.set_defaults(command="run")


def _add_training_args(
    p: argparse.ArgumentParser, corpus: str, out: str | None = None, distributed: bool = False
) -> None:
    """The flags every training command takes (tokenizer train, pretrain, instruct)."""
    p.add_argument("--data", required=True, type=Path, help="cohort folder")
    p.add_argument("--corpus", type=Path, help=corpus)
    p.add_argument("--out", required=True, type=Path, help=out)
    p.add_argument(
        "--config",
        type=_config_file,
        help="YAML file of settings, or a shipped config's name (e.g. demo/tokenizer)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if distributed:
        p.add_argument(
            "--device",
            default="auto",
            help="auto (GPU of this process if any, else CPU), cpu, cuda",
        )
        p.add_argument(
            "--fsdp",
            action="store_true",
            help="under torchrun: shard the frozen backbone across processes (large backbones)",
        )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="setting overrides")


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser(
        "eval", help="stage 3: score a model's answers on held-out scans next to baselines"
    )
    ev.add_argument("--model", required=True, type=Path, help="stage-2 or stage-3 model folder")
    ev.add_argument("--data", required=True, type=Path, help="cohort folder")
    ev.add_argument("--corpus", type=Path, help="descriptive corpus (retrieval, corpus tasks)")
    ev.add_argument("--tasks", help=_TASKS_HELP)
    ev.add_argument(
        "--mode",
        default="zero-shot",
        help="comma-separated: zero-shot, few-shot, lora, full (full fine-tuning on K subjects "
        "per class), probe (linear model on the tokenizer's embeddings), state-probe (linear "
        "model on the LLM's hidden state at the answer position) (default zero-shot)",
    )
    ev.add_argument(
        "--shots", default="2", help="K labelled subjects per class, e.g. 2,4,8 (few-shot, lora)"
    )
    ev.add_argument(
        "--adapt-steps", type=int, default=30, help="tuning steps per K (lora, full modes)"
    )
    ev.add_argument("--split", default="test", help="held-out split (default test)")
    ev.add_argument("--report", type=Path, help="write report.html, metrics.json and plots here")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--max-scans", type=int, help="evaluate at most N held-out rows per task")
    ev.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    ev.add_argument("--no-free-text", action="store_true", help="skip free-text answers")
    _add_eval_prompt_args(ev)
    ev.add_argument("--no-baselines", action="store_true", help="skip baselines and oracle")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(command="run")


def _add_eval_prompt_args(ev: argparse.ArgumentParser) -> None:
    ev.add_argument(
        "--multi-question",
        action="store_true",
        help="also ask the subject-level tasks together in one prompt (zero-shot)",
    )
    ev.add_argument(
        "--descriptors",
        action="store_true",
        help="add each scan's descriptor summary from --corpus to the prompts (zero-shot is "
        "then scored with and without it)",
    )
    ev.add_argument(
        "--scan-steps",
        help="time steps of each scan a prompt shows: N, or 'all' for the whole scan (default: "
        "the span the model was tuned on, the first window's first span_patches steps)",
    )


def _add_ask_parser(sub) -> None:
    ask = sub.add_parser("ask", help="ask a model a question about one scan")
    ask.add_argument("question", nargs="?", help="free question (or use --task)")
    ask.add_argument("--model", required=True, type=Path)
    ask.add_argument("--scan", required=True, help="a scan id of --data, or a ROI time-series file")
    ask.add_argument("--data", type=Path, help="cohort folder holding --scan")
    ask.add_argument("--atlas", help="atlas name or ROI table for a file (--scan FILE)")
    ask.add_argument("--tr", type=_positive, help="repetition time in s for a file")
    ask.add_argument("--task", help="answer a registry task with its candidates + probabilities")
    ask.add_argument(
        "--corpus",
        type=Path,
        help="descriptive corpus of --data: the scan's descriptor summary goes into the prompt",
    )
    ask.add_argument("--max-new-tokens", type=int, default=160)
    ask.set_defaults(command="run")


def _add_demo_parser(sub) -> None:
    demo = sub.add_parser(
        "demo", help="the end-to-end demo on the embedded data (what make demo runs)"
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"))
    demo.add_argument("--subjects", type=int, default=200)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--jobs", type=int, default=2)
    for stage, what in (("tokenizer", "stage-1"), ("pretrain", "stage-2"), ("instruct", "stage-3")):
        demo.add_argument(
            f"--{stage}-config",
            type=_config_file,
            help=f"{what} settings (default: the shipped demo/{stage})",
        )
    demo.set_defaults(command="run")


def _add_preprocess_args(p: argparse.ArgumentParser, sim_defaults: bool = False) -> None:
    g = p.add_argument_group("preprocessing")
    g.add_argument("--no-detrend", dest="detrend", action="store_false")
    g.add_argument("--high-pass", type=float, default=0.008, help="Hz; 0 disables (default 0.008)")
    g.add_argument("--low-pass", type=float, default=0.0, help="Hz; 0 disables (default)")
    g.add_argument(
        "--target-tr",
        type=float,
        default=0.0,
        help="resample to this TR in s; 0 keeps each scan's TR",
    )
    g.add_argument("--scaling", choices=("robust", "zscore", "none"), default="robust")
    g.add_argument("--min-frames", type=int, default=20)


def _add_split_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("splits")
    g.add_argument(
        "--fractions",
        type=_fractions,
        default=(0.7, 0.1, 0.2),
        help="train,val,test (default 0.7,0.1,0.2)",
    )
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--stratify", help="subject-level column to balance across splits")
    g.add_argument("--site-disjoint", action="store_true", help="keep whole sites in one split")


def _preprocess_config(args: argparse.Namespace):
    from fmrilm.data.preprocess import PreprocessConfig

    return PreprocessConfig(
        detrend=args.detrend,
        high_pass=args.high_pass or None,
        low_pass=args.low_pass or None,
        target_tr=args.target_tr or None,
        scaling=args.scaling,
        min_frames=args.min_frames,
    )


def _split(root: Path, args: argparse.Namespace, reassign: bool = False) -> None:
    from fmrilm.data.cohort import Cohort
    from fmrilm.data.splits import assign_splits

    cohort = Cohort(root)
    splits = assign_splits(
        cohort.manifest,
        fractions=args.fractions,
        seed=args.split_seed,
        stratify=args.stratify,
        by="site" if args.site_disjoint else "subject",
        only_unassigned=not reassign,
    )
    cohort.set_splits(splits)


def cmd_import(args: argparse.Namespace) -> int:
    from fmrilm.data.ingest import ImportOptions, import_source

    if args.jobs < 1:
        raise FmrilmError(f"--jobs must be at least 1, got {args.jobs}")
    options = ImportOptions(
        atlas=args.atlas,
        atlas_labels=args.atlas_labels,
        roi_table=args.roi_table,
        tr=args.tr,
        phenotypes=args.phenotypes,
        array_key=args.array_key,
        site=args.site,
    )
    mode = "append" if args.append else "resume" if args.resume else "create"
    report = import_source(
        args.source,
        args.out,
        options=options,
        config=_preprocess_config(args),
        mode=mode,
        jobs=args.jobs,
        shard=args.shard,
    )
    _split(args.out, args)
    print(
        f"imported {report['added']} scans ({report['skipped']} already stored) into {args.out} in {report['seconds']} s"
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from fmrilm.data.simulate import SimulationConfig, simulate_cohort

    config = SimulationConfig.preset(
        args.preset, n_subjects=args.subjects, seed=args.seed, n_tasks=args.tasks
    )
    report = simulate_cohort(
        args.out, config, preprocess_config=_preprocess_config(args), jobs=args.jobs
    )
    if args.stratify is None:
        args.stratify = "diagnosis"
    _split(args.out, args)
    print(
        f"simulated {report['subjects']} subjects / {report['scans']} scans into {args.out} "
        f"in {report['seconds']} s"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from fmrilm.data.cohort import Cohort, format_summary

    summary = Cohort(args.cohort).summary()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    _split(args.cohort, args, reassign=args.reassign)
    from fmrilm.data.cohort import Cohort

    splits = Cohort(args.cohort).summary()["splits"]
    print(
        "splits: "
        + ", ".join(f"{k}={v['subjects']} subjects/{v['scans']} scans" for k, v in splits.items())
    )
    return 0


def cmd_corpus_build(args: argparse.Namespace) -> int:
    from fmrilm.corpus.build import build_corpus

    if args.jobs < 1 or args.variants < 1 or args.part_size < 1:
        raise FmrilmError("--jobs, --variants and --part-size must be at least 1")
    rep = build_corpus(
        args.cohort,
        args.out,
        norms_path=args.norms,
        jobs=args.jobs,
        shard=args.shard,
        n_variants=args.variants,
        seed=args.seed,
        part_size=args.part_size,
        paraphrase=args.paraphrase,
    )
    print(
        f"corpus: wrote {rep['parts_written']} of {rep['parts_total']} parts ({rep['scans_written']} scans) "
        f"into {args.out} in {rep['seconds']} s"
    )
    return 0


def cmd_corpus_norms(args: argparse.Namespace) -> int:
    from fmrilm.corpus.build import fit_corpus_norms
    from fmrilm.data.cohort import Cohort

    cohort = Cohort(args.cohort)
    if (args.out / "norms.json").exists():
        raise FmrilmError(f"{args.out / 'norms.json'} exists already; remove it to refit the norms")
    norms, _ = fit_corpus_norms(cohort, seed=args.seed, jobs=args.jobs)
    norms.save(args.out / "norms.json")
    print(
        f"wrote {args.out / 'norms.json'} ({', '.join(f'{a}: {n.n_scans} training scans' for a, n in norms.atlases.items())})"
    )
    return 0


def cmd_corpus_show(args: argparse.Namespace) -> int:
    from fmrilm.corpus.build import Corpus
    from fmrilm.corpus.show import format_record

    corpus = Corpus(args.corpus)
    row = corpus.row(args.scan_id)
    if row["skipped"]:
        print(f"{args.scan_id}: skipped ({row['skipped']})")
        return 0
    record = corpus.record(args.scan_id)
    if args.json:
        print(
            json.dumps(
                {"scan_id": args.scan_id, "record": record, "texts": list(row["texts"])}, indent=2
            )
        )
        return 0
    print(format_record(args.scan_id, record, list(row["texts"])))
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from fmrilm.config import TokenizerConfig, load_config
    from fmrilm.recipes.train_tokenizer import train_tokenizer

    config = load_config(TokenizerConfig, args.config, args.overrides)
    train_tokenizer(args.data, args.out, config, corpus=args.corpus, progress=not args.quiet)
    return 0


def cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from fmrilm.recipes.tokenize import encode_cohort

    rep = encode_cohort(args.tokenizer, args.data, args.out, split=args.split, shard=args.shard)
    print(
        f"encoded {rep['scans']} scans ({rep['windows']} windows) into {args.out} "
        f"in {rep['seconds']} s ({rep['scans_per_s']} scans/s)"
    )
    return 0


def cmd_tokenizer_inspect(args: argparse.Namespace) -> int:
    from fmrilm.recipes.tokenize import inspect_tokenizer

    for path in inspect_tokenizer(args.tokenizer, args.out, data=args.data, scan=args.scan):
        print(f"wrote {path}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from fmrilm.config import PretrainConfig, load_config
    from fmrilm.recipes.pretrain import run_pretrain

    overrides = list(args.overrides) + ([f"llm={args.llm}"] if args.llm else [])
    config = load_config(PretrainConfig, args.config, overrides)
    run_pretrain(
        args.tokenizer, args.data, args.out, config, corpus=args.corpus,
        progress=not args.quiet, device=args.device, fsdp=args.fsdp,
    )  # fmt: skip
    return 0


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def cmd_instruct(args: argparse.Namespace) -> int:
    from fmrilm.config import InstructConfig, load_config
    from fmrilm.recipes.instruct import run_instruct

    overrides = list(args.overrides)
    if args.tasks:
        overrides.append(f"tasks={','.join(_names(args.tasks))}")
    if args.held_out:
        overrides.append(f"held_out_tasks={','.join(_names(args.held_out))}")
    config = load_config(InstructConfig, args.config, overrides)
    run_instruct(
        args.model, args.data, args.out, config, corpus=args.corpus, progress=not args.quiet,
        device=args.device, fsdp=args.fsdp,
    )  # fmt: skip
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fmrilm.recipes.evaluate import run_eval

    try:
        shots = [int(k) for k in _names(args.shots)]
    except ValueError:
        raise FmrilmError(f"--shots must be integers like 2,4,8, got {args.shots!r}") from None
    metrics = run_eval(
        args.model, args.data, tasks=_names(args.tasks) or None, modes=_names(args.mode),
        shots=shots, corpus=args.corpus, report=args.report, split=args.split,
        n_boot=args.n_boot, max_rows=args.max_scans, free_text=not args.no_free_text,
        adapt_steps=args.adapt_steps, multi_question=args.multi_question,
        descriptors=args.descriptors,
        scan_steps=args.scan_steps,
        baselines=not args.no_baselines, progress=not args.quiet,
        log=lambda line: print(line, file=sys.stderr),
    )  # fmt: skip
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
    else:
        from fmrilm.evaluation.report import summary_lines

        print("\n".join(summary_lines(metrics)))
    return 0


def _ask_scan(args: argparse.Namespace):
    """(scan or array, atlas, tr) for ``fmrilm ask``."""
    if args.data is not None:
        from fmrilm.data.cohort import Cohort

        cohort = Cohort(args.data)
        row = cohort.row(args.scan)
        return cohort.scan(args.scan), cohort.atlas(row["atlas"]), None
    path = Path(args.scan)
    if not path.is_file():
        raise FmrilmError(f"--scan {args.scan}: no such file (give --data COHORT for a scan id)")
    if not args.atlas or not args.tr:
        raise FmrilmError("--scan FILE needs --atlas (name or ROI table) and --tr (seconds)")
    from fmrilm.data.atlas import load_atlas
    from fmrilm.data.ingest.roi_files import _array_ref, read_array

    return read_array(_array_ref(path, None)), load_atlas(args.atlas), args.tr


def _ask_task(model, args: argparse.Namespace):
    """(Task, note) for ``fmrilm ask --task``: the tuned task, else the cohort's (zero-shot)."""
    from fmrilm.tasks import Task

    tuned = {t["name"]: t for t in (model.info.get("instruct") or {}).get("tasks", [])}
    if args.task in tuned:
        task, note = Task.from_dict(tuned[args.task]), None
    elif args.data is not None:
        from fmrilm.data.cohort import Cohort
        from fmrilm.tasks import resolve_tasks

        task = resolve_tasks(Cohort(args.data), [args.task])[0]
        note = (
            f"the model was not instruction-tuned on {args.task!r}: a zero-shot answer "
            "(candidates from the cohort's training split)"
        )
    else:
        known = ", ".join(sorted(tuned)) or "none (a stage-2 model)"
        raise FmrilmError(
            f"--task {args.task}: the model was not instruction-tuned on it (tasks: {known}); "
            "give --data COHORT for a zero-shot answer, or ask it as a free question"
        )
    if task.kind == "text" or task.label_from == "corpus_fact":
        raise FmrilmError(f"--task {args.task} has scan-specific questions; ask it as a question")
    return task, note


def cmd_ask(args: argparse.Namespace) -> int:
    from fmrilm.model.fusion import FMRILM
    from fmrilm.model.qa import format_choice

    if not args.question and not args.task:
        raise FmrilmError("give a question or --task NAME")
    summary = None
    if args.corpus is not None:
        from fmrilm.corpus.build import Corpus
        from fmrilm.tasks import descriptor_line

        if args.data is None:
            raise FmrilmError("--corpus needs --data and a scan id of that cohort in --scan")
        summary = descriptor_line(Corpus(args.corpus).record(args.scan))
        if summary is None:
            raise FmrilmError(f"--corpus {args.corpus}: scan {args.scan} has no descriptors")
    model = FMRILM.from_pretrained(args.model)
    scan, atlas, tr = _ask_scan(args)
    if summary:
        print(summary, file=sys.stderr)
    if args.task:
        task, note = _ask_task(model, args)
        if note:
            print(f"note: {note}", file=sys.stderr)
        question = args.question or task.question()
        probs = model.choose(
            scan, question, task.candidate_texts(), atlas=atlas, tr=tr, summary=summary
        )
        print(f"Q: {question}")
        print(format_choice(probs, task.kind, decimals=task.decimals, unit=task.unit))
        return 0
    tuned = (model.info.get("instruct") or {}).get("tasks")
    if not tuned:
        print("note: a stage-2 model, trained only to describe scans: other questions are "
              "answered zero-shot", file=sys.stderr)  # fmt: skip
    print(
        model.ask(
            scan, args.question, atlas=atlas, tr=tr, max_new_tokens=args.max_new_tokens,
            summary=summary,
        )
    )  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fmrilm.recipes.demo import run

    stages = ("tokenizer_config", "pretrain_config", "instruct_config")
    configs = {k: getattr(args, k) for k in stages if getattr(args, k) is not None}
    run(args.out, args.subjects, args.seed, args.jobs, **configs)
    return 0


COMMANDS = {
    ("data", "import"): cmd_import,
    ("data", "simulate"): cmd_simulate,
    ("data", "info"): cmd_info,
    ("data", "split"): cmd_split,
    ("corpus", "build"): cmd_corpus_build,
    ("corpus", "norms"): cmd_corpus_norms,
    ("corpus", "show"): cmd_corpus_show,
    ("tokenizer", "train"): cmd_tokenizer_train,
    ("tokenizer", "encode"): cmd_tokenizer_encode,
    ("tokenizer", "inspect"): cmd_tokenizer_inspect,
    ("pretrain", "run"): cmd_pretrain,
    ("instruct", "run"): cmd_instruct,
    ("eval", "run"): cmd_eval,
    ("ask", "run"): cmd_ask,
    ("demo", "run"): cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[(args.group, args.command)](args)
    except FmrilmError as exc:
        print(f"fmrilm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "fmrilm: interrupted; finished work is kept (imports continue with --resume, "
            "training resumes from its last checkpoint when run again)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
