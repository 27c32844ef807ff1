"""`./dev.sh test` runs on two workers (pytest-xdist, ``--dist loadgroup
--no-loadscope-reorder``). conftest.py keeps a module's tests on one worker and hands the
modules out in its ``FIRST`` order; ``tiny_pipeline`` builds the tiny pipeline (minutes)
once for both workers. pytest 9.2 silently undoes the grouping with pytest-xdist 3.8 (xdist
issue 1386): this test fails then, where the suite would only get slower."""

import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def write_tests(tmp_path: Path, fixture: str, modules: dict[str, str]) -> None:
    """Test modules in ``tmp_path`` with the project's conftest hooks and helpers and
    ``fixture`` (a stand-in for the tiny pipeline)."""
    (tmp_path / "conftest.py").write_text(f'''
import importlib.util, os, time
import pytest
spec = importlib.util.spec_from_file_location("project_conftest", {str(CONFTEST)!r})
project = importlib.util.module_from_spec(spec)
spec.loader.exec_module(project)
pytest_collection_modifyitems = project.pytest_collection_modifyitems
{fixture}''')
    for name, text in modules.items():
        (tmp_path / f"{name}.py").write_text(text)


def run_two_workers(tmp_path: Path, fixture: str, modules: dict[str, str]):
    """pytest on two workers, as ``./dev.sh test`` runs it, over ``write_tests``'s."""
    write_tests(tmp_path, fixture, modules)
    return subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup",
                           "--no-loadscope-reorder", "-p", "no:cacheprovider", "-q", "-rA",
                           str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_both_workers_read_the_tiny_pipeline_of_one_build(tmp_path):
    """Each worker asks for it at the same moment: one builds while the other waits, and
    both read what the one build wrote."""
    log = tmp_path / "log.txt"
    fixture = f'''
@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    def build(where):
        with open({str(log)!r}, "a") as f:
            f.write("build " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")
        time.sleep(1)
        where.mkdir()
        (where / "made_by").write_text(os.environ["PYTEST_XDIST_WORKER"])
    shared = project.session_folder(tmp_path_factory) / "tiny"
    shared.mkdir(exist_ok=True)
    return project.built_once(shared, build)

@pytest.fixture
def pipeline_copy(tiny_pipeline):
    return tiny_pipeline
'''
    reads = ("def test_reads(tiny_pipeline):\n"
             f"    with open({str(log)!r}, 'a') as f:\n"
             "        f.write('read ' + os.environ['PYTEST_XDIST_WORKER'] + ' '\n"
             "                + (tiny_pipeline / 'made_by').read_text() + '\\n')\n"
             "    time.sleep(0.5)\n"
             "def test_copies(pipeline_copy): time.sleep(0.2)\n"
             + "".join(f"def test_other{i}(): time.sleep(0.2)\n" for i in range(4)))
    done = run_two_workers(tmp_path, fixture, {f"test_{name}": "import os, time\n" + reads
                                               for name in "ab"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 passed" in done.stdout, done.stdout
    lines = log.read_text().splitlines()
    builds = [ln.split()[1] for ln in lines if ln.startswith("build")]
    assert len(builds) == 1, lines
    reads_by = {ln.split()[1]: ln.split()[2] for ln in lines if ln.startswith("read")}
    assert reads_by == {"gw0": builds[0], "gw1": builds[0]}, lines
    for name in "ab":       # a module's other tests stay together too (module fixtures)
        assert f"test_{name}.py::test_other0@test_{name}" in done.stdout, done.stdout


def test_a_failed_build_fails_the_other_worker_at_once(tmp_path):
    fixture = '''
@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    def build(where):
        where.mkdir()
        raise RuntimeError("dvc repro failed: the stage train@gru")
    shared = project.session_folder(tmp_path_factory) / "tiny"
    shared.mkdir(exist_ok=True)
    return project.built_once(shared, build)
'''
    reads = "def test_reads(tiny_pipeline): pass\n"
    done = run_two_workers(tmp_path, fixture, {"test_a": reads, "test_b": reads})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 errors" in done.stdout, done.stdout
    assert "RuntimeError: dvc repro failed: the stage train@gru" in done.stdout
    assert "failed on another worker:\nRuntimeError: dvc repro failed: the stage train@gru" \
        in done.stdout, done.stdout


def test_the_modules_go_out_longest_first(tmp_path):
    """``FIRST``'s modules before the rest, in its order, whatever their names' order."""
    write_tests(tmp_path, "", {"test_aaa": "def test_one(): pass\n",
                               "test_leaderboard": "def test_one(): pass\n",
                               "test_browser": "def test_one(): pass\ndef test_two(): pass\n"})
    order = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                            "-p", "no:cacheprovider", str(tmp_path)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120).stdout.splitlines()
    order = [ln.split("::")[0] for ln in order if "::" in ln]
    assert order == ["test_browser.py", "test_browser.py", "test_leaderboard.py",
                     "test_aaa.py"], order
