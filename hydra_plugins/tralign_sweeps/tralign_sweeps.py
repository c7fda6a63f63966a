"""Hydra plugin: the repository's ``sweeps/`` folder is the config group ``sweep`` of tralign's configs,
so ``python -m tralign.train -m +sweep=NAME`` loads ``sweeps/NAME.yaml`` from any working directory.

Hydra imports every module of the ``hydra_plugins`` namespace package it can find; this one is found
because tralign is pip-installed from the checkout (``pip install -e .``). A plain ``file://`` search
path would make the group's name the folder's (``sweeps``), hence the small config source below that
shows ``<repo>/sweeps`` under the name ``sweep`` and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
SWEEPS = REPO / "sweeps"
CONF = REPO / "conf"
GROUP = "sweep"
SCHEME = "tralign-sweeps"


class TralignSweepsSource(ConfigSource):
    """Read-only view of one folder as the single config group ``sweep``."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def _real(self, config_path: str) -> Path | None:
        """``sweep`` -> the folder, ``sweep/x`` -> a path inside it, anything else -> not ours."""
        config_path = config_path.strip("/")
        if config_path == GROUP:
            return Path(self.path)
        if config_path.startswith(GROUP + "/"):
            return Path(self.path) / config_path[len(GROUP) + 1 :]
        return None

    def load_config(self, config_path: str) -> ConfigResult:
        real = self._real(self._normalize_file_name(config_path))
        if real is None or not real.is_file():
            raise ConfigLoadError(f"Config not found : {config_path}")
        text = real.read_text(encoding="utf-8")
        return ConfigResult(
            config=OmegaConf.create(text) if text.strip() else OmegaConf.create(),
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header=ConfigSource._get_header_dict(text[:512]),
        )

    def available(self) -> bool:
        return Path(self.path).is_dir()

    def is_group(self, config_path: str) -> bool:
        if config_path.strip("/") == "":
            return True
        real = self._real(config_path)
        return real is not None and real.is_dir()

    def is_config(self, config_path: str) -> bool:
        real = self._real(self._normalize_file_name(config_path))
        return real is not None and real.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if config_path.strip("/") == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) else []
        real = self._real(config_path)
        files: list[str] = []
        if real is None or not real.is_dir():
            return files
        for name in os.listdir(real):
            self._list_add_result(
                files=files,
                file_path=os.path.join(config_path, name),
                file_name=name,
                results_filter=results_filter,
            )
        return sorted(set(files))


class TralignSweepsSearchPath(SearchPathPlugin):
    """Adds the ``sweep`` group to tralign's own configs only (not to other Hydra apps here)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if SWEEPS.is_dir() and any(_is_conf(element.path) for element in search_path.get_path()):
            search_path.append(provider="tralign-sweeps", path=f"{SCHEME}://{SWEEPS}")


def _is_conf(path: str) -> bool:
    """Whether a search-path entry (``/x``, ``file:///x``, ``pkg://y`` ...) is tralign's ``conf/``."""
    if path.startswith("file://"):
        path = path[len("file://") :]
    elif "://" in path:
        return False
    return Path(path).resolve() == CONF
