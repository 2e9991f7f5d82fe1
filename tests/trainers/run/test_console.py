"""The quiet console: third-party output of a run goes to the run folder's console.log, Laconic's own lines and
bars to the terminal; an error still reaches the terminal."""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import logging, os, sys, warnings
from trainers.run import console
run_dir = sys.argv[1]
verbose = sys.argv[2] == "1"
with console.quiet(verbose):
    print("CHATTER-before-attach")                 # a library's print, before the run folder exists
    console.attach(run_dir)
    console.say("laconic: OWN-LINE")
    print("CHATTER-print"); sys.stderr.write("CHATTER-stderr\\n")
    os.write(1, b"CHATTER-fd1\\n")                   # C-level output
    os.system("echo CHATTER-child")                 # a child process inheriting the descriptors
    logging.getLogger("vllm").warning("CHATTER-logging")
    warnings.warn("CHATTER-warning")
    bar = console.progress_bar(total=2, desc="OWN-BAR")
    bar.update(2); bar.close()
    import rewards.guard
    rewards.guard.notice("laconic: OWN-NOTICE")
    if len(sys.argv) > 3:
        raise RuntimeError("OWN-ERROR")
print("AFTER-quiet")
"""


def _run(tmp_path, verbose=False, fail=False):
    args = [sys.executable, "-c", SCRIPT, str(tmp_path), "1" if verbose else "0"] + (["fail"] if fail else [])
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_third_party_output_goes_to_the_log_and_laconics_to_the_terminal(tmp_path):
    p = _run(tmp_path)
    assert p.returncode == 0, p.stderr
    terminal = p.stdout + p.stderr
    log = (tmp_path / "console.log").read_text()
    assert "CHATTER" not in terminal, terminal
    for word in ("before-attach", "print", "stderr", "fd1", "child", "logging", "warning"):
        assert f"CHATTER-{word}" in log, word
    assert "laconic: OWN-LINE" in p.stdout and "OWN-BAR" in p.stderr and "laconic: OWN-NOTICE" in p.stderr
    assert "laconic: OWN-LINE" in log  # the log is the whole story
    assert "AFTER-quiet" in p.stdout  # the descriptors are restored after the block


def test_an_error_reaches_the_terminal_and_the_log(tmp_path):
    p = _run(tmp_path, fail=True)
    assert p.returncode != 0
    assert "RuntimeError: OWN-ERROR" in p.stderr
    assert "RuntimeError: OWN-ERROR" in (tmp_path / "console.log").read_text()


def test_verbose_shows_everything(tmp_path):
    p = _run(tmp_path, verbose=True)
    assert p.returncode == 0, p.stderr
    assert "CHATTER-print" in p.stdout and "CHATTER-logging" in p.stderr
    assert not (tmp_path / "console.log").exists()
