"""The Hydra configs, installed as the package `glimpse.conf` (see pyproject.toml and docs/design.md)."""
