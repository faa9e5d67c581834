"""Which sampler, steps, posterior samples and parameters a construction runs with, when the
request leaves them out: the package's recommendation for the kind of operator, else the
runtime's built-in one (measured by `ckm-bench solvers` on validation regions; RESULTS.md).

A manifest may carry

    "samplers": {"<operator kind>": {"sampler": "diffpir", "steps": 10, "samples": 4,
                                     "parameters": {"lam": 30, "start": 0.3}}, ...}

with operator kinds "mask", "downsample", "jtqr" (truncation + AoA quantization per channel) and
"*" (anything else), each optionally suffixed "+site" for requests that carry the site's building
layout (which changes what the prior should add: with the layout known, a warm start from the
smooth fill needs less noise), and "mask-scarce": a mask that observes less than `SCARCE` of the
cells (a drive test, scattered UE reports), where most of the map must come from the prior, not
from the fill between readings: the mask's tuned site recommendation starts 0.05 of the way down
the schedule from the fill, which at a few per cent of the cells is mostly the fill. Measured on
drive tests of 256-1,536 readings over validation tiles never trained on (5 real munich/etoile
tiles held back from 1.0.0's training, 4 generated-city tiles), gain RMSE over the unmeasured cells
from 0.8 of the schedule with 4 steps x 6 samples (the same 24 evaluations): 57.5 -> 38.5 dB on
the real tiles (better at 13 of 13 points), 62.9 -> 46.5 dB on the generated ones (9 of 12). A
scarce mask without an entry of its own takes the mask's. `from_section` parses it into the `Manifest.samplers` of
runtime.manifest. `resolve` is the one place the request's choices meet the
defaults; the server, `construct`'s CLI and the benchmarks all call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ckm_edge.runtime import defaults, operators
from ckm_edge.runtime.sampler import SamplerError, config_from_params, spec

OPERATOR_KINDS = ("mask", "mask-scarce", "downsample", "jtqr", "*")
SITE = "+site"  # suffix of the recommendations for requests with a site map
SCARCE = 0.1  # a mask observing less than this share of the cells has recommendations of its own, "mask-scarce"


@dataclass(frozen=True)
class Recommendation:
    sampler: str
    steps: int
    samples: int
    parameters: dict = field(default_factory=dict)

    def __post_init__(self):
        spec(self.sampler)
        config_from_params(self.sampler, self.parameters)  # refuses unknown or out-of-range parameters
        if not (isinstance(self.steps, int) and 1 <= self.steps <= defaults.MAX_STEPS and isinstance(self.samples, int)
                and 1 <= self.samples <= defaults.MAX_SAMPLES):
            raise SamplerError(f"a recommendation needs steps in [1, {defaults.MAX_STEPS}] and samples in "
                               f"[1, {defaults.MAX_SAMPLES}], got {self.steps}, {self.samples}")

    def to_dict(self) -> dict:
        return {"sampler": self.sampler, "steps": self.steps, "samples": self.samples, "parameters": dict(self.parameters)}


# Built-in recommendations for packages whose manifest has none: DiffPIR from the smooth fill's warm
# start, at most 25 network evaluations per map (samples x steps, one batch) so that a construction
# fits 2 s on a 2-core CPU. Chosen on validation regions (procedural train-style regions never
# trained on, never the held-out ones); `ckm-bench solvers` measures them on the held-out regions
# (benchmarks/RESULTS.md, docs/solvers.md).
BUILTIN = {
    "*": Recommendation("diffpir", 5, 5, {"lam": 7.0, "start": 0.2}),
    "mask": Recommendation("diffpir", 5, 5, {"lam": 7.0, "start": 0.2}),
    "downsample": Recommendation("diffpir", 8, 3, {"lam": 7.0, "start": 0.1}),
    "jtqr": Recommendation("diffpir", 6, 4, {"lam": 15.0, "start": 0.1}),
    # with the layout known, the smooth fill is much closer to the map: start from less noise
    "*+site": Recommendation("diffpir", 5, 5, {"lam": 7.0, "start": 0.05}),
    "mask+site": Recommendation("diffpir", 5, 5, {"lam": 7.0, "start": 0.05}),
    "downsample+site": Recommendation("diffpir", 8, 3, {"lam": 7.0, "start": 0.02}),
    # a few per cent of the cells observed and the site known: most of the map is the prior's
    # (module doc); without the site a scarce mask keeps the mask's (the prior cannot place the base
    # station: from 0.8 of the schedule it lost by 20-60 dB on some validation tiles)
    "mask-scarce+site": Recommendation("diffpir", 4, 6, {"lam": 3.0, "start": 0.8}),
}


def operator_kind(op: operators.Operator) -> str:
    """The key a recommendation is stored under: the operator's outermost kind."""
    if isinstance(op, operators.Compose) and len(op.operators) == 1:
        return operator_kind(op.operators[0])
    if isinstance(op, operators.Mask):
        return "mask"
    if isinstance(op, operators.Downsample):
        return "downsample"
    if isinstance(op, operators.PerChannel) and [o.name for o in op.operators] == ["truncate", "quantize_aoa"]:
        return "jtqr"
    return "*"


def mask_share(op: operators.Operator) -> float | None:
    """The share of the cells a mask observes (with a mask per channel, the gain's: a living map whose
    readings carry the gain at some cells and only the AoA at others); None for other operators."""
    if isinstance(op, operators.Compose) and len(op.operators) == 1:
        op = op.operators[0]
    if isinstance(op, operators.PerChannel) and all(isinstance(o, operators.Mask) for o in op.operators):
        op = op.operators[0]
    return float(np.mean(op.mask)) if isinstance(op, operators.Mask) else None


