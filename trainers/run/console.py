"""A quiet console: the terminal shows Laconic's own lines and progress bars; everything else a run's libraries
print (vLLM's and DeepSpeed's logs, TRL's and datasets' bars, W&B's notices, transformers' and Python warnings,
C-level output) goes to the run folder's ``console.log`` (``console.rank<N>.log`` for rank N > 0).

How: inside :func:`quiet`, file descriptors 1 and 2 point at the log, so every writer that does not ask for the
terminal lands there, whichever library and however it writes; the terminal stays reachable through copies of the
original descriptors, which :func:`say`, :func:`terminal` and :func:`progress_bar` use. Until the run folder exists
(it is chosen after the config is read, by rank 0) the log is a temporary file that :func:`attach` moves into it.
Leaving :func:`quiet` (also by an exception) restores the descriptors first, so errors and tracebacks reach the
terminal; a traceback is also appended to the log. ``logging.verbose=true`` skips all of it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Iterator, TextIO

_terminal: TextIO | None = None  # Laconic's own stream while quiet (a copy of the original stdout)
_terminal_err: TextIO | None = None  # progress bars while quiet (a copy of the original stderr)
_log_path: Path | None = None  # where descriptors 1 and 2 point while quiet


def terminal() -> TextIO:
    """The stream Laconic's own lines go to (sys.stdout when not quiet)."""
    return _terminal or sys.stdout


def say(message: str) -> None:
    """One of Laconic's own lines: on the terminal, and in the log while quiet."""
    print(message, file=terminal(), flush=True)
    if _terminal is not None:
        print(message, file=sys.stdout, flush=True)


def progress_bar(*args, **kwargs):
    """``tqdm(...)`` drawn on the terminal (the bars' stream is stderr when not quiet), e.g. vLLM's ``use_tqdm``."""
    from tqdm.auto import tqdm

    return tqdm(*args, file=_terminal_err or sys.stderr, **kwargs)


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Send third-party output to the log for the duration of the block (module docstring); no-op if verbose."""
    global _terminal, _terminal_err, _log_path
    if verbose or _terminal is not None:
        yield
        return
    _flush()
    saved = os.dup(1), os.dup(2)
    fd, name = tempfile.mkstemp(prefix="laconic-console-", suffix=".log")
    _log_path = Path(name)
    _terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    _terminal_err = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _quiet_libraries()
    import rewards.guard

    rewards.guard.NOTICES = _terminal_err  # reward-call failures are Laconic's notices
    try:
        yield
    except BaseException as e:
        if not isinstance(e, SystemExit):
            traceback.print_exc(file=sys.stderr)  # into the log too
        raise
    finally:
        rewards.guard.NOTICES = None
        _flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved,):
            os.close(f)
        for stream in (_terminal, _terminal_err):
            stream.close()
        if _log_path.name.startswith("laconic-console-"):  # never attached: nothing of the run's to keep
            _log_path.unlink(missing_ok=True)
        _terminal = _terminal_err = _log_path = None


def attach(run_dir: Path, rank: int = 0) -> Path | None:
    """Move the log into ``run_dir`` (what was written so far included) and keep writing there. No-op when not
    quiet. -> the log's path."""
    global _log_path
    if _log_path is None:
        return None
    dest = Path(run_dir) / ("console.log" if rank == 0 else f"console.rank{rank}.log")
    if dest == _log_path:
        return dest
    _flush()
    with open(dest, "ab") as out, open(_log_path, "rb") as src:
        shutil.copyfileobj(src, out)
    fd = os.open(dest, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _log_path.unlink(missing_ok=True)
    _log_path = dest
    return dest


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _quiet_libraries() -> None:
    """Settings that keep the log readable: no progress bars of datasets' map calls, no W&B console notices
    (W&B keeps its own logs in the run folder's wandb/)."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("WANDB_SILENT", "true")
