"""`lorastack.plugins.api` is all a plugin imports from lorastack; the protocols it implements; the global fixture."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from lorastack.core import interfaces
from lorastack.plugins import api
from lorastack.plugins.manager import KINDS, get_manager

ROOT = Path(__file__).resolve().parent.parent
API = "lorastack.plugins.api"
EXAMPLE = ROOT / "examples" / "lorastack-plugin-example" / "lorastack_plugin_example"


def lorastack_imports(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, module)`` for each import of a lorastack module in ``path``, relative imports resolved against
    ``package`` (the package the file is in); ``from lorastack.plugins import api`` counts as the api module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            if base == "lorastack.plugins" and [a.name for a in node.names] == ["api"]:
                base = API
            found.append((node.lineno, base))
    return [(line, module) for line, module in found if module == "lorastack" or module.startswith("lorastack.")]


def builtin_plugin_modules() -> dict[str, Path]:
    """The modules of lorastack's built-in plugins (its own entry points) and the helper modules they import."""
    modules = {
        ep.value: ROOT / "plugins" / f"{ep.value.rsplit('.', 1)[1]}.py"
        for ep in metadata.entry_points(group="lorastack")
        if ep.dist is not None and ep.dist.name == "lorastack"
    }
    for path in list(modules.values()):
        for _, module in lorastack_imports(path, "lorastack.plugins"):
            if module != API and module.startswith("lorastack.plugins."):
                modules[module] = ROOT / "plugins" / f"{module.rsplit('.', 1)[1]}.py"
    return modules


BUILTINS = builtin_plugin_modules()


def test_the_builtin_plugin_modules_are_found():
    assert set(BUILTINS) == {
        "lorastack.plugins.captioners", "lorastack.plugins.sources", "lorastack.plugins.trainers",
        "lorastack.plugins._filetree", "lorastack.plugins.civitai", "lorastack.plugins.hubcard",
        "lorastack.plugins.evaluators", "lorastack.plugins._vision",
    }  # fmt: skip


@pytest.mark.parametrize("module", sorted(BUILTINS))
def test_builtin_plugins_import_only_the_plugin_api(module):
    # the built-ins may import their own helper modules (_filetree), as a third-party plugin imports its own
    allowed = {API, *BUILTINS}
    imports = lorastack_imports(BUILTINS[module], "lorastack.plugins")
    wrong = [f"line {line}: {name}" for line, name in imports if name not in allowed]
    assert not wrong, f"{module} imports from lorastack other than {API}: {wrong}"


def test_the_example_plugin_imports_only_the_plugin_api():
    files = sorted(EXAMPLE.rglob("*.py"))
    assert files
    for path in files:
        imports = lorastack_imports(path, "lorastack_plugin_example")
        assert imports and {name for _, name in imports} == {API}, f"{path.name} imports {imports}"


def test_the_scan_catches_other_imports(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import os\nfrom lorastack.plugins.api import Option\nfrom lorastack.core.data import open_image\n"
        "import lorastack.core.interfaces\nfrom lorastack.plugins import hookimpl\nfrom . import _helper\n"
    )
    assert lorastack_imports(plugin, "lorastack.plugins") == [
        (2, API), (3, "lorastack.core.data"), (4, "lorastack.core.interfaces"), (5, "lorastack.plugins"),
        (6, "lorastack.plugins"),
    ]  # fmt: skip


def test_the_api_exports_what_plugins_use():
    assert sorted(api.__all__) == sorted(set(api.__all__)) and all(not n.startswith("_") for n in api.__all__)
    for name in api.__all__:
        assert getattr(api, name) is not None
    # the names the issue promises a plugin, by what they are
    assert {"hookimpl", "Option", "DatasetItem", "Skipped", "TrainingContext", "TrainResult", "open_image",
            "LorastackError", "PluginError", "PluginOptionError"} <= set(api.__all__)  # fmt: skip
    assert all(issubclass(getattr(api, n), api.LorastackError) for n in api.__all__ if n.endswith("Error"))
    from lorastack.core.training.engine import TrainResult

    assert api.TrainResult is TrainResult  # imported on first use


