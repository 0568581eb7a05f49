"""TokenizerConfig: defaults <- YAML <- key=value overrides, typed and validated."""

import dataclasses

import pytest

from fmrilm.config import TokenizerConfig, from_dict, load_config, to_dict
from fmrilm.errors import FmrilmError


def test_defaults_yaml_then_overrides_in_that_order(tmp_path):
    path = tmp_path / "tok.yaml"
    path.write_text("steps: 40\nlr: 0.01\ncontrastive: false\nscaling: zscore\nbf16: on\n")
    cfg = load_config(TokenizerConfig, path, ["steps=7", "llm=tiny", "dropout=0.1"])
    assert cfg.steps == 7  # the command line wins over the file
    assert cfg.lr == 0.01 and isinstance(cfg.lr, float)
    assert cfg.contrastive is False and cfg.scaling == "zscore"
    assert cfg.bf16 == "on"  # YAML reads `on` as True; the Literal maps it back
    assert cfg.llm == "tiny" and cfg.dropout == 0.1
    assert cfg.window == TokenizerConfig().window  # untouched settings keep their defaults
    # an int-valued float is an int; an int is a valid float
    cfg = load_config(TokenizerConfig, overrides=["steps=12.0", "tr=1"])
    assert cfg.steps == 12 and isinstance(cfg.steps, int)
    assert cfg.tr == 1.0 and isinstance(cfg.tr, float)
    # an empty YAML file is the defaults
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(TokenizerConfig, empty) == TokenizerConfig()


def test_to_dict_from_dict_round_trip():
    cfg = TokenizerConfig(steps=3, codebook_size=16, scaling="zscore", contrastive=False)
    assert from_dict(TokenizerConfig, to_dict(cfg)) == cfg


