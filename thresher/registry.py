"""Model versions and their lineage; which chat model and which judge are promoted; promote and roll back.

The registry is one JSON file in the data dir (`models/registry.json`), replaced atomically on every change, so a
crash leaves the old or the new registry, never half of one. A version records where its weights are (an engine
spec), its round, its parent, the dataset commit and judge version it was trained with, and its metrics. The
server and the judge follow the promoted versions: they switch to a newly promoted one without a restart.

Files inside the data dir are recorded relative to it and read back as absolute paths, so a server started from any
working folder finds them; entries written before that (absolute, or relative to the folder they were written from)
are still read as they were.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thresher.conversation import utcnow

KINDS = ("chat", "judge")
CANDIDATE, PROMOTED, REJECTED, RETIRED = "candidate", "promoted", "rejected", "retired"


class RegistryError(ValueError):
    pass


@dataclass
class Version:
    id: str
    kind: str  # chat | judge
    spec: str  # engine spec that serves it: llama.cpp:FILE.gguf or hf:DIR
    round: int = 0
    parent: str | None = None
    data_commit: str | None = None
    judge_version: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = CANDIDATE
    reason: str = ""  # why it was promoted, rejected or retired
    created_at: str = field(default_factory=lambda: utcnow().isoformat(timespec="seconds"))
    path: str | None = None  # the export directory (HF weights, GGUF, model card)


# Spec prefixes that name a file or directory (`rating:` wraps another spec); anything else is a name or a URL.
PATH_PREFIXES = ("llama.cpp:", "llamacpp:", "hf:", "transformers:", "head:", "rating:")
ALWAYS_PATHS = ("llama.cpp:", "llamacpp:", "head:")  # never a model hub name


def _split(spec: str) -> tuple[str, str]:
    """(prefixes, target): "rating:llama.cpp:m.gguf" -> ("rating:llama.cpp:", "m.gguf")."""
    prefix = ""
    while (p := next((p for p in PATH_PREFIXES if spec.startswith(p, len(prefix))), None)) is not None:
        prefix += p
    return prefix, spec[len(prefix):]


class Registry:
    """The registry in `root` (DATA_DIR/models); paths are kept relative to the data dir, `root`'s parent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "registry.json"
        self.data_dir = root.parent

    # -- paths
    def _stored(self, spec: str) -> str:
        """How a spec (or a bare path) is written down: an existing file inside the data dir relative to it, any
        other existing file absolute, anything else (a hub name, a URL, a file not made yet) as given."""
        prefix, target = _split(spec)
        if not target or not Path(target).exists():
            return spec
        path = Path(target).resolve()
        if path.is_relative_to(self.data_dir.resolve()):
            return prefix + str(path.relative_to(self.data_dir.resolve()))
        return prefix + str(path)

    def _resolved(self, spec: str, always_path: bool = False) -> str:
        """A written-down spec (or bare path) as callers use it: a path relative to the data dir made absolute. An
        older entry relative to the working folder is left as it is where it exists there; a file found in neither
        place is named in the data dir (so its error says where it belongs), a name that may be a hub's is left."""
        prefix, target = _split(spec)
        if not target or Path(target).is_absolute():
            return spec
        inside = (self.data_dir / target).resolve()
        if inside.exists():
            return prefix + str(inside)
        if Path(target).exists():
            return spec
        if always_path or prefix.removeprefix("rating:").startswith(ALWAYS_PATHS) or target.endswith(".gguf"):
            return prefix + str(inside)
        return spec

    def _version(self, entry: dict[str, Any]) -> Version:
        v = Version(**entry)
        v.spec = self._resolved(v.spec)
        v.path = self._resolved(v.path, always_path=True) if v.path else v.path
        return v

    def _entry(self, version: Version) -> dict[str, Any]:
        entry = asdict(version)
        entry["spec"] = self._stored(version.spec)
        entry["path"] = self._stored(version.path) if version.path else version.path
        return entry

    # -- storage
    def _load(self) -> dict[str, Any]:
        if not self.file.exists():
            return {"versions": [], "history": []}
        try:
            return json.loads(self.file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RegistryError(f"{self.file} is not valid JSON ({e.msg}); restore it from a backup") from None

    def _save(self, data: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".registry-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)

    # -- reading
    def versions(self, kind: str | None = None) -> list[Version]:
        return [self._version(v) for v in self._load()["versions"] if kind is None or v["kind"] == kind]

    def get(self, version_id: str) -> Version:
        for v in self.versions():
            if v.id == version_id:
                return v
        raise RegistryError(f"no model version {version_id!r} (see `thresher models list`)")

    def current(self, kind: str) -> Version | None:
        return next((v for v in self.versions(kind) if v.status == PROMOTED), None)

    def history(self) -> list[dict[str, Any]]:
        return self._load()["history"]

    # -- changes
    def add(self, version: Version) -> Version:
        if version.kind not in KINDS:
            raise RegistryError(f"kind must be one of {', '.join(KINDS)}")
        data = self._load()
        if any(v["id"] == version.id for v in data["versions"]):
            raise RegistryError(f"version {version.id!r} is already registered")
        data["versions"].append(self._entry(version))
        self._save(data)
        return self._version(data["versions"][-1])

    def update(self, version_id: str, **changes: Any) -> Version:
        data = self._load()
        for v in data["versions"]:
            if v["id"] == version_id:
                v.update({k: self._stored(x) if k in ("spec", "path") and x else x for k, x in changes.items()})
                self._save(data)
                return self._version(v)
        raise RegistryError(f"no model version {version_id!r}")

    def promote(self, version_id: str, reason: str = "") -> Version:
        """Make a version the one served for its kind; the previous one is retired (and can be rolled back to)."""
        data = self._load()
        target = next((v for v in data["versions"] if v["id"] == version_id), None)
        if target is None:
            raise RegistryError(f"no model version {version_id!r} (see `thresher models list`)")
        for v in data["versions"]:
            if v["kind"] == target["kind"] and v["status"] == PROMOTED and v["id"] != version_id:
                v["status"], v["reason"] = RETIRED, f"replaced by {version_id}"
        target["status"], target["reason"] = PROMOTED, reason
        data["history"].append({"time": utcnow().isoformat(timespec="seconds"), "kind": target["kind"],
                                "action": "promote", "version": version_id, "reason": reason})
        self._save(data)
        return self._version(target)

    def reject(self, version_id: str, reason: str) -> Version:
        return self.update(version_id, status=REJECTED, reason=reason)

    def rollback(self, kind: str) -> Version | None:
        """Serve the version promoted before the current one again (None: back to the configured base)."""
        data = self._load()
        current = next((v for v in data["versions"] if v["kind"] == kind and v["status"] == PROMOTED), None)
        if current is None:
            raise RegistryError(f"no {kind} version is promoted; nothing to roll back")
        stack: list[str] = []  # promotions replayed: a rollback undoes the newest one still standing
        for h in data["history"]:
            if h["kind"] == kind and h["action"] == "promote":
                stack.append(h["version"])
            elif h["kind"] == kind and h["action"] == "rollback" and stack:
                stack.pop()
        earlier = stack[:-1]
        current["status"], current["reason"] = RETIRED, "rolled back"
        previous = next((v for v in data["versions"] if earlier and v["id"] == earlier[-1]), None)
        if previous is not None:
            previous["status"], previous["reason"] = PROMOTED, f"rolled back from {current['id']}"
        data["history"].append({"time": utcnow().isoformat(timespec="seconds"), "kind": kind, "action": "rollback",
                                "version": previous["id"] if previous else None, "from": current["id"]})
        self._save(data)
        return self._version(previous) if previous else None
