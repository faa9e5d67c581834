"""The model repository an edge server serves: <root>/<name>/<version>/ package directories.

Like Triton's model repository: every version directory is a verified package; a request names
a model and optionally a version (empty = the newest by semantic version). `reload()` rescans
and swaps the whole mapping at once, so in-flight requests keep the engines they hold while new
requests see the new versions. A package that fails verification is skipped and reported; it
never replaces a good one.

Site adapters (runtime/adapter.py) live in the same repository as add-on packages. `resolve`
finds foundation models only; `resolve_adapter` finds an adapter and checks that it was fitted
to the resolved model (name, version and manifest checksum).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckm_edge.runtime import memory
from ckm_edge.runtime.adapter import LambdaTable, check_base, is_adapter
from ckm_edge.runtime.engine import EngineConfig, open_engine
from ckm_edge.runtime.package import Package, PackageError, load_package

log = logging.getLogger("ckm.edge.repository")


def _semver(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@dataclass
class LoadedModel:
    package: Package
    engine_config: EngineConfig
    _engines: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> tuple[str, str]:
        return self.package.name, self.package.version

    def engine(self, precision: str):
        """The engine of one precision, opened (and warmed up) on first use."""
        with self._lock:
            if precision not in self._engines:
                if precision not in self.package.precisions:
                    raise PackageError(f"model {self.package.name} {self.package.version} has no {precision} variant "
                                       f"(has {self.package.precisions})")
                cfg = dataclasses.replace(self.engine_config, precision=precision)
                engine = open_engine(self.package, cfg)
                n = self.package.tile_size
                engine.score(np.zeros((1, 2, n, n), np.float32), np.ones(1, np.float32))  # warm-up
                engine.calls.clear()
                self._engines[precision] = engine
            return self._engines[precision]

    def schedule(self):
        """The noise schedule the package was trained with (runtime.executor.Model)."""
        return self.package.schedule()

    @property
    def uncertainty(self):
        """The package's calibration of the reported std (runtime.uncertainty), None without one."""
        return self.package.manifest.uncertainty

    def row_bytes(self, precision: str, vjp: bool) -> int:
        """Engine memory per posterior sample (runtime.memory: measured once per package, cached)."""
        return memory.row_bytes(self.package, precision, vjp, self.engine_config.backend)

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()


class ModelRepository:
    def __init__(self, root: str | Path, engine_config: EngineConfig = EngineConfig(),
                 trusted_keys: list[bytes] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise PackageError(f"model repository {self.root} is not a directory")
        self.engine_config = engine_config
        self.trusted_keys = trusted_keys
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._fingerprint: tuple = ()
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self.reload()

    def fingerprint(self) -> tuple:
        """What changes when a package is added, removed or rewritten (any file of a version
        directory, so a package skipped while it was still being copied is retried once the
        copy completes)."""
        items = []
        for path in sorted(self.root.glob("*/*/*")):
            try:
                st = path.stat()
            except OSError:
                continue
            items.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(items)

    def reload(self) -> bool:
        """Rescan; returns True when the served set changed."""
        with self._lock:
            fingerprint = self.fingerprint()
            if fingerprint == self._fingerprint:
                return False
            models, errors = {}, {}
            for manifest in sorted(self.root.glob("*/*/manifest.json")):
                version_dir = manifest.parent
                old = next((m for m in self._models.values() if m.package.root == version_dir), None)
                try:
                    pkg = load_package(version_dir, self.trusted_keys)
                    if (pkg.name, pkg.version) != (version_dir.parent.name, version_dir.name):
                        raise PackageError(f"package says {pkg.name} {pkg.version} but lives in "
                                           f"{version_dir.parent.name}/{version_dir.name}")
                except PackageError as e:
                    errors[str(version_dir)] = str(e)
                    log.error("skipping %s: %s", version_dir, e)
                    if old is not None:
                        models[old.key] = old  # keep serving the last good copy
                    continue
                if old is not None and old.package.manifest == pkg.manifest:
                    models[old.key] = old
                else:
                    models[(pkg.name, pkg.version)] = LoadedModel(pkg, self.engine_config)
            self._models, self.errors, self._fingerprint = models, errors, fingerprint
            log.info("serving %s", sorted(models))
            return True

    def models(self) -> list[LoadedModel]:
        return sorted(self._models.values(), key=lambda m: (m.package.name, _semver(m.package.version)))

    def resolve(self, name: str, version: str = "") -> LoadedModel:
        """A foundation model by name and version (empty = newest)."""
        models = {k: m for k, m in self._models.items() if not is_adapter(m.package)}  # one consistent snapshot
        if name and not any(k[0] == name for k in models) and any(k[0] == name for k in self._models):
            raise LookupError(f"{name!r} is a site adapter, not a model: name its model in model_name and the "
                              "adapter in adapter_name")
        if not name:
            names = sorted({k[0] for k in models})
            if len(names) != 1:
                raise LookupError(f"model_name is required: the repository serves {names}")
            name = names[0]
        candidates = [m for k, m in models.items() if k[0] == name]
        if not candidates:
            raise LookupError(f"model {name!r} is not in the repository (serving {sorted({k[0] for k in models})})")
        if version:
            for m in candidates:
                if m.package.version == version:
                    return m
            raise LookupError(f"model {name!r} has no version {version!r} (has {sorted(m.package.version for m in candidates)})")
        return max(candidates, key=lambda m: _semver(m.package.version))

    def find(self, name: str, version: str = "") -> LoadedModel | None:
        """Any served package (model or adapter) by exact name, newest when no version; or None."""
        found = [m for k, m in self._models.items() if k[0] == name and (not version or k[1] == version)]
        return max(found, key=lambda m: _semver(m.package.version)) if found else None

    def resolve_adapter(self, name: str, version: str, base: LoadedModel) -> tuple[LoadedModel, LambdaTable]:
        """A site adapter for `base`: the given version, or the newest one fitted to `base`.

        LookupError when no such adapter is served; PackageError when it adapts another model."""
        candidates = [m for k, m in self._models.items() if k[0] == name and is_adapter(m.package)]
        if not candidates:
            raise LookupError(f"site adapter {name!r} is not in the repository")
        if version:
            chosen = next((m for m in candidates if m.package.version == version), None)
            if chosen is None:
                raise LookupError(f"site adapter {name!r} has no version {version!r} "
                                  f"(has {sorted(m.package.version for m in candidates)})")
            return chosen, check_base(chosen.package, base.package)
        fitting = []
        for m in candidates:
            try:
                fitting.append((m, check_base(m.package, base.package)))
            except PackageError:
                continue
        if not fitting:
            bases = sorted({adapts(m.package) for m in candidates})
            raise PackageError(f"no version of site adapter {name!r} adapts {base.package.name} "
                               f"{base.package.version} (its versions adapt {bases})")
        return max(fitting, key=lambda pair: _semver(pair[0].package.version))


def adapts(pkg: Package) -> str:
    """'name version' of the model a site adapter adapts ('' for a model)."""
    adapter = pkg.manifest.adapter
    return "" if adapter is None else f"{adapter.base.name} {adapter.base.version}"
