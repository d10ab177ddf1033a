"""Duplicates in the registry: identical files, the same tensors under another header, and near-duplicates.

Three kinds, each found the cheapest way that is still sure:

* **identical**: the same file sha256 (one blob, several versions or names pointing at it);
* **same tensors**: the same tensor-data sha256 under a different header (a tool rewrote the metadata: A1111's
  "AutoV3" survives that, the file hash does not);
* **near**: the same ΔW stored another way — another dtype, a resized (re-ranked) copy, another file format. Told by
  the cosine of the deltas over a sample of the modules both adapters touch. Two adapters trained from the same base
  on other data share nothing but the base, and their deltas point in unrelated directions (cosine near 0), so
  they are never reported.

Comparing full deltas of every pair would cost a matrix product per module per pair; instead each adapter gets a
sketch once — each sampled module's ΔW times a fixed random matrix (Johnson–Lindenstrauss), computed from the LoRA
factors without forming ΔW — and pairs are compared on sketches, only within groups of the same family and the same
set of modules.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

#: Near-duplicates: the smallest mean cosine of the sampled modules' deltas (a resized rank-16 → 8 copy of a trained
#: LoRA keeps ~0.99; an fp16 copy 0.99999; unrelated adapters on one base stay near 0).
NEAR_THRESHOLD = 0.98
#: Modules sampled per adapter, evenly over its sorted module names.
SAMPLE_MODULES = 16
SKETCH_WIDTH = 16
#: Most versions in one family-and-modules group compared pairwise (a larger group is compared in slices of this).
MAX_GROUP = 2000


@dataclass
class DuplicateGroup:
    """Versions that hold the same adapter, the one to keep first, and why they are one."""

    kind: str  # "identical", "same-tensors" or "near"
    refs: list[str]
    reason: str
    similarity: float | None = None

    @property
    def keep(self) -> str:
        return self.refs[0]

    @property
    def extras(self) -> list[str]:
        return self.refs[1:]

    def remove_command(self) -> str:
        """One shell line that removes the extras (with their tags)."""
        return " && ".join(f"lorastack rm {ref} --with-tags" for ref in self.extras)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "keep": self.keep, "extras": self.extras, "reason": self.reason,
                "similarity": self.similarity, "remove": self.remove_command()}  # fmt: skip


@dataclass
class DuplicateReport:
    groups: list[DuplicateGroup] = field(default_factory=list)
    threshold: float = NEAR_THRESHOLD
    compared: int = 0  # versions sketched for the near-duplicate search
    unreadable: dict[str, str] = field(default_factory=dict)  # ref → why it could not be compared

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "compared": self.compared, "unreadable": self.unreadable,
                "groups": [g.as_dict() for g in self.groups]}  # fmt: skip


def find_duplicates(registry, threshold: float = NEAR_THRESHOLD, near: bool = True) -> DuplicateReport:
    """Every duplicate group among the registry's versions (oldest version first in each group)."""
    if not (0.0 < threshold <= 1.0) or not math.isfinite(threshold):
        from .errors import InvalidValueError

        raise InvalidValueError(f"threshold {threshold!r}: a cosine similarity in (0, 1]")
    versions = [registry.resolve(f"{row['name']}@{row['version']}") for row in registry.list(all_versions=True)]
    versions.sort(key=lambda v: (v.created_at, v.name.lower(), v.number))
    report = DuplicateReport(threshold=threshold)
    by_file: dict[str, list] = {}
    for version in versions:
        by_file.setdefault(version.adapter_file.sha256, []).append(version)
    firsts = []  # one version per distinct file
    for sha, group in by_file.items():
        firsts.append(group[0])
        if len(group) > 1:
            report.groups.append(
                DuplicateGroup("identical", [v.ref for v in group], f"the same file (sha256 {sha[:12]})", 1.0)
            )
    by_tensors: dict[str, list] = {}
    for version in firsts:
        if version.adapter_file.tensor_sha256:
            by_tensors.setdefault(version.adapter_file.tensor_sha256, []).append(version)
    distinct = []  # one version per distinct tensor content
    for sha, group in by_tensors.items():
        distinct.append(group[0])
        if len(group) > 1:
            reason = f"the same tensors (tensor sha256 {sha[:12]}) with different headers"
            report.groups.append(DuplicateGroup("same-tensors", [v.ref for v in group], reason, 1.0))
    distinct += [v for v in firsts if not v.adapter_file.tensor_sha256]
    if near:
        report.groups += _near_groups(registry, distinct, threshold, report)
    return report


