"""The shipped configuration example stays loadable and equal to the defaults it documents."""

from pathlib import Path

from dcpue.settings import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "config" / "dcpue.example.yaml"


def test_example_config_loads_and_documents_the_defaults(monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("DCPUE_")]:
        monkeypatch.delenv(name)
    assert load_settings(EXAMPLE) == Settings()
