"""Site adapters: small plug-in score models that shift the shared prior towards one site (LASCO).

A site adapter is the difference of two small score models, a *reference* trained on the shared
(generic) data and a *proxy* trained on the site's own unlabeled maps; their difference is the
environment-induced shift of the score, added to the foundation prior's score at inference:

    s_site(x, t) = s_large(x, t) + lambda(t) * d(x, t),     d = s_proxy - s_reference

lambda is a fixed strength (LASCO, lambda = 1) or piecewise constant over t, fitted on the site
data (elastic LASCO). The VJP composes the same way, J_site^T v = J_large^T v + J_d^T (lambda v),
so `ComposedEngine` is an engine like any other and the DPS loop is unchanged.

An adapter ships as an ordinary package (its graphs compute d) whose manifest also holds

    "adapter": {"base": {"name", "version", "manifest_sha256"},      the foundation it adapts
                "lambda": {"edges": [0, ..., 1], "values": [...], "kind": "fixed" | "elastic"},
                "site": "...", "training": {...}}

and it is only ever composed with exactly that base package (checked by `check_base`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ckm_edge.runtime.engine import EngineBase
from ckm_edge.runtime.manifest import BaseRef
from ckm_edge.runtime.package import Package, PackageError, sha256_file

LAMBDA_MAX = 10.0  # a strength beyond this is a broken fit, not an adaptation


@dataclass(frozen=True)
class LambdaTable:
    """lambda(t), piecewise constant: values[k] on edges[k] < t <= edges[k+1] (t = 0 in the first bin)."""

    edges: tuple[float, ...]
    values: tuple[float, ...]
    kind: str = "elastic"

    def __post_init__(self):
        edges, values = np.asarray(self.edges, float), np.asarray(self.values, float)
        if self.kind not in ("fixed", "elastic"):
            raise PackageError(f"adapter lambda kind must be 'fixed' or 'elastic', got {self.kind!r}")
        if edges.ndim != 1 or len(edges) < 2 or len(values) != len(edges) - 1:
            raise PackageError(f"adapter lambda needs K+1 edges and K values, got {len(edges)} edges and {len(values)} values")
        if not (np.all(np.isfinite(edges)) and edges[0] <= 0.0 and edges[-1] >= 1.0 and np.all(np.diff(edges) > 0)):
            raise PackageError(f"adapter lambda edges must increase from <= 0 to >= 1, got {list(edges)}")
        if not (np.all(np.isfinite(values)) and np.all(np.abs(values) <= LAMBDA_MAX)):
            raise PackageError(f"adapter lambda values must be finite with |lambda| <= {LAMBDA_MAX}, got {list(values)}")

    @staticmethod
    def constant(value: float = 1.0) -> LambdaTable:
        return LambdaTable((0.0, 1.0), (float(value),), "fixed")

    @staticmethod
    def from_dict(d: dict) -> LambdaTable:
        try:
            return LambdaTable(tuple(float(e) for e in d["edges"]), tuple(float(v) for v in d["values"]),
                               str(d.get("kind", "elastic")))
        except (KeyError, TypeError, ValueError) as e:
            raise PackageError(f"adapter lambda must be {{'edges': [...], 'values': [...]}}: {e}") from None

    def to_dict(self) -> dict:
        return {"edges": list(self.edges), "values": list(self.values), "kind": self.kind}

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """lambda at each t, shaped (B, 1, 1, 1) for broadcasting over maps."""
        k = np.clip(np.searchsorted(np.asarray(self.edges), np.asarray(t, float), side="left") - 1, 0, len(self.values) - 1)
        return np.asarray(self.values, np.float32)[k].reshape(-1, 1, 1, 1)


def manifest_sha256(pkg: Package) -> str:
    """SHA-256 of the package's manifest as it was verified at load (the file only as a fallback)."""
    return pkg.manifest_sha256 or sha256_file(pkg.root / "manifest.json")


def is_adapter(pkg: Package) -> bool:
    return pkg.manifest.adapter is not None


def adapter_info(pkg: Package) -> tuple[BaseRef, LambdaTable]:
    """The adapter section of a package (checked at load by runtime.manifest): (base reference, lambda table)."""
    if pkg.manifest.adapter is None:
        raise PackageError(f"package {pkg.name} {pkg.version} is not a site adapter (no 'adapter' section)")
    return pkg.manifest.adapter.base, pkg.manifest.adapter.lam


def check_base(adapter: Package, base: Package) -> LambdaTable:
    """Refuse to compose an adapter with any package but the one it was fitted to."""
    ref, lam = adapter_info(adapter)
    if is_adapter(base):
        raise PackageError(f"{base.name} {base.version} is itself an adapter; adapters compose with a foundation package")
    if (ref.name, ref.version) != (base.name, base.version):
        raise PackageError(f"adapter {adapter.name} {adapter.version} adapts {ref.name} {ref.version}, "
                           f"not {base.name} {base.version}")
    if ref.manifest_sha256 != manifest_sha256(base):
        raise PackageError(f"adapter {adapter.name} {adapter.version} was fitted to a different build of "
                           f"{base.name} {base.version} (manifest SHA-256 differs)")
    if adapter.tile_size != base.tile_size or adapter.manifest.schedule != base.manifest.schedule:
        raise PackageError(f"adapter {adapter.name} {adapter.version} has another tile size or noise schedule than its base")
    return lam


class ComposedEngine(EngineBase):
    """s = s_base + lambda(t) d over two engines; forward/backward keep both parts' saved tensors."""

    def __init__(self, base: Any, delta: Any, lam: LambdaTable):
        super().__init__()
        self.base, self.delta, self.lam = base, delta, lam

    @property
    def condition_channels(self) -> int:
        """A site-aware base takes the condition; the adapter's own small model sees the site's
        data instead and takes none unless it was built site-aware too."""
        return getattr(self.base, "condition_channels", 0)

    @property
    def condition_encoding(self):
        return getattr(self.base, "condition_encoding", None)

    def _delta_cond(self, cond):
        return cond if getattr(self.delta, "condition_channels", 0) else None

    def _score(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        return _call(self.base.score, x, t, cond) + self.lam(t) * _call(self.delta.score, x, t, self._delta_cond(cond))

    def _forward(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> tuple[np.ndarray, Any]:
        s_base, saved_base = _call(self.base.forward, x, t, cond)
        s_delta, saved_delta = _call(self.delta.forward, x, t, self._delta_cond(cond))
        lam = self.lam(t)
        return s_base + lam * s_delta, (saved_base, saved_delta, lam)

    def _backward(self, saved: Any, v: np.ndarray) -> np.ndarray:
        saved_base, saved_delta, lam = saved
        return self.base.backward(saved_base, v) + self.delta.backward(saved_delta, (lam * v).astype(np.float32))

    def _release(self) -> None:
        """The parts belong to whoever opened them (a repository shares them between requests)."""


def _call(method, x, t, cond):
    """An engine method with the condition only when there is one (engines of the paper's
    unconditional interface take just x and t)."""
    return method(x, t) if cond is None else method(x, t, cond)
