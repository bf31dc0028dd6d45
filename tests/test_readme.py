"""The README's examples run, and CI runs the README's test command verbatim."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_examples_run():
    blocks = [b for b in _blocks("python") if "__main__" not in b]
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


# torch's gloo teardown aborts a worker now and then when its interpreter exits, after the work,
# destroy_process_group included ("terminate called without an active exception", no Python frame
# left; measured on 2 cores in 2 of 16 runs of this example, and in 1 of 16 with the code of the
# session before, so not scq's code: the abort comes after the worker's last line has run).
# Only that failure is run again; any other fails the test at once.
TEARDOWN_ATTEMPTS = 3


def _gloo_teardown_abort(run) -> bool:
    return (run.returncode != 0 and "terminate called without an active exception" in run.stderr
            and "terminated with signal SIGABRT" in run.stderr)


def test_multiprocess_example_runs_as_a_script(tmp_path):
    # A script of its own: mp.spawn starts fresh interpreters that import the training function.
    scripts = [b for b in _blocks("python") if "__main__" in b]
    assert len(scripts) == 1 and "mp.spawn" in scripts[0]
    path = tmp_path / "ddp_example.py"
    path.write_text(scripts[0] + "\nprint('done')\n")
    for _ in range(TEARDOWN_ATTEMPTS):
        run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
        if not _gloo_teardown_abort(run):
            break
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("done")


def test_ci_runs_the_readme_test_command():
    commands = [line.strip() for block in _blocks("bash") for line in block.splitlines() if line.strip()]
    test_cmd = [c for c in commands if "pytest" in c]
    assert len(test_cmd) == 1
    assert test_cmd[0] in (ROOT / ".ci" / "run").read_text()
    assert any("scq bench --quick" in c for c in commands)
    assert all("torch==2.13.0" in c for c in commands if c.startswith("pip install"))
