"""The site registry loader and the settings loader under malformed files, documents and environments.

Each input either loads into objects whose every number is finite and within its documented bounds, or
fails with :class:`ConfigError` naming the file (or the environment) and the problem: never another
exception, never a silently accepted ``.inf``/``.nan``. tests/core/test_registry.py and test_settings.py
check hand-picked cases; these mutate valid documents anywhere.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from hypothesis import given
from hypothesis import strategies as st

from dcpue.errors import ConfigError
from dcpue.model import Role
from dcpue.registry import Registry, load_registry, parse_registry
from dcpue.settings import Settings, load_settings
from tests.factories import GUI_AN, simple_site

from .profiles import fuzz

REPO = Path(__file__).resolve().parents[2]
BASE_REGISTRY = {"version": 1, "clusters": [GUI_AN], "sites": [simple_site("a", cluster="gui-an"), simple_site("b")]}
BASE_SETTINGS = yaml.safe_load((REPO / "deploy/config/dcpue.example.yaml").read_text(encoding="utf-8"))

# what YAML can put anywhere: every scalar type, including the non-finite floats, and small collections
LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**30), 10**30),
    st.floats(), st.sampled_from([math.inf, -math.inf, math.nan, 0.0, -1.0, 1e308]),
    st.text(max_size=12), st.sampled_from(["", "it", "facility", "kW", "W", "energy", "power", "air", "1.5", "a"]),
)
NODE = st.recursive(LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                    max_leaves=6)


def _paths(doc: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*here, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*here, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """``base`` with 1..4 edits: a node replaced, a key deleted, or a key added, anywhere in the tree."""
    doc: Any = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            if draw(st.integers(0, 9)) == 0:
                doc = draw(NODE)  # the whole document replaced (rarely)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(NODE)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(NODE)
        else:
            parent.insert(path[-1], draw(NODE))
    return doc


def _non_finite(obj: Any, at: str = "") -> list[str]:
    """Where ``obj`` (a model dump) holds a number that is not finite."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{at}={obj}"]
    if isinstance(obj, dict):
        return [w for k, v in obj.items() for w in _non_finite(v, f"{at}.{k}")]
    if isinstance(obj, list | tuple):
        return [w for i, v in enumerate(obj) for w in _non_finite(v, f"{at}[{i}]")]
    return []


def _check_registry(reg: Registry) -> None:
    assert not _non_finite(reg.model_dump())
    assert len({s.id for s in reg.sites}) == len(reg.sites)
    for s in reg.sites:
        assert -90 <= s.latitude <= 90 and -180 <= s.longitude <= 180
        assert 0 <= s.racks_in_service <= s.racks_installed and s.design_it_kw > 0
        assert {Role.FACILITY, Role.IT} <= {p.role for p in s.points}
        assert len({p.id for p in s.points}) == len(s.points)
        assert all(math.isfinite(p.factor) and p.factor > 0 for p in s.points)
    assert reg.points_table.index.is_unique


@fuzz(150)
@given(mutated(BASE_REGISTRY))
def test_a_mutated_registry_loads_consistently_or_fails_with_a_config_error(doc):
    try:
        reg = parse_registry(doc, "fleet.yaml")
    except ConfigError as exc:
        text = str(exc)
        assert text.startswith(("invalid site registry:\n  fleet.yaml: ", "fleet.yaml: ")), text
        return
    _check_registry(reg)


@fuzz(60)
@given(st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode),
                 mutated(BASE_REGISTRY).map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()).flatmap(
                     lambda text: st.integers(0, len(text)).map(lambda cut: text[:cut]))))
