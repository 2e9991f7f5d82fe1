"""Drafters slice of the config: the speculator trained online from the RL loop's rollouts."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DrafterConfig:
    enabled: bool = False  # train a drafter online and speculate with it in the rollout engine
    # eagle (EAGLE-1: one decoder layer on the policy's final hidden state) | eagle3 (EAGLE-3: one layer on three of the
    # policy's layer outputs, its own LM head over a draft vocabulary of train_vocab tokens; policies of >= 7 layers)
    # | draft_model (small draft LM) | lookup (no head: drafts looked up in the request's own text, its siblings' and
    # earlier completions of its prompt, rollout/lookup.py; nothing is trained, warmed up or exported)
    method: str = "eagle"
    num_speculative_tokens: int = 4  # the most tokens proposed per round; the controller picks K <= this per batch size
    lr: float = 3e-3  # drafter AdamW learning rate
    cls_weight: float = 1.0  # weight of the distillation loss KL(policy || drafter) at the sampling temperature
    train_depth: int = 4  # eagle: proposal steps trained, <= K (1 = teacher-forced; D > 1: steps 2..D on own outputs)
    train_chains: int = 64  # eagle, train_depth > 1: random proposal rounds per sequence trained at steps 2..D
    reg_weight: float = 0.1  # eagle: weight of the SmoothL1 regression of the next hidden state (EAGLE / TLT)
    batch_rows: int = 32  # sequences per drafter optimizer step
    # distil over the N tokens the replay window's rows use most (0 = the whole vocabulary): the drafter's and the
    # policy's logits restricted to them, renormalised. A real vocabulary makes the full-vocabulary KL the drafter's
    # whole cost (SmolLM2: 49,152 x 576 per position, ~13 s per optimizer step on 2 cores). eagle: the head still
    # drafts over the full vocabulary; eagle3: it drafts over these N tokens only (its draft vocabulary, chosen at the
    # first training), which also makes each draft step cheap. Verification keeps decoding lossless either way
    train_vocab: int = 0
    replay_steps: int = 2  # RL steps of rollouts kept in the replay window
    max_rows_per_step: int = 256  # rollout rows of one RL step added to the replay window (a random subset)
    budget_s: float = 2.0  # one rank: wall-clock budget of drafter training per RL step (not with background)
    # one rank, phase 8: "always" trains every step; "drift" only when the rollouts' acceptance fell below
    # (1 - drift_tolerance) x its level right after the drafter last changed, or no speculation ran (drafters/trigger.py)
    train_when: str = "always"
    drift_tolerance: float = 0.1
    # one rank: train in a separate nice-19 process while the step runs (on the core the rollout leaves idle) instead
    # of for budget_s after the update; up to max_steps_per_update steps per RL step (drafters/background.py)
    background: bool = False
    max_steps_per_update: int = 50  # cap on optimizer steps per RL step (idle windows included)
    # where the drafter starts: "" = trained from scratch by the warm start; "cache" = the warm-started drafter cached
    # for this base model, data and drafter settings (built by the first run that asks, reused by every later one: the
    # warm start's cost is paid once); a folder = that drafter checkpoint (a Laconic export or an EAGLE-1 head in
    # vLLM's layout), no warm start
    init: str = ""
    # optimizer steps over which the learning rate ramps linearly up to lr after drafter.init loaded weights into a
    # fresh optimizer: Adam's first steps move every weight by ~lr whatever its gradient, which knocks a trained head
    # off the policy it was fitted to (0 = no ramp)
    init_lr_ramp: int = 25
    warmup_steps: int = 300  # optimizer steps of the warm start on the base model's rollouts before RL step 1
    # optimizer steps after the last RL step on the replay window (the last steps' rollouts, no new ones), before the
    # final evaluation, checkpoint and export: the exported drafter is fitted to the final policy (0 = none)
    final_steps: int = 100
    # > 0: the final fit trains in rounds of final_round_steps and stops once a round's top-1 agreement (on the rows it
    # trained on) rose by less than this over the round before: the fit costs the run's time only while it buys
    # agreement (acceptance follows it); 0 = all final_steps
    final_min_gain: float = 0.0
    final_round_steps: int = 25
    # training prompts rolled out (rollout.n each, outside the RL prompt stream, after the warm start's) with the final
    # policy for the final fit, added to the replay window, which grows to hold them (0 = the replay window only)
    final_prompts: int = 0
    warmup_prompts: int = 64  # prompts rolled out (rollout.n each) for the warm start
    # completion cap of the warm-start rollouts (0 = rollout.max_tokens). Online training only sees the RL rollouts,
    # which a length recipe truncates (tiny_dler: 96 tokens), and the drafter drafts badly past what it saw (tiny_dler's
    # policy past token 96: 2.3 vs 4.2 expected tokens per K = 4 round; 3.5 with eval's cap 400 here). That costs:
    # the warm start took 120 s instead of 46 (drafter steps on 400-token rows), for no gain measurable in
    # rollout_speedup (long completions are ~1-4% of tokens), so the flagship keeps the default
    warmup_max_tokens: int = 0
    # end of run: generate calls per batch size of ``report_batch_sizes`` (held-out prompts, the rollout's cap and
    # temperature) made alternately with speculation and with the drafter off in the same engine; their tokens/s
    # ratio is the drafter speedup the run reports (0 = no measurement, only the controller's estimate)
    report_calls: int = 8
    report_batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    draft_layers: int = 1  # draft_model: decoder layers of the standalone draft LM
    draft_hidden: int = 0  # draft_model: hidden size (0 = the policy's)


def validate(cfg: DrafterConfig, max_model_len: int) -> None:
    """Rules of ``drafter.*`` (checked when the drafter is enabled); ``max_model_len`` is the rollout engine's
    context, which bounds the warm start's cap. Raises ValueError naming the field."""
    from laconic.registry import one_of

    one_of("drafter.method", cfg.method, ("eagle", "eagle3", "draft_model", "lookup"))
    if cfg.method == "lookup" and cfg.init:
        raise ValueError(f"drafter.init={cfg.init!r}: drafter.method=lookup has no weights to start from "
                         "(pass drafter.init= to clear it)")
    one_of("drafter.train_when", cfg.train_when, ("always", "drift"))
    if not 0 < cfg.drift_tolerance < 1:
        raise ValueError(f"drafter.drift_tolerance={cfg.drift_tolerance} must lie in (0, 1)")
    if cfg.init_lr_ramp < 0:
        raise ValueError(f"drafter.init_lr_ramp={cfg.init_lr_ramp} must be >= 0 (0 = no ramp)")
    for name in ("num_speculative_tokens", "batch_rows", "replay_steps", "max_rows_per_step", "max_steps_per_update",
                 "train_depth", "train_chains"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"drafter.{name}={getattr(cfg, name)} must be >= 1")
    if cfg.init not in ("", "cache"):
        from pathlib import Path

        folder = Path(cfg.init)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise ValueError(f"drafter.init={cfg.init!r} must be '', 'cache' or a drafter checkpoint folder "
                             f"(config.json + model.safetensors)")
    if cfg.train_vocab < 0:
        raise ValueError(f"drafter.train_vocab={cfg.train_vocab} must be >= 0 (0 = the whole vocabulary)")
    if cfg.train_vocab and cfg.method == "draft_model":
        raise ValueError(f"drafter.train_vocab={cfg.train_vocab} needs drafter.method=eagle or eagle3 (a draft_model "
                         f"has its own LM head, trained over the whole vocabulary)")
    if cfg.final_steps < 0:
        raise ValueError(f"drafter.final_steps={cfg.final_steps} must be >= 0 (0 = no final fit)")
    if not 0.0 <= cfg.final_min_gain < 1.0:
        raise ValueError(f"drafter.final_min_gain={cfg.final_min_gain} must lie in [0, 1) (0 = all final_steps)")
    if cfg.final_round_steps < 1:
        raise ValueError(f"drafter.final_round_steps={cfg.final_round_steps} must be >= 1")
    if cfg.final_prompts < 0:
        raise ValueError(f"drafter.final_prompts={cfg.final_prompts} must be >= 0 (0 = the replay window only)")
    if cfg.warmup_max_tokens < 0:
        raise ValueError(f"drafter.warmup_max_tokens={cfg.warmup_max_tokens} must be >= 0 (0 = rollout.max_tokens)")
    if cfg.report_calls < 0:
        raise ValueError(f"drafter.report_calls={cfg.report_calls} must be >= 0 (0 = no end-of-run measurement)")
    if cfg.report_calls and (not cfg.report_batch_sizes or min(cfg.report_batch_sizes) < 1):
        raise ValueError(f"drafter.report_batch_sizes={cfg.report_batch_sizes} must be batch sizes >= 1")
    if cfg.warmup_max_tokens >= max_model_len:
        raise ValueError(f"drafter.warmup_max_tokens={cfg.warmup_max_tokens} must be < rollout.max_model_len="
                         f"{max_model_len}")
