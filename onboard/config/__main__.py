"""`python -m onboard.config`, from the repository's root: rewrite the files generated from the
settings models (docs/reference/configuration.md and the shipped config.yaml)."""

from pathlib import Path

from .reference import write_generated

write_generated(Path.cwd())
