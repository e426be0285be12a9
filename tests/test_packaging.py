"""What installing the library puts into a user's environment: the model package `modeling_dreamer` and
nothing with a generic name (`data`, `training`, `envs` stay in the repository and are used from its root),
and a light `import modeling_dreamer` (the parts without torch import without it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def outside(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` with this environment's Python in `cwd`, a folder outside the repository, without the
    repository on the path (pytest's `pythonpath` setting does not reach a child process)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)



def test_the_wheel_installs_only_the_model_package(tmp_path: Path) -> None:
    # Built from a copy of the repository (a build in place leaves build/ behind), the folders included.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "*_output", "*_data", "build",
                                                                "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("modeling_dreamer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"modeling_dreamer"}
    assert "modeling_dreamer/modeling_dreamer.py" in names and "modeling_dreamer/modeling_tokenizer.py" in names


def test_an_installed_copy_shadows_no_user_package(tmp_path: Path) -> None:
    """This environment has the library installed (editable, as the README's setup does): from a folder outside
    the repository, `import data` finds nothing, and a project with its own `data` package imports its own."""
    missing = outside("import data", tmp_path)
    assert missing.returncode != 0 and "No module named 'data'" in missing.stderr
    for name in ("training", "envs"):
        assert outside(f"import {name}", tmp_path).returncode != 0, name
    project = tmp_path / "my_project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "__init__.py").write_text("OWNER = 'my project'\n")
    own = outside("import data, modeling_dreamer; print(data.OWNER, modeling_dreamer.__name__)", project)
    assert own.returncode == 0, own.stderr
    assert own.stdout.split() == ["my", "project", "modeling_dreamer"]


def test_the_light_parts_import_without_torch(tmp_path: Path) -> None:
    code = ("import sys, modeling_dreamer, modeling_dreamer.action_space, modeling_dreamer.symlog, "
            "modeling_dreamer.errors; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = outside(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