def sampler_kinds(op: operators.Operator) -> tuple[str, ...]:
    """The recommendation kinds for `op`, most specific first: a scarce mask's own (`mask_share`
    below SCARCE), then the operator's kind (`operator_kind`)."""
    kind = operator_kind(op)
    share = mask_share(op)
    return ("mask-scarce", kind) if share is not None and share < SCARCE else (kind,)


def from_section(section) -> dict[str, Recommendation]:
    """The recommendations of a manifest's "samplers" section (runtime.manifest) by operator kind;
    a bad entry raises SamplerError naming it."""
    section = section or {}
    if not isinstance(section, dict):
        raise SamplerError("manifest 'samplers' must be an object keyed by operator kind")
    out = {}
    for kind, rec in section.items():
        if kind.removesuffix(SITE) not in OPERATOR_KINDS:
            raise SamplerError(f"manifest samplers[{kind!r}]: operator kind must be one of {', '.join(OPERATOR_KINDS)}"
                               f", optionally with {SITE!r}")
        try:
            out[kind] = Recommendation(rec["sampler"], rec["steps"], rec["samples"], dict(rec.get("parameters", {})))
        except (KeyError, TypeError, SamplerError) as e:
            raise SamplerError(f"manifest samplers[{kind!r}]: {e}") from None
    return out


def recommendations(samplers: Mapping[str, Recommendation] | None) -> dict[str, Recommendation]:
    """The built-in recommendations with a package's own (`Manifest.samplers`) over them."""
    return {**BUILTIN, **(samplers or {})}


def recommend(samplers: Mapping[str, Recommendation] | None, op: operators.Operator, site: bool = False) -> Recommendation:
    """The recommendation for `op` from a package's recommendations (`Manifest.samplers`; None: the
    built-in ones): with a site map the kind's "+site" entry, else the kind's own, else "*+site",
    else "*" (without a site map: the kind's own, else "*"); a scarce mask (`sampler_kinds`) tries
    its own kind's entries before the mask's."""
    recs = recommendations(samplers)
    kinds = sampler_kinds(op)
    keys = ([k + s for k in kinds for s in (SITE, "")] + ["*" + SITE, "*"]) if site else [*kinds, "*"]
    return next(recs[k] for k in keys if k in recs)


def with_dps_shorthand(sampler: str | None, params: dict, shorthand: dict, named=str) -> tuple[str | None, dict]:
    """The sampler choice with DPS's shorthands (zeta, corrector_steps, jacobian_free: fields of a
    ConstructRequest, options of `ckm-edge construct`) folded into its parameters: they select
    "dps" when no sampler is named, belong to no other sampler, and may not repeat a parameter.
    `named` spells a shorthand as its caller's user wrote it; a conflict raises SamplerError."""
    if not shorthand:
        return sampler, params
    name = sampler or "dps"
    given = ", ".join(named(k) for k in shorthand)
    if name != "dps":
        raise SamplerError(f"{given}: DPS-only, but the sampler is {name!r}; give its sampler parameters instead")
    both = sorted(shorthand.keys() & params.keys())
    if both:
        raise SamplerError(f"{', '.join(map(named, both))} also given as the sampler parameter of the same name; give it once")
    config_from_params("dps", shorthand)  # refuses out-of-range values under their own names
    return name, {**shorthand, **params}


def resolve(samplers: Mapping[str, Recommendation] | None, op: operators.Operator, sampler: str | None = None,
            params: dict | None = None, steps: int | None = None, samples: int | None = None,
            site: bool = False) -> tuple[object, int, int]:
    """(sampler config, steps, samples) for a construction under a package's recommendations
    (`Manifest.samplers`; None: the built-in ones). What the caller gives wins; what it leaves out
    comes from the recommendation when it names the same sampler (or none), else from the
    sampler's own defaults (steps: its default_steps; samples: 1)."""
    rec = recommend(samplers, op, site)
    name = sampler or rec.sampler
    same = name == rec.sampler
    merged = {**(rec.parameters if same else {}), **(params or {})}
    cfg = config_from_params(name, merged)
    if steps is None:
        steps = rec.steps if same else spec(name).default_steps
    if samples is None:
        samples = rec.samples if same else 1
    return cfg, steps, samples


def read_section(path) -> tuple[dict, list[str]]:
    """A manifest "samplers" section — the built-in recommendations with those of the JSON file
    `path` (`ckm-bench tune --out`: {"samplers": {kind: recommendation}}) over them — and the kinds
    the file sets (`ckm-export package --samplers`, `ckm-bench accuracy --samplers`); a bad file
    or entry raises ValueError naming it."""
    import json
    from pathlib import Path

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--samplers {path}: cannot read a JSON document: {e}") from None
    section = doc.get("samplers") if isinstance(doc, dict) else None
    if not isinstance(section, dict) or not section:
        raise ValueError(f"--samplers {path}: expected {{\"samplers\": {{operator kind: recommendation}}}} (ckm-bench tune --out)")
    try:
        return {kind: rec.to_dict() for kind, rec in recommendations(from_section(section)).items()}, sorted(section)
    except ValueError as e:
        raise ValueError(f"--samplers {path}: {e}") from None
