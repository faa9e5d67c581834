"""Resumable long benchmarks: a JSONL journal of finished units of work.

The first line is a header naming what the run measures (package, tiles, configuration); every
later line is one finished unit, ``{"key": ..., "value": ...}``. A run given the same file again
takes the units it holds instead of measuring them, so a run stopped by a session's end resumes
where it stopped. A journal written for another run is refused, naming what differs; a last line
cut short when the run was killed is measured again.
"""

from __future__ import annotations

import json
from pathlib import Path


class Journal:
    """Units already measured (`done`) and an `add` that appends one. `path=None`: keeps nothing."""

    def __init__(self, path: str | Path | None, header: dict, what: str = "benchmark"):
        self.path = None if path is None else Path(path)
        self.done: dict = {} if self.path is None else _open(self.path, json.loads(json.dumps(header)), what)

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def __getitem__(self, key: str):
        return self.done[key]

    def add(self, key: str, value) -> None:
        self.done[key] = value
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps({"key": key, "value": value}) + "\n")


def _open(path: Path, header: dict, what: str) -> dict:
    if not path.exists() or path.stat().st_size == 0:
        path.write_text(json.dumps({"header": header}) + "\n")
        return {}
    lines = path.read_text().splitlines()
    try:
        first = json.loads(lines[0])["header"]
        done = {}
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short when the run was stopped: measured again
                continue
            done[entry["key"]] = entry["value"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"journal {path} is not a {what} journal: {e}") from None
    if first != header:
        diff = sorted(k for k in set(header) | set(first) if first.get(k) != header.get(k))
        raise ValueError(f"journal {path} was written for another {what} run (differs in: {', '.join(diff)}); "
                         "give a new file to start afresh")
    return done


def package_identity(pkg, precision: str) -> str:
    """'name version sha256:...' over the manifest's checksums of the `precision` graphs: a version
    rebuilt from other weights (a release retried on a later checkpoint) is another run."""
    import hashlib

    files = {k: v.sha256 for k, v in sorted(pkg.manifest.files.items()) if k.startswith(f"{precision}/")}
    return f"{pkg.name} {pkg.version} sha256:{hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]}"