def test_importing_the_api_loads_no_torch():
    code = "import sys, lorastack.plugins.api; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_docs_name_everything_the_api_exports():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    missing = [name for name in api.__all__ if f"`{name}`" not in doc]
    assert not missing, f"docs/plugins.md does not mention {missing}"


# --- the protocols ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_registered_object_implements_its_protocol(kind):
    protocol = KINDS[kind].protocol
    assert getattr(protocol, "_is_runtime_protocol", False)
    objects = [get_manager().get(kind, name) for name in get_manager().names(kind)]
    assert objects and all(isinstance(obj, protocol) for obj in objects)
    assert not isinstance(object(), protocol)


@pytest.mark.parametrize("protocol", [interfaces.DatasetSource, interfaces.Captioner, interfaces.Trainer])
def test_every_protocol_member_is_documented(protocol):
    _, methods = interfaces.protocol_members(protocol)
    assert methods and all(getattr(protocol, m).__doc__ for m in methods)
    # each attribute has a docstring line after its annotation
    tree = ast.parse(Path(interfaces.__file__).read_text())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == protocol.__name__).body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign):
            following = body[i + 1] if i + 1 < len(body) else None
            assert isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant), node.target.id
    # optional members are listed in the docstring with their default, and are not required by isinstance
    for member, default in interfaces.OPTIONAL_MEMBERS[protocol].items():
        assert f"``{member}" in protocol.__doc__ and member not in interfaces.protocol_members(protocol)[0]
        assert interfaces.optional_member(object(), protocol, member) == default


def test_the_host_reads_no_undeclared_optional_member():
    with pytest.raises(KeyError):
        interfaces.optional_member(object(), interfaces.Captioner, "priority")


# --- the global fixture ---------------------------------------------------------------------------------------------


def test_third_party_plugins_stay_out_unless_a_test_opts_in():
    installed = [ep for ep in metadata.entry_points(group="lorastack") if ep.dist and ep.dist.name != "lorastack"]
    assert installed, "the example plugin is not installed: pip install ./examples/lorastack-plugin-example"
    assert all(info.builtin for info in get_manager().plugins.values())


@pytest.mark.third_party_plugins
def test_a_marked_test_sees_them():
    assert "example" in get_manager().plugins


# --- docs/plugins.md's examples run ----------------------------------------------------------------------------------


def _python_blocks() -> list[str]:
    doc = (ROOT / "docs" / "plugins.md").read_text()
    return [block.split("\n```", 1)[0] for block in doc.split("```python\n")[1:]]


def test_the_docs_option_example_runs():
    block = next(b for b in _python_blocks() if b.startswith("from lorastack.plugins.api import Option\n"))
    namespace: dict = {}
    exec(block, namespace)
    assert [o.name for o in namespace["options"]] == ["prefix", "batch_size", "learning_rate", "mode"]
    with pytest.raises(api.PluginOptionError, match=r"--batch-size '100000' must be in 1–256"):
        api.resolve_options(namespace["options"], {"batch_size": "100000"}, "captioner 'doc'")


def test_the_docs_plugin_module_registers_through_the_hooks():
    import types

    from lorastack.plugins.manager import PluginManager

    block = next(b for b in _python_blocks() if "class ColourCaptioner" in b)
    imports = {n.module for n in ast.walk(ast.parse(block)) if isinstance(n, ast.ImportFrom)}
    assert imports == {API}
    module = types.ModuleType("doc_plugin")
    exec(block, module.__dict__)
    manager = PluginManager(entry_points=False)
    manager.register(module, "doc-plugin")
    assert manager.plugins["doc-plugin"].hooks == ["register_captioners", "register_dataset_sources"]
    assert manager.names("captioners") == ["colour"] and manager.names("dataset_sources") == ["listfile"]
