"""The README's Python examples run as written (so the first thing a new user copies works)."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def blocks():
    if not README.exists():
        return []
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("code", blocks(), ids=lambda c: c.strip().splitlines()[0][:40])
def test_readme_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files (np.savez)
    namespace = {}
    exec(compile("import numpy as np\nimport fastreg\n" + code, str(README), "exec"), namespace)


def test_readme_has_examples():
    if not README.exists():
        pytest.skip("README.md not next to the tests")
    assert len(blocks()) >= 2