def _near_groups(registry, versions, threshold: float, report: DuplicateReport) -> list[DuplicateGroup]:
    from lorastack.adapters import read_adapter
    from lorastack.adapters.errors import AdapterError

    from .errors import RegistryError

    buckets: dict[tuple, list] = {}
    for version in versions:
        try:
            _, path = registry.adapter_path(version.ref)
            adapter = read_adapter(path)
        except (AdapterError, RegistryError, OSError) as e:
            report.unreadable[version.ref] = str(e).splitlines()[0][:200]
            continue
        modules = sorted(adapter.layers)
        key = (version.family, hashlib.sha256("\n".join(modules).encode()).hexdigest())
        buckets.setdefault(key, []).append((version, adapter, modules))
    groups = []
    for members in buckets.values():
        if len(members) < 2:
            continue
        for start in range(0, len(members), MAX_GROUP):
            chunk = members[start : start + MAX_GROUP]
            report.compared += len(chunk)
            groups += _compare(chunk, threshold)
    return groups


def _compare(members, threshold: float) -> list[DuplicateGroup]:
    modules = members[0][2]
    step = max(1, len(modules) // SAMPLE_MODULES)
    sampled = modules[::step][:SAMPLE_MODULES]
    sketches = [_sketch(adapter, sampled) for _, adapter, _ in members]
    parent = list(range(len(members)))
    edges: list[tuple[int, int, float]] = []

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(members)):
        for j in range(i + 1, len(members)):
            similarity = _similarity(sketches[i], sketches[j])
            if similarity >= threshold:
                edges.append((i, j, similarity))
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    clusters: dict[int, list[int]] = {}
    for i in range(len(members)):
        clusters.setdefault(root(i), []).append(i)
    weakest: dict[int, float] = {}
    for i, _, similarity in edges:
        r = root(i)
        weakest[r] = min(weakest.get(r, 1.0), similarity)
    out = []
    for r, indices in clusters.items():
        if len(indices) < 2:
            continue
        similarity = weakest.get(r, threshold)
        refs = [members[i][0].ref for i in sorted(indices)]
        reason = (f"the same deltas stored another way: cosine ≥ {similarity:.4f} over {len(sampled)} sampled "
                  f"modules (threshold {threshold:g})")  # fmt: skip
        out.append(DuplicateGroup("near", refs, reason, round(similarity, 6)))
    return out


def _projection(name: str, columns: int) -> torch.Tensor:
    """A fixed random matrix per module and width: the same for every adapter, so sketches compare."""
    seed = int.from_bytes(hashlib.sha256(f"{name}:{columns}".encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(columns, SKETCH_WIDTH, generator=g)


@torch.no_grad()
def _sketch(adapter, modules: list[str]) -> list[torch.Tensor]:
    from lorastack.adapters import LoRALayer

    out = []
    for name in modules:
        layer = adapter.layers[name]
        columns = layer.in_numel
        r = _projection(name, columns)
        if isinstance(layer, LoRALayer) and layer.mid is None and not layer.is_dora:
            # (α/r · up @ down) @ R without forming the out × in delta
            down = layer.down.float().reshape(layer.rank, -1)
            sketch = layer.up.float().reshape(layer.out_features, -1) @ (down @ r) * layer.scale
        else:
            sketch = layer.delta(shape=(layer.out_features, columns)).reshape(layer.out_features, -1) @ r
        out.append(sketch.reshape(-1))
    return out


def _similarity(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The mean over modules of the sketches' cosine (a module whose delta is zero in both counts as equal)."""
    values = []
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return 0.0
        nx, ny = float(x.norm()), float(y.norm())
        if nx == 0.0 or ny == 0.0:
            values.append(1.0 if nx == ny else 0.0)
            continue
        values.append(float(x @ y) / (nx * ny))
    return sum(values) / len(values) if values else 0.0
