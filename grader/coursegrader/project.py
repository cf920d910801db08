"""Where the project's files are, and the settings read from ``_config.yml``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml


def find_root(start: Path | None = None) -> Path:
    """The repository root: ``$COURSE_ROOT`` or the nearest folder above holding ``_config.yml``."""
    if os.environ.get("COURSE_ROOT"):
        return Path(os.environ["COURSE_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file() and (folder / "solutions").is_dir():
            return folder
    raise FileNotFoundError(
        f"no course repository found at or above {here} (looked for _config.yml and solutions/); "
        "run from inside the repository or set COURSE_ROOT"
    )


@dataclass(frozen=True)
class Repository:
    """The public repository, from ``repository`` in ``_config.yml`` (the one place it is set)."""

    url: str  # https://github.com/OWNER/NAME
    branch: str

    @property
    def owner_name(self) -> str:
        return self.url.rstrip("/").removeprefix("https://github.com/")

    def colab_url(self, notebook_path: str) -> str:
        return f"https://colab.research.google.com/github/{self.owner_name}/blob/{self.branch}/{notebook_path}"

    def pip_spec(self) -> str:
        return f"llmcourse @ git+{self.url}@{self.branch}"


@cache
def read_config(root: Path) -> dict:
    return yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))


def repository(root: Path) -> Repository:
    repo = read_config(root).get("repository", {})
    if "url" not in repo:
        raise KeyError("_config.yml: repository.url is missing")
    return Repository(url=repo["url"].rstrip("/"), branch=repo.get("branch", "main"))
