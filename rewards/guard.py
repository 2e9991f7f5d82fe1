"""User reward code, run so that one bad call cannot stop a run.

A verifier or a user term may raise, or hang (a regex blow-up, an unbounded sympy simplification, a remote judge
that never answers). :func:`guarded` runs one call with a per-call timeout (``reward.timeout_s``): an exception or a
timeout becomes :class:`CallFailed`, which the caller turns into "this completion scores 0" and counts in
``RewardOutput.errors`` (the ``reward/errors`` metric). The first few failures of each function are printed with
the row, so a systematic bug is not hidden behind a counter.

The timeout is SIGALRM-based (Python code is interrupted between bytecodes; a blocking ``time.sleep`` or socket
read returns early). It needs the main thread; elsewhere (e.g. inside another library's worker thread) calls run
without a timer and only exceptions are caught -- said once on stderr. Verifiers that run their own SIGALRM timers
(``math``: math_verify) are called without ours, which would replace theirs.

User functions are named by import path: ``"package.module:function"`` or ``"path/to/file.py:function"``.
"""
from __future__ import annotations

import importlib
import importlib.util
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, TextIO

MAX_REPORTS = 3  # failures printed per function and kind (raised / timed out); the rest are only counted
_reported: dict[str, int] = {}
_warned_thread = False


class CallFailed(Exception):
    """A guarded call raised or timed out (``reason`` says which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Timeout(BaseException):  # BaseException: user code's ``except Exception`` must not swallow it
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


# where Laconic's own notices go: None = sys.stderr at the time of the call; a run's quiet console
# (trainers.run.console) points it at the terminal while third-party output goes to the run folder's log
NOTICES: TextIO | None = None


def notice(message: str) -> None:
    print(message, file=NOTICES or sys.stderr, flush=True)


def guarded(fn: Callable, args: tuple, timeout_s: float, name: str, where: str = "",
            own_timer: bool = False) -> Any:
    """``fn(*args)``, or :class:`CallFailed` when it raises or runs past ``timeout_s`` (0 = no timeout)."""
    global _warned_thread
    timed = timeout_s > 0 and not own_timer
    if timed and threading.current_thread() is not threading.main_thread():
        if not _warned_thread:
            notice("laconic: reward calls outside the main thread run without reward.timeout_s (SIGALRM needs the "
                   "main thread); exceptions are still caught")
            _warned_thread = True
        timed = False
    previous = None
    try:
        if timed:
            previous = signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn(*args)
        finally:
            if timed:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        reason = f"timed out after {timeout_s:g} s (reward.timeout_s)"
    except Exception as e:  # noqa: BLE001 - any failure of user reward code is scored 0 and counted
        reason = f"raised {type(e).__name__}: {e}"
    finally:
        if previous is not None:
            signal.signal(signal.SIGALRM, previous)
    _report(name, where, reason)
    raise CallFailed(reason)


def _report(name: str, where: str, reason: str) -> None:
    key = f"{name}|{reason.split(' ', 1)[0]}"  # per function and kind (raised / timed out)
    n = _reported.get(key, 0)
    _reported[key] = n + 1
    if n < MAX_REPORTS:
        more = " (further failures of it are only counted in reward/errors)" if n == MAX_REPORTS - 1 else ""
        notice(f"laconic: reward function {name!r} {reason}{' on ' + where if where else ''}; scored 0{more}")


def load_function(spec: str, field: str) -> Callable:
    """``"module:function"`` or ``"file.py:function"`` -> the function; a clear error naming ``field`` otherwise."""
    mod_name, _, fn_name = spec.rpartition(":")
    if not mod_name or not fn_name:
        raise ValueError(f"{field}={spec!r}: a user function is named 'package.module:function' or 'file.py:function'")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise ValueError(f"{field}={spec!r}: file {str(path)!r} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"laconic_user_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{field}={spec!r}: importing {str(path)!r} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(mod_name)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{field}={spec!r}: cannot import {mod_name!r}: {type(e).__name__}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{field}={spec!r}: {mod_name!r} has no function {fn_name!r}")
    return fn


def is_user_function(name: str) -> bool:
    return ":" in name
