"""Stage-3 tasks and instruction data: training-only fitting, parsing, few-shot, leaks, rows."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from fmrilm.data.atlas import Atlas
from fmrilm.data.cohort import Cohort, CohortWriter
from fmrilm.data.scan import Scan
from fmrilm.errors import FmrilmError
from fmrilm.evaluation.baselines import subject_table
from fmrilm.tasks import (
    Task,
    build_examples,
    context_line,
    fewshot_exemplars,
    format_answers,
    make_example,
    parse_answers,
    resolve_tasks,
    task_rows,
)
from fmrilm.tasks.base import join_candidates
from fmrilm.tasks.facts import fact_class
from fmrilm.tasks.registry import nice_grid

N_SUBJECTS = 30
TRAIN, VAL = range(0, 18), range(18, 24)  # the rest are test subjects
NO_REST = 23  # a validation subject with a motor run only
MOTOR_FIRST = 1  # a subject whose motor run precedes its rest run in the manifest
TEST_ONLY_DX = 24  # the only subject with diagnosis "disorder_C" (a test subject)


def _split(i: int) -> str:
    return "train" if i in TRAIN else "val" if i in VAL else "test"


def _phenotypes(i: int) -> dict:
    dx = "disorder_C" if i == TEST_ONLY_DX else ("control", "disorder_A")[i % 2]
    return {
        "sex": ("F", "M")[i % 2],
        "age": 20.0 + 2 * i,
        "diagnosis": dx,
        "handedness": ("left", "right", "right")[i % 3],
        "score": np.nan if i == 3 else 10.0 + 0.37 * i,
        "constant": "same",
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Cohort:
    root = tmp_path_factory.mktemp("instruct") / "cohort"
    atlas = Atlas(
        "toy",
        pd.DataFrame(
            {
                "name": [f"R{i}" for i in range(4)],
                "x": np.arange(4.0),
                "y": np.zeros(4),
                "z": np.zeros(4),
                "network": ["Default", "Default", "Visual", "Visual"],
            }
        ),
    )
    rng = np.random.default_rng(0)
    with CohortWriter(root, preprocessing={"toy": True}) as w:
        w.add_atlas(atlas)
        for i in range(N_SUBJECTS):
            site, tr = (("siteA", 0.72), ("siteB", 2.0))[i % 2]
            runs = (
                ["motor"]
                if i == NO_REST
                else ["motor", "rest"]
                if i == MOTOR_FIRST
                else ["rest", "motor"]
            )
            for task in runs:
                w.add(
                    Scan(
                        rng.standard_normal((12, 4)).astype(np.float32),
                        tr=tr,
                        subject=f"s{i:02d}",
                        site=site,
                        paradigm="rest" if task == "rest" else "task",
                        task=task,
                        atlas="toy",
                        phenotypes=_phenotypes(i),
                    )
                )
    c = Cohort(root)
    c.set_splits(c.manifest["subject"].map(lambda s: _split(int(s[1:]))))
    return c


class FakeCorpus:
    """Records with known z-scores; scan ids listed in ``missing`` are not in the corpus."""

    def __init__(self, cohort: Cohort, missing: tuple[str, ...] = ()):
        self.missing = set(missing)
        self.ids = cohort.scan_ids

    def record(self, scan_id: str) -> dict:
        if scan_id in self.missing:
            raise FmrilmError(f"no scan {scan_id!r} in the corpus")
        k = self.ids.index(scan_id)
        return {
            "fc.within.Default": {"value": 0.4, "z": 0.96},  # shows as +1.0: increased
            "fc.within.Visual": {"value": 0.3, "z": -0.94},  # shows as -0.9: typical
            "quality.tsnr": {"value": 70.0, "z": -1.5 + 0.1 * k},
            "fc.top_increased": {"value": ["fc.within.Default"], "z": None},  # not scalar
            "quality.duration_s": {"value": 300.0, "z": None},  # no norm
        }

    def texts(self, scan_id: str) -> list[str]:
        if scan_id in self.missing:
            raise FmrilmError(f"no scan {scan_id!r} in the corpus")
        return [f"Description {v} of {scan_id}." for v in range(3)]


def _by_name(tasks: list[Task]) -> dict[str, Task]:
    return {t.name: t for t in tasks}


# -- fitting on the training split ---------------------------------------------------------
def test_candidates_bins_and_grid_are_fitted_on_the_training_split_only(cohort):
    t = _by_name(resolve_tasks(cohort, ["diagnosis", "age", "age_bin", "sex"]))
    dx = t["diagnosis"]
    assert dx.candidates == ("control", "disorder A") and dx.values == ("control", "disorder_A")
    # the test-only class is labelled (scored as wrong, like the baselines) but never offered
    test_rows = task_rows(cohort, dx, "test")
    assert f"s{TEST_ONLY_DX}" in set(test_rows["subject"])
    row = test_rows[test_rows["subject"] == f"s{TEST_ONLY_DX}"].iloc[0]
    assert dx.label(row) == "disorder_C" and dx.answer("disorder_C") == "disorder C"
    assert "disorder C" not in dx.candidate_texts()
    # training ages are 20..54: the grid covers them and not the test ages (68..78)
    grid = t["age"].grid
    assert grid[0] <= 20 and 54 <= grid[-1] < 68 and len(grid) <= 41
    assert t["age"].candidate_texts()[:3] == ("20", "21", "22")
    train_ages = 20.0 + 2 * np.arange(18)
    expected = [round(float(q)) for q in np.quantile(train_ages, [1 / 3, 2 / 3])]
    assert list(t["age_bin"].bins) == expected == [31, 43]
    assert t["age_bin"].candidates == ("20-31 years", "31-43 years", "43-54 years")
    assert t["age_bin"].label(pd.Series({"age": 78.0})) == 2  # beyond training: last bin
    assert t["age_bin"].label(pd.Series({"age": 31.0})) == 1  # an edge opens the upper bin
    assert t["sex"].candidates == ("female", "male") and t["sex"].values == ("F", "M")


def test_phenotype_columns_become_tasks_without_code(cohort):
    t = _by_name(resolve_tasks(cohort, ["handedness", "score", "score_bin"]))
    assert t["handedness"].kind == "classification"
    assert t["handedness"].candidates == ("left", "right")
    assert t["score"].kind == "regression" and t["score"].decimals == 1
    assert t["score"].answer(12.345) == "12.3"
    assert t["score_bin"].kind == "classification" and len(t["score_bin"].candidates) == 3
    everything = [task.name for task in resolve_tasks(cohort, None)]
    for name in ("sex", "age", "age_bin", "diagnosis", "task_state", "site", "handedness", "score"):
        assert name in everything
    # corpus tasks need a corpus, binned variants must be asked for, 1-class columns are skipped
    assert not {"description", "facts", "score_bin", "constant"} & set(everything)
    with pytest.raises(FmrilmError, match=r"unknown task 'weight'.*available: .*handedness"):
        resolve_tasks(cohort, ["weight"])
    with pytest.raises(FmrilmError, match=r"task 'constant'.*1 class.*at least 2"):
        resolve_tasks(cohort, ["constant"])
    with pytest.raises(FmrilmError, match="unknown task 'facts'.*need a corpus"):
        resolve_tasks(cohort, ["facts"])


def test_task_round_trips_through_to_dict(cohort):
    for task in resolve_tasks(cohort, None):
        assert Task.from_dict(task.to_dict()) == task


# -- answers and parsing -------------------------------------------------------------------
def test_questions_render_candidates_and_vary(cohort):
    sex = _by_name(resolve_tasks(cohort, ["sex"]))["sex"]
    rng = np.random.default_rng(0)
    phrasings = {sex.question(None, rng) for _ in range(30)}
    assert len(phrasings) == len(sex.questions) > 1
    assert all("female or male" in q and "{" not in q for q in phrasings)
    assert join_candidates(["a", "b", "c"]) == "a, b or c"


def test_parse_maps_exactly_one_candidate_and_never_guesses(cohort):
    t = _by_name(resolve_tasks(cohort, ["sex", "task_state", "diagnosis", "age"]))
    sex, state, dx, age = t["sex"], t["task_state"], t["diagnosis"], t["age"]
    assert sex.parse("Male.") == "M" and sex.parse("the participant is FEMALE") == "F"
    for bad in ("female or male", "I cannot tell", "", None, "males"):
        assert sex.parse(bad) is None, bad
    assert dx.parse("disorder a") == "disorder_A"
    assert dx.parse("disorder") is None and dx.parse("control, or disorder A") is None
    assert state.candidates == ("motor", "rest")
    assert state.parse("rest") == "rest" and state.parse("motor then rest") is None
    # a candidate inside a longer one is not counted twice
    nested = Task(
        "wm", "classification", "task", "scan", ("?",), ("memory", "working memory"), ("m", "wm")
    )
    assert nested.parse("Working memory.") == "wm" and nested.parse("memory") == "m"
    assert age.parse("about 53 years") == 53.0 and age.parse("-4.5 or 60") == -4.5
    assert age.parse("age-53, not 60") == 53.0 and age.parse("T2 scan") is None
    assert age.parse("no idea") is None
    assert age.answer(52.5) == "52" and age.answer(-0.2) == "0"


def test_numbered_answers_round_trip_and_tolerate_gaps():
    answers = ["male", "53", "disorder A", "20-31 years", "12.5"]
    assert parse_answers(format_answers(answers), len(answers)) == answers
    assert format_answers(["male", "53"]) == "1. male\n2. 53"
    assert parse_answers("1. male\n3. 53", 3) == ["male", None, "53"]
    assert parse_answers("1. male 2. 53.", 2) == ["male", "53."]
    assert parse_answers("1. 53. 2. female", 2) == ["53.", "female"]  # '53.' is no marker
    assert parse_answers("2. male\n1. female", 2) == ["female", "male"]  # lines: any order
    assert parse_answers("2. male 1. female", 2) == [None, "male 1. female"]  # inline: in order
    assert parse_answers("male\n53", 2) == ["male", "53"]  # unnumbered but complete
    assert parse_answers("male", 2) == [None, None]
    assert parse_answers("", 2) == [None, None] and parse_answers(None, 1) == [None]
    assert parse_answers("1.\n2. x", 2) == [None, "x"]


def test_nice_grid_is_round_and_bounded():
    assert nice_grid(18, 90, 0) == tuple(float(x) for x in range(18, 91, 2))
    g = nice_grid(0.013, 0.99, 2)
    assert len(g) <= 41 and g[0] <= 0.013 and g[-1] >= 0.99
    assert nice_grid(5, 5, 0) == (5,)


# -- rows: the same subjects as the baselines -----------------------------------------------
def test_task_rows_match_the_baseline_subject_table(cohort):
    tasks = _by_name(resolve_tasks(cohort, ["sex", "age", "diagnosis", "handedness", "score"]))
    for label, task in tasks.items():
        table = subject_table(cohort, label)
        for split in ("train", "test"):
            ours = task_rows(cohort, task, split)
            theirs = table[table["split"] == split]
            assert ours["scan_id"].tolist() == theirs["scan_id"].tolist(), (label, split)
    sex = tasks["sex"]
    train = task_rows(cohort, sex, "train")
    assert train["task"].eq("rest").all() and train["subject"].is_unique
    assert f"s{MOTOR_FIRST:02d}" in set(train["subject"])  # its rest run, though listed second
    assert "s03" not in set(task_rows(cohort, tasks["score"], "train")["subject"])  # unlabelled
    # a subject without a resting run falls back to its first run (subject_table skips it)
    val = task_rows(cohort, sex, "val")
    fallback = val[val["subject"] == f"s{NO_REST}"]
    assert fallback["task"].tolist() == ["motor"]
    state = _by_name(resolve_tasks(cohort, ["task_state"]))["task_state"]
    assert len(task_rows(cohort, state, "train")) == 2 * len(TRAIN)  # every scan
    with pytest.raises(FmrilmError, match="task 'sex'.*'nope'|split must be"):
        task_rows(cohort, sex, "nope")


def test_empty_task_rows_name_the_task_and_split(cohort):
    corpus = FakeCorpus(cohort, missing=tuple(cohort.manifest["scan_id"]))
    desc = _by_name(resolve_tasks(cohort, ["description"], corpus=corpus))["description"]
    with pytest.raises(FmrilmError, match=r"task 'description': no labelled scans in the 'test'"):
        task_rows(cohort, desc, "test")


# -- corpus tasks ---------------------------------------------------------------------------
def test_fact_labels_follow_the_displayed_z_and_questions_name_the_descriptor(cohort):
    assert [fact_class(z) for z in (0.96, 0.94, -0.94, -1.04, 2.5, 0.0)] == [
        "increased",
        "typical",
        "typical",
        "reduced",
        "increased",
        "typical",
    ]
    missing = cohort.manifest["scan_id"].iloc[0]
    corpus = FakeCorpus(cohort, missing=(missing,))
    facts = _by_name(resolve_tasks(cohort, ["facts"], corpus=corpus))["facts"]
    rows = task_rows(cohort, facts, "train")
    assert missing not in set(rows["scan_id"]) and len(rows) == 2 * len(TRAIN) - 1
    phrases = {
        "fc.within.Default": "within-network connectivity of the Default network",
        "fc.within.Visual": "within-network connectivity of the Visual network",
        "quality.tsnr": "temporal signal-to-noise ratio",
    }
    chosen = set()
    for _, row in rows.iterrows():
        name = facts.descriptor(row)
        chosen.add(name)
        record = corpus.record(row["scan_id"])
        assert facts.label(row) == fact_class(record[name]["z"])
        assert phrases[name] in facts.question(row)
        assert "increased, typical or reduced" in facts.question(row)
    assert chosen == set(phrases)  # both groups asked, never the list or un-normed descriptors
    again = _by_name(resolve_tasks(cohort, ["facts"], corpus=corpus))["facts"]
    assert [again.descriptor(r) for _, r in rows.iterrows()] == [
        facts.descriptor(r) for _, r in rows.iterrows()
    ]


def test_description_answers_are_corpus_texts(cohort):
    corpus = FakeCorpus(cohort)
    examples = build_examples(cohort, ["description"], "val", corpus=corpus, seed=1)
    assert len(examples) == 2 * len(VAL) - 1  # every val scan (NO_REST has one run)
    for ex in examples:
        assert ex.answer in corpus.texts(ex.scan_id) and ex.candidates == ((),)
    variants = {ex.answer.split()[1] for ex in examples}
    assert len(variants) > 1  # not always the first variant


# -- few-shot -------------------------------------------------------------------------------
def test_fewshot_exemplars_are_training_subjects_per_class_never_the_query(cohort):
    t = _by_name(resolve_tasks(cohort, ["sex", "age", "task_state"]))
    sex, age = t["sex"], t["age"]
    query = task_rows(cohort, sex, "train").iloc[0]
    rng = np.random.default_rng(0)
    shots = fewshot_exemplars(cohort, sex, 3, rng, query["subject"])
    assert shots["split"].eq("train").all() and query["subject"] not in set(shots["subject"])
    assert shots["sex"].value_counts().to_dict() == {"F": 3, "M": 3}
    assert len(fewshot_exemplars(cohort, age, 2, rng, None)) == 4  # 2K for regression
    states = fewshot_exemplars(cohort, t["task_state"], 2, rng, None)
    assert states["task"].value_counts().to_dict() == {"motor": 2, "rest": 2}
    ex = make_example(sex, query, rng, shots=shots)
    scans = [v for k, v in ex.segments if k == "scan"]
    assert scans == [*shots["scan_id"], query["scan_id"]] and ex.scan_id == scans[-1]
    for i, (_, shot) in enumerate(shots.iterrows()):
        k = ex.segments.index(("scan", shot["scan_id"]))
        answer = {"F": "female", "M": "male"}[shot["sex"]]
        assert ex.segments[k + 1] == ("text", f"Answer: {answer}\n"), i
    # 9 female training subjects; one of them is the query
    with pytest.raises(FmrilmError, match=r"K=9 but class 'female' .*has only 8 training subjects"):
        fewshot_exemplars(cohort, sex, 9, rng, query["subject"])
    with pytest.raises(FmrilmError, match="query subject"):
        make_example(sex, query, rng, shots=task_rows(cohort, sex, "train").iloc[:2])


# -- context: never the label ---------------------------------------------------------------
def _context_of(example) -> str:
    tail = example.segments[-1][1]
    lines = [line for line in tail.splitlines() if line.startswith("Acquisition:")]
    return lines[0] if lines else ""


def test_context_line_never_reveals_an_asked_label(cohort):
    corpus = FakeCorpus(cohort)
    tasks = resolve_tasks(cohort, None, corpus=corpus)
    names = [t.name for t in tasks]
    assert {"task_state", "site", "facts", "description"} <= set(names)
    rng = np.random.default_rng(0)
    task_words = {"rest", "resting", "task", "motor"}
    seen_context = 0
    for task in tasks:
        for split in ("train", "val", "test"):
            for _, row in task_rows(cohort, task, split).iterrows():
                ex = make_example(task, row, rng, context=True)
                line = _context_of(ex)
                seen_context += bool(line)
                words = set(re.findall(r"[a-z0-9_]+", line.lower()))
                if task.kind == "classification":  # a number may match the TR by chance
                    assert not re.search(
                        r"(?<![\w-])" + re.escape(ex.answer.lower()) + r"(?![\w-])", line.lower()
                    ), (task.name, line)
                assert not {"male", "female", "control", "disorder", "age", "years"} & words
                if task.name == "task_state":
                    assert not task_words & words, line
                if task.name == "site":
                    assert "TR" not in line and "toy" not in line and "site" not in line
    assert seen_context > 100  # the line is there unless a field would leak
    row = task_rows(cohort, _by_name(tasks)["sex"], "train").iloc[0]
    assert context_line(row, [_by_name(tasks)["sex"]]) == (
        "Acquisition: atlas toy (4 regions), TR 0.72 s, resting-state run."
    )
    both = context_line(row, [_by_name(tasks)["site"], _by_name(tasks)["task_state"]])
    assert both is None


# -- data sets ------------------------------------------------------------------------------
def test_build_examples_is_deterministic_mixed_and_answers_parse_back(cohort):
    names = ["sex", "age", "diagnosis", "task_state", "handedness"]
    kw = {"multi_question": 0.5, "context_prob": 0.5}
    a = build_examples(cohort, names, "train", seed=3, **kw)
    b = build_examples(cohort, names, "train", seed=3, **kw)
    c = build_examples(cohort, names, "train", seed=4, **kw)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert [e.to_dict() for e in a] != [e.to_dict() for e in c]
    assert len(a) == 4 * len(TRAIN) + 2 * len(TRAIN)  # subject tasks + every scan for task_state
    manifest = cohort.manifest.set_index("scan_id")
    assert manifest.loc[[e.scan_id for e in a], "task"].nunique() == 2  # rest and task scans
    assert manifest.loc[[e.scan_id for e in a], "split"].eq("train").all()
    assert any(len(e.tasks) > 1 for e in a) and any(len(e.tasks) == 1 for e in a)
    assert any(_context_of(e) for e in a) and any(not _context_of(e) for e in a)
    tasks = _by_name(resolve_tasks(cohort, names))
    for ex in a:
        assert ex.segments[-2] == ("scan", ex.scan_id) and ex.segments[-1][0] == "text"
        replies = [ex.answer] if len(ex.tasks) == 1 else parse_answers(ex.answer, len(ex.tasks))
        if len(ex.tasks) > 1:
            assert re.search(r"\n1\. .*\n2\. ", ex.segments[-1][1])
        for name, label, reply, cands in zip(
            ex.tasks, ex.labels, replies, ex.candidates, strict=True
        ):
            task = tasks[name]
            assert cands == task.candidate_texts()
            if task.kind == "classification":
                assert reply in cands
            parsed = task.parse(reply)
            if task.kind == "regression":
                assert parsed == pytest.approx(label, abs=0.5)
            else:
                assert parsed == label
    # more examples than rows: every row before any repeats
    many = build_examples(cohort, ["sex"], "train", n_per_task=40, seed=0)
    counts = pd.Series([e.scan_id for e in many]).value_counts()
    assert len(many) == 40 and counts.max() - counts.min() <= 1
    with pytest.raises(FmrilmError, match="multi_question"):
        build_examples(cohort, ["sex"], "train", multi_question=1.5)


# -- descriptor lines -------------------------------------------------------------------------
def _record(within: dict, between: dict | None = None, **extra) -> dict:
    rec = {f"fc.within.{k}": {"value": 0.5, "z": z} for k, z in within.items()}
    rec |= {f"fc.between.{k}": {"value": 0.2, "z": z} for k, z in (between or {}).items()}
    rec |= {k: {"value": 1.0, "z": z} for k, z in extra.items()}
    return rec


def test_descriptor_line_states_signal_descriptors_in_words_only():
    from fmrilm.tasks import descriptor_line
    from fmrilm.tasks.prompts import summary_fields

    rec = _record(
        {"Default": 1.2, "Visual": -0.2, "Somatomotor": float("nan")},
        {"Default__Visual": -2.5, "Default__Limbic": 0.1},
        **{"fc.mean": 0.7, "quality.tsnr": 3.0, "task.response.Visual": 9.0},
    )
    line = descriptor_line(rec)
    assert line == (
        "Imaging summary (vs. training norms): internal coupling per network: Default "
        "increased, Visual typical; coupling between networks: Default-Visual markedly reduced "
        "(others typical); mean connectivity slightly increased."
    )
    # quality (tells the site), task responses (read the events table) and NaN never enter
    assert set(summary_fields(rec)) == {
        "fc.within.Default", "fc.within.Visual", "fc.between.Default__Limbic",
        "fc.between.Default__Visual", "fc.mean",
    }  # fmt: skip
    assert descriptor_line({"quality.tsnr": {"z": 1.0}}) is None
    assert "all typical" in descriptor_line(_record({}, {"A__B": 0.1}))


def test_descriptor_lines_follow_each_scan_and_need_the_corpus(cohort):
    corpus = FakeCorpus(cohort)
    tasks = _by_name(resolve_tasks(cohort, None, corpus=corpus))
    rng = np.random.default_rng(0)
    row = task_rows(cohort, tasks["sex"], "test").iloc[0]
    plain = make_example(tasks["sex"], row, rng)
    ex = make_example(tasks["sex"], row, np.random.default_rng(0), corpus=corpus, describe=True)
    line = "Imaging summary (vs. training norms): internal coupling per network: "
    assert ex.segments[-1][1].startswith("\n" + line) and ex.answer == plain.answer
    assert ex.segments[-1][1].endswith(plain.segments[-1][1].lstrip("\n"))  # question unchanged
    shots = fewshot_exemplars(cohort, tasks["sex"], 2, rng, exclude_subject=row["subject"])
    few = make_example(tasks["sex"], row, rng, corpus=corpus, shots=shots, describe=True)
    texts = [v for k, v in few.segments if k == "text"]
    assert sum(t.count(line) for t in texts) == len(shots) + 1  # every scan carries its line
    assert all(t.startswith("\n" + line) and "Answer: " in t for t in texts[1:-1])
    with pytest.raises(FmrilmError, match="corpus"):
        make_example(tasks["sex"], row, rng, describe=True)
    with pytest.raises(FmrilmError, match="descriptor_prob"):
        build_examples(cohort, ["sex"], "train", descriptor_prob=0.5)
    some = build_examples(cohort, ["sex", "task_state"], "train", corpus=corpus,
                          descriptor_prob=0.5)  # fmt: skip
    with_line = [line in e.segments[-1][1] for e in some]
    assert 0 < sum(with_line) < len(some)
    # descriptor_prob=0 leaves the examples exactly as before the option existed
    kw = {"multi_question": 0.5, "context_prob": 0.5, "seed": 3}
    assert [e.to_dict() for e in build_examples(cohort, ["sex", "age"], "train", **kw)] == [
        e.to_dict()
        for e in build_examples(cohort, ["sex", "age"], "train", descriptor_prob=0.0, **kw)
    ]
