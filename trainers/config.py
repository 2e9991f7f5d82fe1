"""The one typed config tree. Dataclasses are the only source of fields and defaults; recipes only set values.

Each room owns its slice (``rollout.config``, ``rewards.config``); this module composes them with the
trainer's own sections and holds the cross-field rules in :func:`validate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from laconic.registry import one_of

from drafters.config import DrafterConfig
from rewards.config import RewardConfig
from rollout.config import RolloutConfig
from trainers.algo.config import AlgoConfig


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
    path: str = "tiny-base"  # HF model folder; "tiny-base" = the embedded base model, "smollm2-135m-instruct" = the real one (both built and cached on demand)
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
    # a reasoning-RL length tail: this share of SFT traces re-checks tail_rechecks [min, max] times (uniform; ~56
    # tokens each) instead of the body's 0-6; context = the model's positions (0 = the build's default, 512)
    tail_share: float = 0.0
    tail_rechecks: list[int] = field(default_factory=lambda: [18, 34])
    context: int = 0

    def build_overrides(self) -> dict:
        """The base-model build parameters these settings ask for (recipes.tasks.base_model.build_params)."""
        out = {"max_steps": self.sft_steps} if self.sft_steps else {}
        if self.tail_share:
            out.update(tail_share=self.tail_share, tail_rechecks=list(self.tail_rechecks))
        if self.context:
            # the build's report samples up to the context too, so it sees the tail
            out.update(max_position_embeddings=self.context, eval_max_new_tokens=self.context - 64)
        if self.length_instructions:
            out.update(length_instructions=self.length_instructions, instruction_mode=self.instruction_mode,
                       instruction_spread=self.instruction_spread)
        return out


@dataclass
class LengthTargetConfig:
    # LCPO prompts: none | exact ("Think for N tokens.") | max ("Think for maximum N tokens.") | both (each problem one
    # of the two at random, as L1-Max's data; with reward.terms lcpo)
    mode: str = "none"
    min_tokens: int = 100  # training targets N are drawn uniformly from [min_tokens, max_tokens] per problem
    max_tokens: int = 4000  # upper end of the training target range
    none_frac: float = 0.0  # share of training problems that carry no target (plain correctness, as in L1)
    eval_targets: list[int] = field(default_factory=lambda: [512, 1024, 2048, 3600])  # held-out targets, cycled over problems


@dataclass
class DataConfig:
    task: str = "arith"  # embedded task in recipes.tasks.TASKS, or rg:NAME (a reasoning-gym task); used without train_file
    rg_config: dict = field(default_factory=dict)  # rg:NAME: the task's generator options (reasoning-gym's config fields)
    eval_task: str = ""  # held-out set instead of the task's own split: gsm8k (100 GSM8K test problems) | rg:NAME
    seed: int = 0  # seed of the task's problem generator
    n_train: int = 4000  # training problems generated for the embedded task
    n_eval: int = 256  # held-out problems generated for the embedded task
    train_rows: int = 0  # train on the first K training rows only (0 = all); the held-out split is unchanged
    train_file: str = ""  # JSONL/parquet of training rows (prompt, answer[, uid]); overrides task when set
    eval_file: str = ""  # JSONL/parquet of held-out rows
    length_target: LengthTargetConfig = field(default_factory=LengthTargetConfig)  # LCPO targets in the prompts
    prompt_template: str = "{prompt}"  # the user message; {prompt} = the row's prompt (with its length target, if any)
    chat_template: bool = False  # wrap the message with the tokenizer's chat template, assistant turn opened
    system_prompt: str = ""  # with chat_template: a system turn before the user message ("" = the template's default)


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
    # several ranks: after phase 3 the step's groups are dealt out again so that every rank trains on as many groups
    # and near-equal tokens (trainers/sampling.py balance_groups); the forward and update wait for the slowest rank,
    # and a long-tailed rollout leaves the long rows on one or two ranks. The loss is unchanged (global denominators)
    balance_ranks: bool = True
    max_sample_rounds: int = 3  # dynamic sampling: generation rounds per step before filling with dropped groups
    # zero spread of: reward (total reward) | score (total before the truncation rule: DLER) | correct (DAPO's acc)
    dynamic_sampling_metric: str = "reward"
    logprob_chunk: int = 0  # tokens per chunk in the memory-lean log-prob kernel; 0 = the kernel's per-device default
    logprob_backend: str = "auto"  # log-prob kernel: auto (Triton on CUDA when installed, else torch) | torch | triton
    eval_every: int = 10  # held-out evaluation every N steps (also at start and end); 0 = start and end only
    save_every: int = 0  # checkpoint every N steps (and at the end); 0 = only at the end
    # stop after this step with a checkpoint, before the run's end (final drafter fit, last evaluation, export), for a
    # job that must fit a time slot: run.resume=auto continues it; 0 = run to max_steps
    stop_at: int = 0
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
    verbose: bool = False  # show third-party output (vLLM, DeepSpeed, W&B, warnings) instead of sending it to console.log


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
    """Every room's own rules on its slice, then the rules that span rooms; checked before any model is loaded.
    Raises ValueError (or KeyError) naming the fields."""
    from drafters.config import validate as validate_drafter
    from rewards.config import validate as validate_reward
    from rollout.config import validate as validate_rollout
    from trainers.algo.config import validate as validate_algo

    validate_reward(cfg.reward)
    validate_rollout(cfg.rollout)
    validate_algo(cfg.algo)
    if cfg.drafter.enabled:
        validate_drafter(cfg.drafter, cfg.rollout.max_model_len)
    one_of("job", cfg.job, ("rl", "sft"))
    _validate_run(cfg)
    _validate_data(cfg)
    _validate_tiny_base(cfg.tiny_base)
    _validate_trainer(cfg.trainer, world_size, cfg.rollout)
    _validate_backend(cfg)
    _validate_across(cfg, world_size)


def _validate_run(cfg: Config) -> None:
    one_of("logging.wandb_mode", cfg.logging.wandb_mode, ("auto", "online", "offline"))
    if cfg.run.resume == "auto" and not cfg.run.output_dir:
        raise ValueError("run.resume=auto needs run.output_dir (the run folder whose checkpoints to resume)")


def _validate_data(cfg: Config) -> None:
    if "{prompt}" not in cfg.data.prompt_template:
        raise ValueError(f"data.prompt_template={cfg.data.prompt_template!r} must contain {{prompt}}")
    if cfg.data.train_rows < 0:
        raise ValueError(f"data.train_rows={cfg.data.train_rows} must be >= 0 (0 = every training row)")
    lt = cfg.data.length_target
    one_of("data.length_target.mode", lt.mode, ("none", "exact", "max", "both"))
    if lt.mode == "none":
        return
    if not 0 < lt.min_tokens <= lt.max_tokens:
        raise ValueError(f"data.length_target: need 0 < min_tokens ({lt.min_tokens}) <= max_tokens ({lt.max_tokens})")
    if not 0 <= lt.none_frac < 1:
        raise ValueError(f"data.length_target.none_frac={lt.none_frac} must lie in [0, 1)")
    if not lt.eval_targets or min(lt.eval_targets) <= 0:
        raise ValueError(f"data.length_target.eval_targets={lt.eval_targets} must be a non-empty list of positive ints")


def _validate_tiny_base(tb: TinyBaseConfig) -> None:
    if tb.sft_steps < 0:
        raise ValueError(f"tiny_base.sft_steps={tb.sft_steps} must be >= 0 (0 = the build's default)")
    if not 0.0 <= tb.tail_share < 1.0:
        raise ValueError(f"tiny_base.tail_share={tb.tail_share} must lie in [0, 1)")
    from recipes.tasks.arith import MAX_RECHECKS

    if len(tb.tail_rechecks) != 2 or not MAX_RECHECKS < tb.tail_rechecks[0] <= tb.tail_rechecks[1]:
        raise ValueError(f"tiny_base.tail_rechecks={tb.tail_rechecks} must be [min, max] with {MAX_RECHECKS} < min <= "
                         f"max (the body re-checks 0-{MAX_RECHECKS} times)")
    if tb.context and tb.context < 128:
        raise ValueError(f"tiny_base.context={tb.context} must be >= 128 (or 0: the build's default, 512)")
    if not 0.0 <= tb.length_instructions <= 1.0:
        raise ValueError(f"tiny_base.length_instructions={tb.length_instructions} must lie in [0, 1]")
    one_of("tiny_base.instruction_mode", tb.instruction_mode, ("exact", "max"))
    if not 0.0 <= tb.instruction_spread < 1.0:
        raise ValueError(f"tiny_base.instruction_spread={tb.instruction_spread} must lie in [0, 1)")


def _validate_trainer(t: TrainerConfig, world_size: int, r: RolloutConfig) -> None:
    one_of("trainer.logprob_backend", t.logprob_backend, ("auto", "torch", "triton"))
    one_of("trainer.dynamic_sampling_metric", t.dynamic_sampling_metric, ("reward", "score", "correct"))
    if t.max_nonfinite_steps < 1:
        raise ValueError(f"trainer.max_nonfinite_steps={t.max_nonfinite_steps} must be >= 1")
    for name in ("max_steps", "prompts_per_step", "mini_batches", "epochs", "micro_batch_size", "max_sample_rounds"):
        if getattr(t, name) <= 0:
            raise ValueError(f"trainer.{name}={getattr(t, name)} must be > 0")
    if not 0 <= t.stop_at < t.max_steps:
        raise ValueError(f"trainer.stop_at={t.stop_at} must lie in [0, trainer.max_steps={t.max_steps}) (0 = run to "
                         "the end; stopping at max_steps is the run's end)")
    if t.prompts_per_step % world_size:
        raise ValueError(f"trainer.prompts_per_step={t.prompts_per_step} must be divisible by the {world_size} ranks")
    seqs = t.prompts_per_step // world_size * r.n
    if seqs % t.mini_batches or (seqs // t.mini_batches) % t.micro_batch_size:
        raise ValueError(
            f"each rank's {seqs} sequences per step (trainer.prompts_per_step / ranks * rollout.n) must split into "
            f"trainer.mini_batches={t.mini_batches} mini-batches of whole trainer.micro_batch_size="
            f"{t.micro_batch_size} micro-batches")
    if t.logprob_backend == "triton":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("trainer.logprob_backend=triton needs a CUDA GPU; use auto or torch on CPU")


def _validate_backend(cfg: Config) -> None:
    """``deepspeed.*``, ``model.*``, ``critic.*``: what the backend builds."""
    d = cfg.deepspeed
    one_of("deepspeed.zero_stage", d.zero_stage, (0, 1, 2, 3))
    one_of("deepspeed.offload_optimizer", d.offload_optimizer, ("none", "cpu"))
    one_of("deepspeed.offload_param", d.offload_param, ("none", "cpu"))
    one_of("deepspeed.backend", d.backend, ("auto", "gloo", "nccl"))
    one_of("model.dtype", cfg.model.dtype, ("float32", "bfloat16", "float16"))
    if d.offload_param != "none" and d.zero_stage != 3:
        raise ValueError(f"deepspeed.offload_param={d.offload_param!r} needs deepspeed.zero_stage=3 (only ZeRO-3 "
                         f"partitions parameters), got zero_stage={d.zero_stage}")
    if d.offload_optimizer != "none" and d.zero_stage == 0:
        raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1 (ZeRO owns the optimizer state)")
    if cfg.model.lora.rank < 0:
        raise ValueError(f"model.lora.rank={cfg.model.lora.rank} must be >= 0 (0 = full fine-tuning)")
    if cfg.model.lora.rank > 0 and not cfg.model.lora.target_modules:
        raise ValueError("model.lora.rank > 0 needs model.lora.target_modules (e.g. [q_proj, v_proj])")
    if cfg.critic.value_clip <= 0:
        raise ValueError(f"critic.value_clip={cfg.critic.value_clip} must be > 0")


def _validate_across(cfg: Config, world_size: int) -> None:
    """Rules that span rooms: reward terms vs the advantage estimator and the data, sampling vs the trainer."""
    from rewards import TOKEN_LEVEL
    from rewards.registry import stateful_terms

    t, r, a = cfg.trainer, cfg.rollout, cfg.algo
    token_terms = sorted(set(cfg.reward.terms) & TOKEN_LEVEL)
    if token_terms and a.advantage != "token_group":
        raise ValueError(f"reward.terms {token_terms} produce token rewards: set algo.advantage=token_group")
    if a.advantage == "token_group" and not token_terms:
        raise ValueError("algo.advantage=token_group needs a token-level term in reward.terms (e.g. decs)")
    stateful = sorted(stateful_terms(cfg.reward))
    if t.dynamic_sampling and stateful and world_size > 1:
        raise ValueError(f"trainer.dynamic_sampling=true with the stateful reward term(s) {stateful} on {world_size} "
                         "ranks: the terms' state is gathered over ranks after every sampling round, and with dynamic "
                         "sampling each rank runs as many rounds as it needs; run one rank or set "
                         "trainer.dynamic_sampling=false")
    if cfg.reward.decs_curriculum.enabled and not t.dynamic_sampling:
        raise ValueError("reward.decs_curriculum.enabled adds back groups dynamic sampling dropped: set "
                         "trainer.dynamic_sampling=true")
    lcpo = sorted(set(cfg.reward.terms) & {"lcpo", "lcpo_exact", "lcpo_max"})
    if lcpo and cfg.data.length_target.mode == "none":
        raise ValueError(f"reward.terms {lcpo} read each prompt's length target: set data.length_target.mode")
    one_mode = sorted(set(lcpo) - {"lcpo"})
    if one_mode and cfg.data.length_target.mode == "both":
        raise ValueError(f"data.length_target.mode=both mixes Exact and Max prompts: use reward.terms lcpo (each row "
                         f"by its own instruction) instead of {one_mode}")
    if r.lookup_blend and cfg.drafter.enabled and cfg.drafter.method == "lookup":  # drafter off: nothing speculates
        raise ValueError("rollout.lookup_blend=true blends lookup drafts into a trained drafter's: it needs "
                         "drafter.method eagle, eagle3 or draft_model (drafter.method=lookup already drafts by lookup "
                         "alone)")
    if a.advantage == "grpo" and r.n < 2:
        raise ValueError("algo.advantage=grpo needs rollout.n >= 2 (group statistics of one sample are undefined)")
    if a.sampler_correction != "none" and not r.logprobs:
        raise ValueError(f"algo.sampler_correction={a.sampler_correction!r} needs rollout.logprobs=true "
                         "(the sampler's log-probs are the importance ratio's denominator)")
    if cfg.drafter.enabled and cfg.drafter.method in ("eagle", "eagle3") and cfg.model.dtype != r.dtype:
        raise ValueError(f"drafter.method={cfg.drafter.method} trains on the trainer's hidden states for the engine: model.dtype="
                         f"{cfg.model.dtype} must equal rollout.dtype={r.dtype}")
