"""Checks shared by the registry reliability tests."""

from __future__ import annotations


def listed_and_loadable(registry) -> list[str]:
    refs = [row["ref"] for row in registry.list(all_versions=True)]
    for ref in refs:
        registry.adapter_path(ref)  # raises when a listed version lacks its blob or it is damaged
    return refs
