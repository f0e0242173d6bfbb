"""config/README.md documents every config key: generated from the schema, never stale."""

from __future__ import annotations

import yaml

from cvpipe import configdoc


def test_every_schema_key_has_a_description():
    assert configdoc.undescribed() == []


def test_readme_lists_every_key_of_the_schema_and_config():
    readme = configdoc.README.read_text()
    config = yaml.safe_load((configdoc.REPO / "config" / "config.yaml").read_text())

    def keys(tree: dict, prefix: str = "") -> list[str]:
        out = []
        for key, value in tree.items():
            out.append(prefix + key)
            # experiments and synth.train hold `train` keys, documented once under train
            if isinstance(value, dict) and prefix + key not in ("experiments", "synth.train"):
                out += keys(value, f"{prefix}{key}.")
        return out

    for key in keys(config):
        assert f"| `{key}` |" in readme, key
    assert "| `train.augment.hflip` |" in readme and "| `experiments.<name>` |" in readme
    assert "| `synth.train.*` |" in readme


def test_committed_readme_is_the_generated_text():
    """Run `make config-readme` (python -m cvpipe.configdoc) after changing the schema."""
    assert configdoc.README.read_text() == configdoc.render()