def test_any_registry_file_loads_or_fails_with_a_config_error_naming_it(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.yaml"
        path.write_bytes(content)
        try:
            reg = load_registry(path)
        except ConfigError as exc:
            assert str(path) in str(exc)
            return
    _check_registry(reg)


def test_unreadable_registry_files_are_config_errors(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("sites: [{name: Zürich}]".encode("latin-1"))
    (tmp_path / "deep.yaml").write_text("[" * 5000)
    for path, problem in [(tmp_path / "latin1.yaml", "not UTF-8 text"), (tmp_path / "deep.yaml", "nested too deeply"),
                          (tmp_path, "cannot read the site registry file"),
                          (tmp_path / "missing.yaml", "site registry file not found")]:
        try:
            load_registry(path)
        except ConfigError as exc:
            assert str(path) in str(exc) and problem in str(exc), str(exc)
        else:
            raise AssertionError(f"{path} loaded")


def test_non_finite_registry_numbers_are_refused_by_name():
    for where, value in [("design_it_kw", math.inf), ("latitude", math.nan), ("grid_emission_factor", math.inf)]:
        doc = copy.deepcopy(BASE_REGISTRY)
        doc["sites"][0][where] = value
        try:
            parse_registry(doc, "fleet.yaml")
        except ConfigError as exc:
            assert f"site 'a' field '{where}'" in str(exc) and "finite" in str(exc), str(exc)
        else:
            raise AssertionError(f"{where}: {value} accepted")
    for where in ("rated_kw", "rollover"):
        doc = copy.deepcopy(BASE_REGISTRY)
        doc["sites"][0]["points"][0][where] = math.inf
        try:
            parse_registry(doc, "fleet.yaml")
        except ConfigError as exc:
            assert f"point 'facility.main' field '{where}'" in str(exc), str(exc)
        else:
            raise AssertionError(f"{where}: inf accepted")


def test_a_registry_without_sites_is_a_config_error():
    # it used to load, and then Registry.points_table (the worker's first registry check) raised KeyError
    try:
        parse_registry({"sites": []}, "fleet.yaml")
    except ConfigError as exc:
        assert "fleet.yaml: field 'sites'" in str(exc) and "at least 1" in str(exc), str(exc)
    else:
        raise AssertionError("an empty registry loaded")


def test_an_alias_bomb_registry_fails_fast():
    # "billion laughs": nine levels of nine aliases; expanded it would be 9**9 nodes
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    lines += ["sites: [*l8, *l8, *l8]"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.yaml"
        path.write_text("\n".join(lines))
        started = time.perf_counter()
        try:
            load_registry(path)
        except ConfigError:
            pass
        else:
            raise AssertionError("an alias bomb loaded")
        assert time.perf_counter() - started < 10


# -- settings ----------------------------------------------------------------------------------------------


def _check_settings(s: Settings) -> None:
    assert not _non_finite(s.model_dump()), _non_finite(s.model_dump())
    e = s.engine
    assert e.target_pue > 1 and 0 < e.coverage_threshold <= 1 and e.max_gap_s > 0 and e.max_future_s >= 0
    assert 0 <= s.http.port <= 65535 and s.bus.max_poll_records >= 1


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DCPUE_")}


@fuzz(120)
@given(mutated(BASE_SETTINGS))
def test_a_mutated_settings_file_loads_consistently_or_fails_with_a_config_error(doc):
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, _clean_env(), clear=True):
        path = Path(tmp) / "dcpue.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        try:
            s = load_settings(path)
        except ConfigError as exc:
            assert str(path) in str(exc), str(exc)
            return
    _check_settings(s)


ENV_NAME = st.lists(st.sampled_from(["ENGINE", "TARGET_PUE", "MAX_FUTURE_S", "HTTP", "PORT", "BUS", "KAFKA",
                                     "TOPICS", "READINGS", "X", "", "engine"]), min_size=1, max_size=4).map(
    lambda parts: "DCPUE_" + "__".join(parts))
ENV_VALUE = st.one_of(st.sampled_from(["1.25", "inf", "-inf", "nan", "NaN", "1e400", "0", "-1", "9000", "x", "",
                                       "[]", "{}", '{"target_pue": 1.3}', "true"]),
                      st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                              max_size=10))


@fuzz(150)
@given(st.dictionaries(ENV_NAME, ENV_VALUE, max_size=4))
def test_any_dcpue_environment_loads_consistently_or_fails_with_a_config_error(env):
    with mock.patch.dict(os.environ, {**_clean_env(), **env}, clear=True):
        try:
            s = load_settings(None)
        except ConfigError as exc:
            assert "environment" in str(exc), str(exc)
            return
    _check_settings(s)


def test_settings_that_are_not_loadable_are_config_errors_naming_the_file(tmp_path):
    cases = {"inf.yaml": b"engine: {max_future_s: .inf}", "nan.yaml": b"engine: {target_pue: .nan}",
             "intkey.yaml": b"{1: 2}", "latin1.yaml": "log_level: ÉRROR".encode("latin-1"),
             # sections whose models live outside dcpue.settings
             "retirement-inf.yaml": b"retirement: {criteria: {standard_rack_kw: .inf}}",
             "writeback-inf.yaml": b"cooling: {writeback: {s1: {host: h, bounds: {supply_air: [18, .inf]}}}}"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with mock.patch.dict(os.environ, _clean_env(), clear=True):
            try:
                load_settings(tmp_path / name)
            except ConfigError as exc:
                assert name in str(exc), str(exc)
                if "inf" in name or "nan" in name:
                    assert "finite number" in str(exc), str(exc)
            else:
                raise AssertionError(f"{name} loaded")


def test_an_environment_variable_that_is_both_a_value_and_a_section_is_a_config_error():
    env = {**_clean_env(), "DCPUE_ENGINE__TARGET_PUE": "1.3", "DCPUE_ENGINE__TARGET_PUE__X": "1"}
    with mock.patch.dict(os.environ, env, clear=True):
        try:
            load_settings(None)
        except ConfigError as exc:
            assert "DCPUE_ENGINE__TARGET_PUE" in str(exc) and "DCPUE_ENGINE__TARGET_PUE__X" in str(exc), str(exc)
        else:
            raise AssertionError("loaded")
