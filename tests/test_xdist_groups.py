"""`./dev.sh test` runs on two workers (pytest-xdist, ``--dist loadgroup``); the grouping in
conftest.py is what keeps the tiny pipeline (minutes) from being built once per worker.
pytest 9.2 silently undoes the grouping with pytest-xdist 3.8 (xdist issue 1386): this
test fails then, where the suite would only get slower."""

import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def test_tests_of_the_tiny_pipeline_share_one_worker_and_one_build(tmp_path):
    builds = tmp_path / "builds.txt"
    (tmp_path / "conftest.py").write_text(f'''
import importlib.util, os
import pytest
spec = importlib.util.spec_from_file_location("project_conftest", {str(CONFTEST)!r})
project = importlib.util.module_from_spec(spec)
spec.loader.exec_module(project)
pytest_collection_modifyitems = project.pytest_collection_modifyitems

@pytest.fixture(scope="session")
def tiny_pipeline():
    with open({str(builds)!r}, "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")

@pytest.fixture
def pipeline_copy(tiny_pipeline):
    return tiny_pipeline
''')
    for name in "ab":
        (tmp_path / f"test_{name}.py").write_text(
            "import time\n"
            "def test_reads(tiny_pipeline): time.sleep(0.2)\n"
            "def test_copies(pipeline_copy): time.sleep(0.2)\n"
            + "".join(f"def test_other{i}(): time.sleep(0.2)\n" for i in range(4)))
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup",
                           "-p", "no:cacheprovider", "-q", "-rA", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 passed" in done.stdout, done.stdout
    assert builds.read_text().splitlines() in (["gw0"], ["gw1"]), done.stdout
    for name in "ab":       # a module's other tests stay together too (module fixtures)
        assert f"test_{name}.py::test_other0@test_{name}" in done.stdout, done.stdout
