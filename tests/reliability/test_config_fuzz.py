"""Fuzzing config dictionaries: every input either validates or raises fedsb's own error, nothing else."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsb.config import ALIASES, RunConfig, from_dict, overrides_to_dict, validate
from fedsb.config import SECTIONS as CONFIG_SECTIONS
from fedsb.errors import FedsbError

SECTIONS = {name: list(model.model_fields) for name, model in CONFIG_SECTIONS.items()}
TOP = [name for name in RunConfig.model_fields if name not in SECTIONS]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["fed-sb", "fedit", "iid", "off", "sample", "cpu", "auto", "0", "1e-3", "nan"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=6)
section_key = st.sampled_from([f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks] + TOP)
odd_keys = st.one_of(st.text(max_size=10), st.integers(), st.sampled_from(["federaton", "rnak", "adapter.", "dp.eps"]))


@st.composite
def config_dicts(draw):
    data: dict = {}
    for dotted in draw(st.lists(section_key, max_size=8)):
        sec, _, key = dotted.partition(".")
        if key:
            table = data.setdefault(sec, {})
            if isinstance(table, dict):
                table[key] = draw(values)
        else:
            data[sec] = draw(values)
    if draw(st.booleans()):
        data[draw(odd_keys)] = draw(values)
    if draw(st.booleans()) and SECTIONS:
        sec = draw(st.sampled_from(sorted(SECTIONS)))
        data[sec] = draw(st.one_of(values, st.dictionaries(odd_keys, values, max_size=3)))
    return data


def check(data) -> None:
    try:
        cfg = validate(from_dict(data))
    except FedsbError as e:
        msg = str(e)
        assert msg and "\n" not in msg, msg
        return
    assert isinstance(cfg, RunConfig)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_dicts())
def test_config_dicts_validate_or_raise_fedsb_error(data):
    check(data)


@settings(max_examples=200, deadline=None)
@given(st.one_of(values, st.lists(values), st.text()))
def test_non_table_inputs_raise_fedsb_error(data):
    check(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.sampled_from(list(ALIASES)), section_key, st.text(max_size=12)), st.text(max_size=12)),
                max_size=5))
def test_command_line_overrides_validate_or_raise_fedsb_error(pairs):
    try:
        data = overrides_to_dict(pairs)
    except FedsbError:
        return
    check(data)


toml_lines = st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k} = {v}", section_key.map(lambda k: k.split(".")[-1]),
              st.sampled_from(["1", "-3", "0.5", "nan", "inf", "true", '"x"', "[1, 2]", "{a = 1}", "1e999", "99999999999999999999"])),
    st.sampled_from([f"[{s}]" for s in SECTIONS] + ["[nope]", "[[federation]]", "["]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(toml_lines, max_size=8))
def test_config_files_validate_or_raise_fedsb_error(tmp_path, lines):
    from fedsb.config import resolve

    path = tmp_path / "fuzz.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        cfg = resolve(str(path), [])
    except FedsbError as e:
        assert str(e) and "\n" not in str(e), str(e)
        return
    assert isinstance(cfg, RunConfig)
