"""Every sentence's claim matches its number: property tests on random records."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from fmrilm.corpus.text import (
    QUALIFIERS,
    TEMPLATES,
    describe,
    extract_claims,
    fmt_z,
    leaked_labels,
    qualify,
    verify,
)
from fmrilm.data.networks import YEO7

finite = st.floats(min_value=-5, max_value=5, allow_nan=False, allow_infinity=False)
zs = st.floats(min_value=-4, max_value=4, allow_nan=False, allow_infinity=False)


def _d(value, z=None):
    return {"value": value, "z": z, "unit": "", "family": "", "provenance": ""}


@st.composite
def records(draw):
    nets = draw(st.lists(st.sampled_from(YEO7), min_size=2, max_size=7, unique=True))
    rec = {"fc.mean": _d(draw(finite), draw(zs))}
    for n in nets:
        rec[f"fc.within.{n}"] = _d(draw(finite), draw(zs))
        rec[f"spectral.falff.{n}"] = _d(draw(st.floats(0, 1)), draw(zs))
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            rec[f"fc.between.{a}__{b}"] = _d(draw(finite), draw(zs))
    rec["graph.global_efficiency"] = _d(draw(st.floats(0, 1)), draw(zs))
    rec["graph.modularity"] = _d(draw(st.floats(0, 1)), draw(zs))
    rec["graph.n_modules"] = _d(draw(st.integers(1, 9)))
    rec["graph.hubs"] = _d(["Precuneus_L", "Angular_R", "Calcarine_L"])
    rec["gradients.anchor_low"] = _d(nets[0])
    rec["gradients.anchor_high"] = _d(nets[1])
    rec["gradients.principal_range"] = _d(draw(st.floats(0, 2)))
    rec["spectral.timescale_s"] = _d(draw(st.floats(0.5, 20)), draw(zs))
    rec["dynamics.fc_variability"] = _d(draw(st.floats(0, 1)), draw(zs))
    occ = draw(st.lists(st.floats(0, 1), min_size=4, max_size=4))
    rec["dynamics.occupancy"] = _d(occ)
    rec["dynamics.dominant_state"] = _d(int(max(range(4), key=lambda i: occ[i])) + 1)
    rec["dynamics.mean_dwell_s"] = _d(draw(st.floats(1, 100)))
    rec["dynamics.transitions_per_min"] = _d(draw(st.floats(0, 10)))
    rec["quality.fd_mean"] = _d(draw(st.floats(0, 2)), draw(zs))
    if draw(st.booleans()):
        rec["task.strongest_networks"] = _d(nets[:2])
        rec[f"task.response.{nets[0]}"] = _d(draw(st.floats(0, 20)))
        rec[f"task.response.{nets[1]}"] = _d(draw(st.floats(0, 20)))
    return rec


@settings(max_examples=150, deadline=None)
@given(records(), st.integers(0, 5))
def test_every_rendered_claim_matches_the_record(record, variant):
    text = describe(record, "sub-x_task-rest", variant)
    checked, problems = verify(text, record)
    assert problems == []
    # every sentence was parsed back as a claim (nothing unverifiable slipped in)
    assert checked == len(re.findall(r"\.(?:\s|$)", text))  # one parsed claim per sentence
    assert leaked_labels(text, []) == []


@settings(max_examples=100, deadline=None)
@given(records())
def test_a_flipped_qualifier_or_number_is_caught(record):
    text = describe(record, "sub-y", 0)
    claims = extract_claims(text)
    quals = [f["qual"] for _, f in claims if "qual" in f]
    if quals:
        q = quals[0]
        other = next(x for x in QUALIFIERS if x != q)
        bad = (
            text.replace(f" {q} ", f" {other} ", 1)
            if f" {q} " in text
            else text.replace(f"{q}", other, 1)
        )
        assert verify(bad, record)[1], "a wrong qualitative word must be detected"
    zvals = re.findall(r"z = ([+-]\d+\.\d)", text)
    if zvals:
        wrong = fmt_z(float(zvals[0]) + 0.5)
        bad = text.replace(f"z = {zvals[0]}", f"z = {wrong}", 1)
        assert verify(bad, record)[1], "a wrong number must be detected"


@given(zs, zs)
def test_qualifiers_are_monotone_in_z(z1, z2):
    order = {q: i for i, q in enumerate(QUALIFIERS)}  # from most increased to most reduced
    if z1 <= z2:
        assert order[qualify(z1)] >= order[qualify(z2)]


def test_the_word_follows_the_displayed_z():
    text = describe({"fc.mean": _d(0.2, -0.96)}, "s", 0)
    assert "z = -1.0" in text and "is reduced" in text


def test_thresholds_are_the_documented_ones():
    assert qualify(0.49) == "typical" and qualify(-0.49) == "typical"
    assert qualify(0.5) == "slightly increased" and qualify(-0.5) == "slightly reduced"
    assert qualify(1.0) == "increased" and qualify(-1.99) == "reduced"
    assert qualify(2.0) == "markedly increased" and qualify(-2.0) == "markedly reduced"


def test_templates_never_name_labels():
    for options in TEMPLATES.values():
        for t in options:
            assert leaked_labels(t.text, []) == [], t.text


def test_leak_detector_finds_label_values_and_words():
    assert leaked_labels("The Default network is typical.", ["M", "disorder_A"]) == []
    assert "disorder_A" in leaked_labels("consistent with disorder_A", ["disorder_A"])
    assert "female" in leaked_labels("a female participant", [])
    assert "left_hand" in leaked_labels("responses to left_hand blocks", ["left_hand"])
