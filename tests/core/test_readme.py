"""The README's registry example is a valid registry (docs stay true to the code)."""

import re
from pathlib import Path

import yaml

from dcpue.registry import parse_registry

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_registry_example_validates():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Site registry", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    registry = parse_registry(yaml.safe_load(block), "README.md")
    assert registry.sites[0].id == "ga-01"
