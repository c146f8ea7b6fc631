"""Site registry validation: every problem names the file, the site/point and what is wrong."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dcpue.errors import ConfigError
from dcpue.registry import dump_registry, load_registry, parse_registry
from tests.factories import GUI_AN, point, simple_site, site


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "sites.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def error_of(tmp_path: Path, doc: dict) -> str:
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_a_valid_registry_loads_and_round_trips(tmp_path):
    doc = {"clusters": [GUI_AN], "sites": [simple_site("a", cluster="gui-an"), simple_site("b")]}
    registry = load_registry(write(tmp_path, doc))
    assert [s.id for s in registry.sites] == ["a", "b"]
    assert registry.points_table.loc[("a", "it.ups"), "it_category"] == 1
    again = parse_registry(yaml.safe_load(dump_registry(registry)))
    assert again == registry


def test_unknown_role_names_site_point_and_valid_roles(tmp_path):
    doc = {"sites": [simple_site("a")]}
    doc["sites"][0]["points"][1]["role"] = "servers"
    message = error_of(tmp_path, doc)
    assert "site 'a' point 'it.ups' field 'role'" in message
    assert "'facility'" in message and "'cooling'" in message  # the valid options are listed


def test_site_without_it_metering_is_rejected(tmp_path):
    doc = {"sites": [site("a", [point("facility.main", "facility", "energy", "kWh")])]}
    message = error_of(tmp_path, doc)
    assert "site 'a'" in message
    assert "no it metering" in message


def test_site_without_facility_metering_is_rejected(tmp_path):
    doc = {"sites": [site("a", [point("it.ups", "it", it_category=1)])]}
    assert "no facility metering" in error_of(tmp_path, doc)


def test_duplicate_site_and_point_ids_are_rejected(tmp_path):
    twice = {"sites": [simple_site("a"), simple_site("a")]}
    assert "site 'a': duplicate site id" in error_of(tmp_path, twice)
    dup_point = copy.deepcopy(simple_site("b"))
    dup_point["points"].append(point("it.ups", "it", it_category=1))
    assert "point 'it.ups': duplicate point id" in error_of(tmp_path, {"sites": [dup_point]})


def test_unit_that_does_not_fit_its_quantity(tmp_path):
    doc = {"sites": [simple_site("a")]}
    doc["sites"][0]["points"][1]["unit"] = "kWh"  # a power point in kWh
    message = error_of(tmp_path, doc)
    assert "site 'a' point 'it.ups'" in message
    assert "unit 'kWh' does not fit quantity 'power'" in message
    assert "kW, W, MW" in message


def test_it_point_needs_its_measurement_category(tmp_path):
    doc = {"sites": [site("a", [point("facility.main", "facility"), point("it.ups", "it")])]}
    assert "it_category" in error_of(tmp_path, doc)


def test_cooling_point_needs_its_subsystem(tmp_path):
    doc = {"sites": [site("a", [point("facility.main", "facility"), point("it.ups", "it", it_category=1),
                                point("cool.x", "cooling")])]}
    message = error_of(tmp_path, doc)
    assert "point 'cool.x'" in message and "cooling_subsystem" in message and "dry_cooler" in message


def test_unknown_cluster_and_impossible_rack_counts(tmp_path):
    assert "unknown cluster 'nowhere'" in error_of(tmp_path, {"sites": [simple_site("a", cluster="nowhere")]})
    message = error_of(tmp_path, {"sites": [simple_site("a", racks_installed=10, racks_in_service=20)]})
    assert "racks_in_service (20) exceeds racks_installed (10)" in message


def test_every_problem_is_reported_at_once(tmp_path):
    doc = {"sites": [simple_site("a"), simple_site("b")]}
    doc["sites"][0]["points"][1]["unit"] = "kWh"
    doc["sites"][1]["latitude"] = 123.0
    message = error_of(tmp_path, doc)
    assert "site 'a'" in message and "site 'b' field 'latitude'" in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_registry(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registry(bad)