def test_unknown_key_names_the_key_the_source_and_a_suggestion(tmp_path):
    with pytest.raises(FmrilmError, match=r"unknown TokenizerConfig setting 'stpes'") as e:
        load_config(TokenizerConfig, overrides=["stpes=3"])
    msg = str(e.value)
    assert "the command line" in msg and "did you mean 'steps'?" in msg and "\n" not in msg
    path = tmp_path / "bad.yaml"
    path.write_text("codebook: 64\n")
    with pytest.raises(FmrilmError) as e:
        load_config(TokenizerConfig, path)
    assert str(path) in str(e.value) and "'codebook'" in str(e.value)
    assert "did you mean 'codebook_size'?" in str(e.value)
    with pytest.raises(FmrilmError, match="'zzz'") as e:
        from_dict(TokenizerConfig, {"zzz": 1})
    assert "did you mean" not in str(e.value)  # nothing close: no made-up suggestion


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("steps=abc", "steps = 'abc' is not a valid int"),
        ("steps=2.5", "steps = 2.5 is not a valid int"),
        ("steps=true", "steps = True is not a valid int"),
        ("lr=fast", "lr = 'fast' is not a valid float"),
        ("contrastive=maybe", "contrastive = 'maybe' is not a valid bool"),
        ("contrastive=1", "contrastive = 1 is not a valid bool"),
        ("llm=[a, b]", "llm = ['a', 'b'] is not a valid str"),
    ],
)
def test_wrong_types_are_one_line_errors(override, fragment):
    with pytest.raises(FmrilmError) as e:
        load_config(TokenizerConfig, overrides=[override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_literal_settings_list_their_choices():
    with pytest.raises(FmrilmError) as e:
        load_config(TokenizerConfig, overrides=["scaling=minmax"])
    assert "scaling must be one of ['robust', 'zscore'], got 'minmax'" in str(e.value)
    with pytest.raises(FmrilmError, match=r"text_encoder must be one of \['minilm', 'llm'\]"):
        load_config(TokenizerConfig, overrides=["text_encoder=bert"])
    assert load_config(TokenizerConfig, overrides=["bf16=off"]).bf16 == "off"
    assert load_config(TokenizerConfig, overrides=["bf16=auto"]).bf16 == "auto"


def test_malformed_overrides_and_files(tmp_path):
    with pytest.raises(FmrilmError, match="must look like key=value"):
        load_config(TokenizerConfig, overrides=["steps"])
    with pytest.raises(FmrilmError, match="must look like key=value"):
        load_config(TokenizerConfig, overrides=["=3"])
    with pytest.raises(FmrilmError, match="does not exist"):
        load_config(TokenizerConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(FmrilmError, match="not valid YAML"):
        load_config(TokenizerConfig, bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- steps\n- lr\n")
    with pytest.raises(FmrilmError, match="expected a mapping of settings, got list"):
        load_config(TokenizerConfig, listing)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["window=30", "patch=8"], "window (30 frames) must be a multiple of patch (8 frames)"),
        (["d_model=30", "n_heads=4"], "d_model (30) must be divisible by n_heads (4)"),
        (["codebook_size=1"], "codebook_size must be at least 2"),
        (["steps=0"], "steps must be at least 1"),
        (["lr=0"], "lr must be > 0"),
        (["tr=-2"], "tr must be > 0"),
        (["roi_dropout=1.0"], "roi_dropout must be in [0, 1)"),
        (["ema_decay=1"], "ema_decay must be in (0, 1)"),
        (["commitment=-0.1"], "commitment must be >= 0"),
    ],
)
def test_validate_rejects_inconsistent_settings(overrides, fragment):
    with pytest.raises(FmrilmError) as e:
        load_config(TokenizerConfig, overrides=overrides)
    assert fragment in str(e.value)
    # the same values set directly are caught by validate() too
    values = {k: v for k, _, v in (o.partition("=") for o in overrides)}
    cfg = load_config(TokenizerConfig)
    for key, raw in values.items():
        field_type = type(getattr(cfg, key))
        setattr(cfg, key, field_type(float(raw)) if field_type is not bool else raw)
    with pytest.raises(FmrilmError):
        cfg.validate()


def test_defaults_are_valid_and_n_patches():
    cfg = TokenizerConfig()
    cfg.validate()
    assert cfg.n_patches == cfg.window // cfg.patch
    assert dataclasses.replace(cfg, window=16, patch=4).n_patches == 4


@pytest.mark.parametrize("value", ["0", "-1"])
def test_grad_clip_must_be_positive(value):
    # clip_grad_norm_(max_norm=0) multiplies every gradient by 0 (training silently does
    # nothing); a negative max_norm flips their sign (gradient ascent)
    with pytest.raises(FmrilmError, match="grad_clip"):
        load_config(TokenizerConfig, overrides=[f"grad_clip={value}"])


def test_exponent_floats_without_a_dot_are_read_as_numbers(tmp_path):
    """YAML 1.1 reads 1e-3 as a string; settings that are floats accept it."""
    from fmrilm.config import PretrainConfig

    cfg = load_config(PretrainConfig, overrides=["lr=1e-3", "new_params_lr=5e-3"])
    assert cfg.lr == 1e-3 and cfg.new_params_lr == 5e-3
    path = tmp_path / "c.yaml"
    path.write_text("lr: 2e-4\n")
    assert load_config(TokenizerConfig, path).lr == 2e-4
    with pytest.raises(FmrilmError, match="lr"):
        load_config(TokenizerConfig, overrides=["lr=fast"])


@pytest.mark.parametrize(
    "name, cls_name",
    [("tokenizer", "TokenizerConfig"), ("pretrain", "PretrainConfig"),
     ("instruct", "InstructConfig")],
)  # fmt: skip
def test_documented_default_configs_equal_the_code_defaults(name, cls_name):
    from importlib.resources import files

    import fmrilm.config as config

    cls = getattr(config, cls_name)
    path = files("fmrilm") / "configs" / name / "default.yaml"
    assert config.load_config(cls, path, []) == cls()
