"""``run.resume=FOLDER`` naming no complete checkpoint is refused before any work, with a pointer to the newest
complete one."""
import pytest

from trainers.run.checkpoint import check_resume

pytestmark = pytest.mark.unit


def _checkpoint(root, step, complete=True):
    folder = root / "checkpoints" / f"step_{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "COMPLETE").write_text("")
    return folder


def test_a_complete_checkpoint_and_the_keywords_pass(tmp_path):
    check_resume("none")
    check_resume("auto")
    check_resume(str(_checkpoint(tmp_path, 2)))


def test_a_run_folder_points_at_its_newest_complete_checkpoint(tmp_path):
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 6, complete=False)
    with pytest.raises(ValueError, match=r"no COMPLETE marker.*did you mean run.resume='.*step_4'"):
        check_resume(str(tmp_path))


def test_a_partial_checkpoint_or_a_missing_folder_is_named(tmp_path):
    partial = _checkpoint(tmp_path, 3, complete=False)
    with pytest.raises(ValueError, match=r"run.resume='.*step_3' is not a complete checkpoint folder.*holds no "):
        check_resume(str(partial))
    with pytest.raises(ValueError, match="is not a folder"):
        check_resume(str(tmp_path / "nope"))


def test_launch_refuses_it_before_any_model_is_built(tmp_path, launch):
    p = launch(f"run.output_dir={tmp_path / 'run'}", f"run.resume={tmp_path}", check=False, timeout=120)
    assert p.returncode != 0
    assert "laconic: config error: run.resume=" in p.stderr and "no COMPLETE marker" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "run").exists()  # nothing was created
