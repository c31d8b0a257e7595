"""The one-way house: difflab's imports point down its floors (scripts/check_layers.py)."""

import importlib.util
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts" / "check_layers.py")
check_layers = importlib.util.module_from_spec(spec)
sys.modules["check_layers"] = check_layers  # its dataclasses look their module up
spec.loader.exec_module(check_layers)


def test_difflab_imports_only_point_down():
    assert check_layers.problems() == []


def test_every_room_is_on_a_floor():
    rooms = {
        p.stem if p.is_file() else p.name
        for p in (ROOT / "src" / "difflab").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    on_floors = {r for floor in check_layers.FLOORS for r in floor}
    assert rooms <= on_floors, f"rooms on no floor: {sorted(rooms - on_floors)}"


def _tree(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / "difflab" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_the_checker_catches_each_kind_of_problem(tmp_path, monkeypatch):
    """A small fake difflab with one of each fault: the checker names all four."""
    src = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "data/__init__.py": "from difflab import pipeline\n",  # upward
            "diffusion/__init__.py": "",
            "diffusion/a.py": "from difflab.diffusion import b\n",  # a <-> b: a cycle
            "diffusion/b.py": "from difflab.diffusion import a\n",
            "pipeline.py": "def f():\n    from difflab import data\n",  # inside a function
            "training.py": (
                "try:\n    from difflab import data\nexcept ImportError:\n    data = None\n"
                "from difflab import pipeline\n"  # a sibling
            ),
        },
    )
    monkeypatch.setattr(check_layers, "SRC", src)
    found = "\n".join(check_layers.problems(src))
    assert "difflab.data imports difflab.pipeline, a higher floor" in found
    assert (
        "import cycle: difflab.diffusion.a -> difflab.diffusion.b -> difflab.diffusion.a" in found
    )
    assert "difflab.pipeline imports difflab.data inside a function" in found
    assert "guards the import of difflab.data" in found
    assert "difflab.training imports difflab.pipeline, a sibling" in found
