"""The one typed config tree. Dataclasses are the only source of fields and defaults; recipes only set values.

Each room owns its slice (``rollout.config``, ``rewards.config``); this module composes them with the
trainer's own sections and holds the cross-field rules in :func:`validate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from drafters.config import DrafterConfig
from rewards.config import RewardConfig
from rollout.config import RolloutConfig


@dataclass
class RunConfig:
    output_dir: str = ""  # run folder; empty = runs/<recipe>-<timestamp>
    seed: int = 0  # seeds data order, sampling and initialisation
    resume: str = "none"  # "none" | "auto" (newest complete checkpoint in output_dir) | a checkpoint folder
    min_free_mb: int = 256  # free space the run folder's disk must have at start (checked before any model loads)


@dataclass
class LoraConfig:
    rank: int = 0  # LoRA rank r through peft; 0 = full fine-tuning
    alpha: float = 16.0  # LoRA scaling numerator: delta W = (alpha / r) B A
    dropout: float = 0.0  # dropout on the LoRA branch input
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"])  # module names that get adapters


@dataclass
class ModelConfig:
    path: str = "tiny-base"  # HF model folder, or "tiny-base" = the embedded base model (built and cached on demand)
    dtype: str = "float32"  # trainer dtype: float32 | bfloat16 | float16
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    ref_path: str = ""  # frozen reference model for the KL term; "" = the initial policy (model.path)
    lora: LoraConfig = field(default_factory=LoraConfig)  # parameter-efficient fine-tuning (peft)


@dataclass
class CriticConfig:
    model: str = "policy"  # value model backbone: "policy" = a copy of the policy's backbone, or an HF model folder
    lr: float = 1e-5  # critic AdamW learning rate (its own DeepSpeed engine and optimizer)
    warmup_steps: int = 0  # critic learning-rate warm-up in optimizer steps
    value_clip: float = 0.2  # clipped value loss: V is kept within +-value_clip of the rollout-time value
    grad_clip: float = 1.0  # critic gradient-norm clip; 0 disables


@dataclass
class TinyBaseConfig:
    seed: int = 0  # seed of the embedded base model's data and SFT
    force: bool = False  # rebuild even when a cached model exists
    sft_steps: int = 0  # SFT optimizer steps (0 = the build's default, 3000)
    length_instructions: float = 0.0  # share of SFT prompts stating the trace's length loosely (a base for LCPO)
    instruction_mode: str = "exact"  # the stated line: exact ("Think for N tokens.") | max ("... maximum N ...")
    instruction_spread: float = 0.5  # stated N = trace length x U[1 - spread, 1 + spread] (max: U[1, 1 + spread])

    def build_overrides(self) -> dict:
        """The base-model build parameters these settings ask for (recipes.tasks.base_model.build_params)."""
        out = {"max_steps": self.sft_steps} if self.sft_steps else {}
        if self.length_instructions:
            out.update(length_instructions=self.length_instructions, instruction_mode=self.instruction_mode,
                       instruction_spread=self.instruction_spread)
        return out


@dataclass
class LengthTargetConfig:
    mode: str = "none"  # LCPO prompts: none | exact ("Think for N tokens.") | max ("Think for maximum N tokens.")
    min_tokens: int = 100  # training targets N are drawn uniformly from [min_tokens, max_tokens] per problem
    max_tokens: int = 4000  # upper end of the training target range
    none_frac: float = 0.0  # share of training problems that carry no target (plain correctness, as in L1)
    eval_targets: list[int] = field(default_factory=lambda: [512, 1024, 2048, 3600])  # held-out targets, cycled over problems


@dataclass
class DataConfig:
    task: str = "arith"  # embedded task name in recipes.tasks.TASKS (used when train_file is empty)
    seed: int = 0  # seed of the task's problem generator
    n_train: int = 4000  # training problems generated for the embedded task
    n_eval: int = 256  # held-out problems generated for the embedded task
    train_rows: int = 0  # train on the first K training rows only (0 = all); the held-out split is unchanged
    train_file: str = ""  # JSONL/parquet of training rows (prompt, answer[, uid]); overrides task when set
    eval_file: str = ""  # JSONL/parquet of held-out rows
    length_target: LengthTargetConfig = field(default_factory=LengthTargetConfig)  # LCPO targets in the prompts
    prompt_template: str = "{prompt}"  # the user message; {prompt} = the row's prompt (with its length target, if any)
    chat_template: bool = False  # wrap the message with the tokenizer's chat template, assistant turn opened


@dataclass
class AlgoConfig:
    advantage: str = "grpo"  # advantage estimator in trainers.advantages.ADVANTAGE
    scale_std: bool = True  # GRPO: divide the group-centred reward by the group std (False = Dr.GRPO)
    std_eps: float = 1e-6  # added to the group std
    whiten: str = "token"  # dler_batch: whiten over all valid tokens (released code) | "sequence" (paper)
    whiten_eps: float = 1e-8  # dler_batch: (A - mean) / sqrt(var + eps)
    loss: str = "ppo_clip"  # per-token policy loss in trainers.losses.LOSS
    clip_low: float = 0.2  # PPO ratio clip below: 1 - clip_low
    clip_high: float = 0.2  # PPO ratio clip above: 1 + clip_high (clip-higher: e.g. 0.28)
    aggregation: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    norm_length: int = 0  # seq-mean-token-sum-norm's constant divisor; 0 = rollout.max_tokens (Dr.GRPO)
    whiten_advantages: bool = False  # whiten advantages over the whole batch (all ranks) after the estimator (PPO)
    gamma: float = 1.0  # gae: discount
    lam: float = 1.0  # gae: lambda of generalised advantage estimation
    kl_coef: float = 0.0  # weight beta of KL(policy || reference); 0 = no reference model is loaded at all
    kl_estimator: str = "k3"  # k1 (log-ratio) | k2 (squared log-ratio / 2) | k3 (low-variance, Schulman)
    kl_in_reward: bool = False  # subtract beta * KL per token from the reward (PPO style) instead of adding it to the loss
    sampler_correction: str = "none"  # vLLM-vs-trainer mismatch: none | token_tis | token_mis | seq_tis | seq_mis
    sampler_is_cap: float = 2.0  # truncation (tis) or rejection (mis) threshold of the sampler importance ratio


@dataclass
class OptimConfig:
    lr: float = 1e-5  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.999  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables
    warmup_steps: int = 0  # linear learning-rate warm-up in optimizer steps


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 0  # ZeRO stage 0-3
    backend: str = "auto"  # torch.distributed backend: auto (nccl on GPU, gloo on CPU) | gloo | nccl
    offload_optimizer: str = "none"  # ZeRO optimizer-state offload: none | cpu
    offload_param: str = "none"  # ZeRO-3 parameter offload: none | cpu
    sync_bucket_mb: int = 256  # weight sync gathers ZeRO-3 parameters and pushes them to vLLM in buckets of this size


@dataclass
class TrainerConfig:
    max_steps: int = 20  # RL steps
    prompts_per_step: int = 16  # prompts per RL step over all ranks (each sampled rollout.n times)
    mini_batches: int = 1  # optimizer steps per pass over a step's rollouts
    epochs: int = 1  # passes over a step's rollouts (>1 makes the PPO ratio matter)
    micro_batch_size: int = 16  # sequences per forward/backward on one rank
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards have zero spread, sample more until full
    max_sample_rounds: int = 3  # dynamic sampling: generation rounds per step before filling with dropped groups
    dynamic_sampling_metric: str = "reward"  # zero spread of: reward (total reward) | correct (verdicts, DAPO's acc)
    logprob_chunk: int = 0  # tokens per chunk in the memory-lean log-prob kernel; 0 = the kernel's per-device default
    logprob_backend: str = "auto"  # log-prob kernel: auto (Triton on CUDA when installed, else torch) | torch | triton
    eval_every: int = 10  # held-out evaluation every N steps (also at start and end); 0 = start and end only
    save_every: int = 0  # checkpoint every N steps (and at the end); 0 = only at the end
    keep_last: int = 2  # checkpoints kept on disk
    max_nonfinite_steps: int = 3  # steps in a row whose loss was NaN/inf (each skipped) before the run stops
    sync_check_every: int = 0  # every N weight syncs, verify vLLM's greedy output is the trainer's argmax; 0 = off
    sync_check_prompts: int = 2  # held-out prompts decoded greedily by the sync check


@dataclass
class EvalConfig:
    temperature: float = 1.0  # held-out sampling temperature (pass@1 at this temperature)
    top_p: float = 1.0  # held-out nucleus mass
    samples: int = 1  # samples per held-out problem
    max_tokens: int = 0  # completion cap for evaluation; 0 = rollout.max_tokens
    seed: int = 1234  # fixed seed so before/after evaluations sample comparably


@dataclass
class LoggingConfig:
    wandb: bool = True  # log to Weights & Biases
    wandb_mode: str = "auto"  # auto (online if logged in, else offline) | online | offline
    project: str = "laconic"  # W&B project
    progress: bool = True  # progress bar with the headline metrics


@dataclass
class Config:
    recipe: str = "tiny_dler"  # recipe the run was started from (informational)
    job: str = "rl"  # rl = RL training | sft = build the embedded base model
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    tiny_base: TinyBaseConfig = field(default_factory=TinyBaseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    drafter: DrafterConfig = field(default_factory=DrafterConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def validate(cfg: Config, world_size: int = 1) -> None:
    """Cross-field rules, checked before any model is loaded. Raises ValueError naming the fields."""
    from rewards.registry import check_names, resolve_verifier, stateful_terms

    check_names(cfg.reward)  # unknown terms / transforms, user terms ("module:function") importable
    resolve_verifier(cfg.reward.correctness.verifier)
    if cfg.reward.timeout_s < 0:
        raise ValueError(f"reward.timeout_s={cfg.reward.timeout_s} must be >= 0 (0 = no per-call timeout)")
    if "{prompt}" not in cfg.data.prompt_template:
        raise ValueError(f"data.prompt_template={cfg.data.prompt_template!r} must contain {{prompt}}")
    if cfg.data.train_rows < 0:
        raise ValueError(f"data.train_rows={cfg.data.train_rows} must be >= 0 (0 = every training row)")
    _validate_tiny_base(cfg.tiny_base)
    if cfg.trainer.max_nonfinite_steps < 1:
        raise ValueError(f"trainer.max_nonfinite_steps={cfg.trainer.max_nonfinite_steps} must be >= 1")
    from rewards import TERMS
    from trainers.advantages import ADVANTAGE
    from trainers.aggregation import AGGREGATIONS
    from trainers.losses import LOSS

    t, r, a = cfg.trainer, cfg.rollout, cfg.algo
    _one_of("job", cfg.job, ("rl", "sft"))
    _one_of("algo.advantage", a.advantage, ADVANTAGE)
    _one_of("algo.loss", a.loss, LOSS)
    _one_of("algo.aggregation", a.aggregation, AGGREGATIONS)
    _one_of("algo.whiten", a.whiten, ("token", "sequence"))
    _one_of("deepspeed.zero_stage", cfg.deepspeed.zero_stage, (0, 1, 2, 3))
    _one_of("deepspeed.offload_optimizer", cfg.deepspeed.offload_optimizer, ("none", "cpu"))
    _one_of("deepspeed.offload_param", cfg.deepspeed.offload_param, ("none", "cpu"))
    _one_of("trainer.logprob_backend", t.logprob_backend, ("auto", "torch", "triton"))
    _one_of("trainer.dynamic_sampling_metric", t.dynamic_sampling_metric, ("reward", "correct"))
    _one_of("deepspeed.backend", cfg.deepspeed.backend, ("auto", "gloo", "nccl"))
    _one_of("model.dtype", cfg.model.dtype, ("float32", "bfloat16", "float16"))
    _one_of("logging.wandb_mode", cfg.logging.wandb_mode, ("auto", "online", "offline"))
    for name in cfg.reward.terms:
        if ":" not in name:  # "module:function" user terms were checked by check_names above
            _one_of("reward.terms", name, TERMS)
    from rewards import TOKEN_LEVEL

    token_terms = sorted(set(cfg.reward.terms) & TOKEN_LEVEL)
    if token_terms and a.advantage != "token_group":
        raise ValueError(f"reward.terms {token_terms} produce token rewards: set algo.advantage=token_group")
    if a.advantage == "token_group" and not token_terms:
        raise ValueError("algo.advantage=token_group needs a token-level term in reward.terms (e.g. decs)")
    from rewards import TRANSFORMS
    from rewards.registry import TRUNCATION

    _one_of("reward.truncation", cfg.reward.truncation, TRUNCATION)
    for name in cfg.reward.transforms:
        _one_of("reward.transforms", name, TRANSFORMS)
    if cfg.reward.difficulty_cap_threshold > 0 and cfg.reward.truncation == "none":
        raise ValueError("reward.difficulty_cap_threshold > 0 does nothing with reward.truncation=none: set zero|scale")
    stateful = sorted(stateful_terms(cfg.reward))
    if t.dynamic_sampling and stateful and world_size > 1:
        raise ValueError(f"trainer.dynamic_sampling=true with the stateful reward term(s) {stateful} on {world_size} "
                         "ranks: the terms' state is gathered over ranks after every sampling round, and with dynamic "
                         "sampling each rank runs as many rounds as it needs; run one rank or set "
                         "trainer.dynamic_sampling=false")
    if cfg.reward.decs_curriculum.enabled and not t.dynamic_sampling:
        raise ValueError("reward.decs_curriculum.enabled adds back groups dynamic sampling dropped: set "
                         "trainer.dynamic_sampling=true")
    _validate_length_target(cfg)
    _one_of("reward.hapo.mode", cfg.reward.hapo.mode, ("min", "mean"))
    _positive(t=t, r=r)
    if cfg.run.resume == "auto" and not cfg.run.output_dir:
        raise ValueError("run.resume=auto needs run.output_dir (the run folder whose checkpoints to resume)")
    if t.prompts_per_step % world_size:
        raise ValueError(f"trainer.prompts_per_step={t.prompts_per_step} must be divisible by the {world_size} ranks")
    seqs = t.prompts_per_step // world_size * r.n
    if seqs % t.mini_batches or (seqs // t.mini_batches) % t.micro_batch_size:
        raise ValueError(
            f"each rank's {seqs} sequences per step (trainer.prompts_per_step / ranks * rollout.n) must split into "
            f"trainer.mini_batches={t.mini_batches} mini-batches of whole trainer.micro_batch_size="
            f"{t.micro_batch_size} micro-batches")
    if r.max_tokens >= r.max_model_len:
        raise ValueError(f"rollout.max_tokens={r.max_tokens} must be < rollout.max_model_len={r.max_model_len}")
    if not (0 <= a.clip_low < 1 and a.clip_high >= 0):
        raise ValueError(f"algo.clip_low={a.clip_low} must be in [0,1) and algo.clip_high={a.clip_high} >= 0")
    if a.advantage == "grpo" and r.n < 2:
        raise ValueError("algo.advantage=grpo needs rollout.n >= 2 (group statistics of one sample are undefined)")
    _validate_trainer_depth(cfg)


def _validate_tiny_base(tb: TinyBaseConfig) -> None:
    if tb.sft_steps < 0:
        raise ValueError(f"tiny_base.sft_steps={tb.sft_steps} must be >= 0 (0 = the build's default)")
    if not 0.0 <= tb.length_instructions <= 1.0:
        raise ValueError(f"tiny_base.length_instructions={tb.length_instructions} must lie in [0, 1]")
    _one_of("tiny_base.instruction_mode", tb.instruction_mode, ("exact", "max"))
    if not 0.0 <= tb.instruction_spread < 1.0:
        raise ValueError(f"tiny_base.instruction_spread={tb.instruction_spread} must lie in [0, 1)")


def _validate_length_target(cfg: Config) -> None:
    lt = cfg.data.length_target
    _one_of("data.length_target.mode", lt.mode, ("none", "exact", "max"))
    lcpo = sorted(set(cfg.reward.terms) & {"lcpo_exact", "lcpo_max"})
    if lcpo and lt.mode == "none":
        raise ValueError(f"reward.terms {lcpo} read each prompt's length target: set data.length_target.mode")
    if lt.mode == "none":
        return
    if not 0 < lt.min_tokens <= lt.max_tokens:
        raise ValueError(f"data.length_target: need 0 < min_tokens ({lt.min_tokens}) <= max_tokens ({lt.max_tokens})")
    if not 0 <= lt.none_frac < 1:
        raise ValueError(f"data.length_target.none_frac={lt.none_frac} must lie in [0, 1)")
    if not lt.eval_targets or min(lt.eval_targets) <= 0:
        raise ValueError(f"data.length_target.eval_targets={lt.eval_targets} must be a non-empty list of positive ints")


def _validate_trainer_depth(cfg: Config) -> None:
    """Rules of the PPO / KL / mismatch-correction / LoRA / ZeRO options."""
    from trainers.losses import KL, SAMPLER_CORRECTION

    a, d = cfg.algo, cfg.deepspeed
    _one_of("algo.kl_estimator", a.kl_estimator, KL)
    _one_of("algo.sampler_correction", a.sampler_correction, SAMPLER_CORRECTION)
    if a.kl_coef < 0:
        raise ValueError(f"algo.kl_coef={a.kl_coef} must be >= 0")
    if a.kl_in_reward and a.kl_coef == 0:
        raise ValueError("algo.kl_in_reward=true needs algo.kl_coef > 0 (there is no KL penalty to put in the reward)")
    if a.sampler_correction != "none" and not cfg.rollout.logprobs:
        raise ValueError(f"algo.sampler_correction={a.sampler_correction!r} needs rollout.logprobs=true "
                         "(the sampler's log-probs are the importance ratio's denominator)")
    if a.sampler_is_cap <= 1:
        raise ValueError(f"algo.sampler_is_cap={a.sampler_is_cap} must be > 1")
    if not (0 <= a.gamma <= 1 and 0 <= a.lam <= 1):
        raise ValueError(f"algo.gamma={a.gamma} and algo.lam={a.lam} must lie in [0, 1]")
    if d.offload_param != "none" and d.zero_stage != 3:
        raise ValueError(f"deepspeed.offload_param={d.offload_param!r} needs deepspeed.zero_stage=3 (only ZeRO-3 "
                         f"partitions parameters), got zero_stage={d.zero_stage}")
    if d.offload_optimizer != "none" and d.zero_stage == 0:
        raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1 (ZeRO owns the optimizer state)")
    if cfg.model.lora.rank < 0:
        raise ValueError(f"model.lora.rank={cfg.model.lora.rank} must be >= 0 (0 = full fine-tuning)")
    if cfg.model.lora.rank > 0 and not cfg.model.lora.target_modules:
        raise ValueError("model.lora.rank > 0 needs model.lora.target_modules (e.g. [q_proj, v_proj])")
    if cfg.trainer.logprob_backend == "triton":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("trainer.logprob_backend=triton needs a CUDA GPU; use auto or torch on CPU")
    dr = cfg.drafter
    if dr.enabled:
        _one_of("drafter.method", dr.method, ("eagle", "draft_model"))
        for name in ("num_speculative_tokens", "batch_rows", "replay_steps", "max_rows_per_step",
                     "max_steps_per_update", "train_depth", "train_chains"):
            if getattr(dr, name) < 1:
                raise ValueError(f"drafter.{name}={getattr(dr, name)} must be >= 1")
        if dr.final_steps < 0:
            raise ValueError(f"drafter.final_steps={dr.final_steps} must be >= 0 (0 = no final fit)")
        if dr.final_prompts < 0:
            raise ValueError(f"drafter.final_prompts={dr.final_prompts} must be >= 0 (0 = the replay window only)")
        if dr.warmup_max_tokens < 0:
            raise ValueError(f"drafter.warmup_max_tokens={dr.warmup_max_tokens} must be >= 0 (0 = rollout.max_tokens)")
        if dr.report_calls < 0:
            raise ValueError(f"drafter.report_calls={dr.report_calls} must be >= 0 (0 = no end-of-run measurement)")
        if dr.report_calls and (not dr.report_batch_sizes or min(dr.report_batch_sizes) < 1):
            raise ValueError(f"drafter.report_batch_sizes={dr.report_batch_sizes} must be batch sizes >= 1")
        if dr.warmup_max_tokens >= cfg.rollout.max_model_len:
            raise ValueError(f"drafter.warmup_max_tokens={dr.warmup_max_tokens} must be < rollout.max_model_len="
                             f"{cfg.rollout.max_model_len}")
        if dr.method == "eagle" and cfg.model.dtype != cfg.rollout.dtype:
            raise ValueError(f"drafter.method=eagle trains on the trainer's hidden states for the engine: model.dtype="
                             f"{cfg.model.dtype} must equal rollout.dtype={cfg.rollout.dtype}")
    if cfg.critic.value_clip <= 0:
        raise ValueError(f"critic.value_clip={cfg.critic.value_clip} must be > 0")


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {sorted(allowed, key=str)}")


def _positive(t: TrainerConfig, r: RolloutConfig) -> None:
    for name, v in (("trainer.max_steps", t.max_steps), ("trainer.prompts_per_step", t.prompts_per_step),
                    ("trainer.mini_batches", t.mini_batches), ("trainer.epochs", t.epochs),
                    ("trainer.micro_batch_size", t.micro_batch_size), ("rollout.n", r.n),
                    ("trainer.max_sample_rounds", t.max_sample_rounds),
                    ("rollout.max_tokens", r.max_tokens)):
        if v <= 0:
            raise ValueError(f"{name}={v} must be > 0")
    if r.temperature <= 0:
        raise ValueError(f"rollout.temperature={r.temperature} must be > 0: RL learns from sampled completions")
    if 0 < r.spec_explore_every < 3:
        raise ValueError(f"rollout.spec_explore_every={r.spec_explore_every} must be 0 (no exploration) or >= 3 (an "
                         "exploration lasts two steps)")
    if r.spec_sampling not in ("auto", "coupled", "rejection"):
        raise ValueError(f"rollout.spec_sampling={r.spec_sampling!r} must be 'auto', 'coupled' or 'rejection'")
    if r.spec_handoff_max < 0:
        raise ValueError(f"rollout.spec_handoff_max={r.spec_handoff_max} must be >= 0 (0 = never hand over)")
