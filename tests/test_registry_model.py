"""The registry against a model of what it promises, under random sequences of imports, tags, removals and gc.

hypothesis generates the sequences (and shrinks a failing one to the shortest). After every step the registry must
agree with the model: the same versions with the same bytes and tags, ``latest`` on the newest unless pinned,
version numbers never given out twice for a name, every listed version loadable, ``verify`` clean.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lorastack.adapters import file_sha256
from lorastack.registry import ConflictError, NotFoundError, Registry
from lorastack.testing.registry import small_adapter

NAMES = ("a", "B", "ns/c")
TAGS = ("t1", "t2", "latest")
STEPS: Counter = Counter()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model-files")
    return [small_adapter(folder / f"f{i}.safetensors", seed=i, trigger=f"w{i}") for i in range(3)]


class Model:
    """What the registry should hold for one name."""

    def __init__(self):
        self.versions: dict[int, tuple[str, str | None]] = {}  # number → (sha256, description)
        self.tags: dict[str, int] = {}
        self.pinned = False
        self.used: set[int] = set()

    def follow(self) -> None:
        if self.versions and (not self.pinned or "latest" not in self.tags):
            self.tags["latest"] = max(self.versions)


def make_machine(files: list[Path]):
    hashes = [file_sha256(f) for f in files]

    class RegistryMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.folder = Path(tempfile.mkdtemp(prefix="registry-model-"))
            self.registry = Registry(self.folder / "registry")
            self.model: dict[str, Model] = {}
            self.retired: dict[str, set[int]] = {}

        def teardown(self):
            self.registry.close()
            shutil.rmtree(self.folder, ignore_errors=True)

        def _entry(self, name: str) -> Model:
            key = name.lower()
            if key not in self.model:
                self.model[key] = Model()
                self.model[key].used |= self.retired.get(key, set())
            return self.model[key]

        @rule(file=st.integers(0, 2), name=st.sampled_from(NAMES), tag=st.sampled_from((None, *TAGS)),
              description=st.sampled_from((None, "d")))  # fmt: skip
        def import_file(self, file, name, tag, description):
            STEPS["import"] += 1
            result = self.registry.import_file(files[file], name, tag, description=description)
            entry = self._entry(name)
            same = [n for n, v in entry.versions.items() if v == (hashes[file], description)]
            if same:
                number = max(same)
                assert not result.created and result.version.number == number
            else:
                number = max(entry.used, default=0) + 1
                assert result.created and result.version.number == number
                entry.versions[number] = (hashes[file], description)
                entry.used.add(number)
            if tag is not None:
                entry.tags[tag] = number
                entry.pinned |= tag == "latest"
            entry.follow()

        @precondition(lambda self: any(m.versions for m in self.model.values()))
        @rule(data=st.data(), tag=st.sampled_from(TAGS))
        def tag(self, data, tag):
            STEPS["tag"] += 1
            key = data.draw(st.sampled_from(sorted(k for k, m in self.model.items() if m.versions)))
            entry = self.model[key]
            number = data.draw(st.sampled_from(sorted(entry.versions)))
            self.registry.tag(f"{key}@{number}", tag)
            entry.tags[tag] = number
            entry.pinned |= tag == "latest"

        @precondition(lambda self: any(m.versions for m in self.model.values()))
        @rule(data=st.data(), how=st.sampled_from(("tag", "version", "all", "version-and-all")))
        def remove(self, data, how):
            STEPS[f"rm {how}"] += 1
            key = data.draw(st.sampled_from(sorted(k for k, m in self.model.items() if m.versions)))
            entry = self.model[key]
            if how == "tag":
                tag = data.draw(st.sampled_from((*TAGS, "nope")))
                if tag == "latest":
                    with pytest.raises(ConflictError):
                        self.registry.remove(f"{key}:latest")
                elif tag not in entry.tags:
                    with pytest.raises(NotFoundError):
                        self.registry.remove(f"{key}:{tag}")
                else:
                    self.registry.remove(f"{key}:{tag}")
                    del entry.tags[tag]
                return
            if how == "version-and-all":  # a reference with --all is refused and changes nothing
                with pytest.raises(ConflictError):
                    self.registry.remove(f"{key}@{max(entry.versions)}", all_versions=True)
                return
            numbers = sorted(entry.versions) if how == "all" else [data.draw(st.sampled_from(sorted(entry.versions)))]
            if how == "all":
                self.registry.remove(key, all_versions=True)
            else:
                self.registry.remove(f"{key}@{numbers[0]}", force=True)
            for number in numbers:
                del entry.versions[number]
                if entry.tags.get("latest") == number:
                    entry.pinned = False
                entry.tags = {t: n for t, n in entry.tags.items() if n != number}
            if not entry.versions:
                self.retired[key] = entry.used
                del self.model[key]
            else:
                entry.follow()

        @rule()
        def gc(self):
            STEPS["gc"] += 1
            self.registry.gc(grace=0)

        @invariant()
        def agrees_with_the_model(self):
            rows = self.registry.list(all_versions=True)
            seen = {(row["name"].lower(), row["version"]): (row["sha256"], sorted(row["tags"])) for row in rows}
            expected = {}
            for key, entry in self.model.items():
                for number, (sha, _) in entry.versions.items():
                    expected[(key, number)] = (sha, sorted(t for t, n in entry.tags.items() if n == number))
            assert seen == expected
            for row in rows:
                self.registry.adapter_path(row["ref"])  # present and whole

        @invariant()
        def nothing_lost(self):
            report = self.registry.verify()
            assert report.clean and not report.extra, report

    return RegistryMachine


def test_the_registry_keeps_its_promises(sources):
    machine = make_machine(sources)
    machine.TestCase.settings = settings(
        max_examples=40,
        stateful_step_count=25,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    machine.TestCase("runTest").runTest()
    print(f"\nregistry model: {sum(STEPS.values())} steps: {dict(sorted(STEPS.items()))}")
    assert STEPS["import"] > 100 and STEPS["rm version"] > 10 and STEPS["rm all"] > 5
