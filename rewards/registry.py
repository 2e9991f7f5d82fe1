"""Reward terms and rollout transforms registered by name, and ``compute``, which runs them in four phases:

1. verify     ``VERIFIERS[cfg.correctness.verifier]`` once per completion -> ``RewardInput.correct``. The format
              gate and answer check stay in one place and every term reads the same verdict.
2. transform  each name in ``cfg.transforms`` in order: ``TRANSFORMS[name](inp, cfg) -> RewardInput``. A transform
              rewrites completions (DOT cuts outliers and re-verifies them); ``RewardOutput.kept_tokens`` tells the
              trainer how many tokens of each completion remain.
3. terms      ``TERMS[name](inp, cfg) -> [B]`` (or ``[B,T]`` for token-level terms; ``fn(inp, cfg, state)`` for
              stateful ones), summed with the weights of ``cfg.terms``.
4. truncation ``TRUNCATION[cfg.truncation]`` on the rows :func:`truncated_rows` marks: cut at the cap, or (DA-DLER)
              longer than ``difficulty_cap_factor x max_tokens`` in a group whose accuracy is >= the threshold.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import torch

from laconic.registry import Registry, suggest
from rewards.groups import group_mean
from rewards.guard import CallFailed, guarded, is_user_function, load_function
from rewards.plugins import as_term, as_verifier
from rewards.types import RewardInput, RewardOutput
from rewards.verifiers import SELF_TIMED, VERIFIERS

if TYPE_CHECKING:
    from rewards.config import RewardConfig

TermFn = Callable[..., torch.Tensor]
TransformFn = Callable[[RewardInput, "RewardConfig"], RewardInput]
TERMS: Registry = Registry("reward term")
STATE_TYPES: dict[str, type] = {}  # stateful terms: name -> state class (state_dict / load_state_dict / observe / apply)
TOKEN_LEVEL: set[str] = set()  # terms returning [B,T] token rewards instead of [B]
TRANSFORMS: Registry = Registry("rollout transform")  # verified input -> rewritten, re-verified input
SECTIONS: dict[str, type] = {}  # config section (reward.<key>) -> the dataclass a term or transform file declares
VALIDATORS: dict[str, Callable] = {}  # config section -> its validation, fn(section) raising ValueError
_USER: dict[str, Callable] = {}  # user verifiers / terms named "module:function", loaded once
TRUNCATION: dict[str, Callable[[torch.Tensor, torch.Tensor, "RewardConfig"], torch.Tensor]] = {
    "none": lambda r, cut, cfg: r,
    "zero": lambda r, cut, cfg: torch.where(cut, torch.zeros_like(r), r),  # DLER paper: truncated -> reward 0
    "scale": lambda r, cut, cfg: torch.where(cut, cfg.truncation_scale * r, r),  # DLER code: x 0.1
}


def register_term(name: str, state: type | None = None, token_level: bool = False, config: type | None = None,
                  validate: Callable | None = None) -> Callable[[TermFn], TermFn]:
    """Decorator adding ``fn`` to :data:`TERMS`; a second term with the same name is an error. A term is one file
    that declares, here, everything Laconic needs of it:

    - ``config``: its dataclass of parameters, which becomes the config section ``reward.<name>`` (the term reads
      ``cfg.<name>``); its weight is the one in ``reward.terms``, never a field of its own;
    - ``validate``: ``fn(section)`` raising ValueError naming the field, run before any model is built;
    - ``state``: for a stateful term, the class of its per-problem state (``state_dict`` / ``load_state_dict`` /
      ``observe`` / ``apply`` / ``history`` / ``seed``); the term is then called ``fn(inp, cfg, state)``, and reads,
      never writes, the state (every reward of a batch sees the state from before the batch);
    - ``token_level``: the term returns [B,T] token rewards instead of [B].

    Term files live in ``rewards/``, which :mod:`rewards.config` imports whole before it builds ``RewardConfig``.
    """

    def deco(fn: TermFn) -> TermFn:
        TERMS.add(name, fn)
        _declare(name, config, validate)
        if token_level:
            TOKEN_LEVEL.add(name)
        if state is not None:
            STATE_TYPES[name] = state
        return fn

    return deco


def _declare(section: str, config: type | None, validate: Callable | None) -> None:
    if config is not None:
        if section in SECTIONS:
            raise ValueError(f"config section reward.{section} is already declared by {SECTIONS[section].__module__}")
        SECTIONS[section] = config
    if validate is not None:
        VALIDATORS[section] = validate


def register_transform(name: str, config: type | None = None,
                       validate: Callable | None = None) -> Callable[[TransformFn], TransformFn]:
    """Decorator adding ``fn(inp, cfg) -> RewardInput`` to :data:`TRANSFORMS`; duplicates are an error.

    A transform receives a verified input and returns one whose rows are consistent: cut texts, ``num_tokens`` (the
    tokens kept), ``token_offsets`` and re-verified ``correct``. It never changes the number of rows."""

    def deco(fn: TransformFn) -> TransformFn:
        TRANSFORMS.add(name, fn)
        _declare(name, config, validate)
        return fn

    return deco


def stateful_terms(cfg: RewardConfig) -> list[str]:
    """The terms of ``cfg`` that keep state across steps (their state is gathered over ranks every sampling round)."""
    return [name for name in cfg.terms if name in STATE_TYPES]


def make_states(cfg: RewardConfig) -> dict[str, object]:
    """State objects for the stateful terms ``cfg`` uses (the trainer checkpoints them), seeded from
    ``cfg.history_file`` when it is set."""
    states = {name: STATE_TYPES[name](cfg) for name in stateful_terms(cfg)}
    for name, history in read_history_file(cfg).items():
        states[name].seed(history)
    return states


def read_history_file(cfg: RewardConfig) -> dict[str, dict]:
    """``reward.history_file`` as ``{term: {uid: history}}`` (empty when unset); a ValueError naming the field and
    the file when it is missing, not JSON, or names a term that is not a stateful term of ``reward.terms``."""
    import json

    if not cfg.history_file:
        return {}
    try:
        data = json.loads(open(cfg.history_file).read())
    except (OSError, ValueError) as e:
        raise ValueError(f"reward.history_file={cfg.history_file!r}: {type(e).__name__}: {e}") from None
    stateful = stateful_terms(cfg)
    if not isinstance(data, dict) or any(k not in stateful or not isinstance(v, dict) for k, v in data.items()):
        raise ValueError(f"reward.history_file={cfg.history_file!r} must map stateful terms of reward.terms "
                         f"({stateful}) to {{uid: history}}, got keys {sorted(data) if isinstance(data, dict) else data}")
    return data


def history(states: dict[str, object]) -> dict[str, dict]:
    """Every stateful term's per-problem history, ``{term: {uid: history}}`` (what ``reward.history_file`` reads)."""
    return {name: st.history() for name, st in states.items()}


def needs_token_offsets(cfg: RewardConfig) -> bool:
    """True when a configured term or transform reads ``RewardInput.token_offsets`` (token-level terms, DOT)."""
    return bool(cfg.transforms) or any(t in TOKEN_LEVEL for t in cfg.terms)


def observe(inp: RewardInput, states: dict[str, object]) -> dict[str, object]:
    """Each state's local update from a verified batch (picklable), to be gathered over ranks and applied."""
    if inp.correct is None:
        raise ValueError("observe() needs a verified RewardInput (RewardOutput.input)")
    return {name: st.observe(inp) for name, st in states.items()}


def apply(states: dict[str, object], updates: list[dict[str, object]]) -> None:
    """Apply the local updates of every rank (in rank order) to the states."""
    for name, st in states.items():
        st.apply([u[name] for u in updates])


def user_function(spec: str, field: str) -> Callable:
    """The user function named ``spec`` (``"module:function"`` / ``"file.py:function"``), imported once; an import
    failure names ``field``."""
    if spec not in _USER:
        _USER[spec] = load_function(spec, field)
    return _USER[spec]


def resolve_verifier(verifier: str) -> Callable[[str, object, dict], bool]:
    """A registered verifier, or a user one named ``"module:function"`` / ``"file.py:function"`` in any convention of
    :mod:`rewards.plugins` (Laconic's ``fn(completion, answer)``, a verl ``compute_score``, a TRL reward function), as
    ``verdict(completion, answer, meta) -> bool``."""
    if is_user_function(verifier):
        return as_verifier(user_function(verifier, "reward.correctness.verifier"))
    if verifier not in VERIFIERS:
        raise KeyError(f"reward.correctness.verifier={verifier!r} is unknown; choose from {sorted(VERIFIERS)} or name "
                       f"a function as 'module:function'{suggest(verifier, VERIFIERS)}")
    return as_verifier(VERIFIERS[verifier])


def verify_texts(texts: list[str], answers: list, verifier: str, timeout_s: float = 0.0,
                 uids: list | None = None, metas: list[dict] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ([N] bool verdicts of ``verifier(text, answer)``, [N] bool errors). A call that raises or runs past
    ``timeout_s`` is a verdict of False and an error (:mod:`rewards.guard`)."""
    fn = resolve_verifier(verifier)
    ok, err = [], []
    for i, (t, a) in enumerate(zip(texts, answers)):
        try:
            ok.append(bool(guarded(fn, (t, a, metas[i] if metas else {}), timeout_s, verifier, f"row {uids[i] if uids else i}",
                                   own_timer=verifier in SELF_TIMED)))
            err.append(False)
        except CallFailed:
            ok.append(False)
            err.append(True)
    return torch.tensor(ok, dtype=torch.bool), torch.tensor(err, dtype=torch.bool)


def verify(inp: RewardInput, verifier: str, timeout_s: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ([B] bool verdicts of the verifier on ``(completion, meta["answer"])``, [B] bool errors)."""
    return verify_texts(inp.completions, [m["answer"] for m in inp.meta], verifier, timeout_s,
                        [m.get("uid", i) for i, m in enumerate(inp.meta)], inp.meta)


def truncated_rows(inp: RewardInput, cfg: RewardConfig) -> torch.Tensor:
    """[B] bool rows the truncation rule treats as truncated: cut at the cap, plus, with Difficulty-Aware DLER
    (Liu et al. 2025, §3.5; threshold .5, caps 2000 / 4000 in §4.1), rows longer than ``factor x max_tokens`` whose
    group accuracy (verified-correct fraction of the group in this batch) is >= ``difficulty_cap_threshold``.

    Example: threshold .5, factor .5, max_tokens 400; group A n=[150, 250, 300] correct [1, 1, 0] (acc .67) ->
    [False, True, True]; group B n=[250, 300] correct [0, 1] (acc .5) -> [True, True]; group C acc .33 -> only the
    rows cut at 400."""
    if cfg.difficulty_cap_threshold <= 0:
        return inp.truncated
    if inp.max_tokens is None:
        raise ValueError("reward.difficulty_cap_threshold > 0 needs RewardInput.max_tokens (the rollout's cap)")
    easy = group_mean(inp.correct, inp.group_ids) >= cfg.difficulty_cap_threshold
    over = inp.num_tokens > cfg.difficulty_cap_factor * inp.max_tokens
    return inp.truncated | (easy & over)


def compute(inp: RewardInput, cfg: RewardConfig, states: dict[str, object] | None = None) -> RewardOutput:
    """verify -> transforms -> terms -> truncation rule (module docstring). ``total = sum_k weight_k * term_k`` for
    sequence-level terms; a token-level term adds ``weight * [B,T]`` to ``token_rewards`` and its per-sequence token
    mean to ``total``. ``zero`` sets a truncated row's reward to 0 (DLER paper), ``scale`` multiplies it by
    ``truncation_scale`` (DLER's released code: 0.1 x its score)."""
    check_names(cfg)
    errors = torch.zeros(len(inp.completions), dtype=torch.bool)
    if inp.correct is None:
        correct, errors = verify(inp, cfg.correctness.verifier, cfg.timeout_s)
        inp = dataclasses.replace(inp, correct=correct)
    for name in cfg.transforms:
        inp = TRANSFORMS[name](inp, cfg)
    terms = _evaluate_terms(inp, cfg, states or {}, errors)
    total, token_rewards = _combine(inp, cfg, terms)
    if errors.any():  # a failed reward call scores the completion 0 (rewards.guard)
        total = torch.where(errors, torch.zeros_like(total), total)
        if token_rewards is not None:
            token_rewards = token_rewards.masked_fill(errors[:, None], 0.0)
    score = total
    cut = truncated_rows(inp, cfg)
    rule = TRUNCATION[cfg.truncation]
    total = rule(total, cut, cfg)
    if token_rewards is not None:
        token_rewards = rule(token_rewards, cut[:, None].expand_as(token_rewards), cfg)
    kept = inp.num_tokens.clone() if cfg.transforms else None
    return RewardOutput(total=total, correct=inp.correct, terms=terms, token_rewards=token_rewards, input=inp,
                        kept_tokens=kept, errors=errors, score=score)


def check_names(cfg: RewardConfig) -> None:
    """Every name in ``cfg`` is registered or an importable user function (raises naming the field)."""
    for name in cfg.terms:
        if is_user_function(name):
            user_function(name, f"reward.terms[{name!r}]")
    unknown = sorted(n for n in set(cfg.terms) - set(TERMS) if not is_user_function(n))
    if unknown:
        raise KeyError(f"reward.terms names unknown term(s) {unknown}; registered: {sorted(TERMS)}"
                       f"{suggest(unknown[0], TERMS)}")
    unknown = sorted(set(cfg.transforms) - set(TRANSFORMS))
    if unknown:
        raise KeyError(f"reward.transforms names unknown transform(s) {unknown}; registered: {sorted(TRANSFORMS)}"
                       f"{suggest(unknown[0], TRANSFORMS)}")
    if "decs" in cfg.terms or cfg.decs_curriculum.enabled:
        from rewards.decs import detector_fn

        detector_fn(cfg.decs.detector)  # unknown name / unimportable user detector: fail before any model loads
    if cfg.truncation not in TRUNCATION:
        raise ValueError(f"reward.truncation={cfg.truncation!r} is not one of {sorted(TRUNCATION)}")
    if cfg.difficulty_cap_threshold > 0 and cfg.truncation == "none":
        raise ValueError("reward.difficulty_cap_threshold > 0 does nothing with reward.truncation=none: set zero|scale")


def _evaluate_terms(inp: RewardInput, cfg: RewardConfig, states: dict[str, object],
                    errors: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every term of ``cfg.terms``; a user term (``"module:function"``, ``fn(inp, cfg) -> [B]``) that raises or
    times out gives 0 and marks all its rows in ``errors`` (in place)."""
    terms = {}
    for name in cfg.terms:
        if is_user_function(name):
            try:
                value = torch.as_tensor(guarded(as_term(_USER[name]), (inp, cfg), cfg.timeout_s, name, "the batch"),
                                        dtype=torch.float32)
                if value.shape != (len(inp.completions),):
                    raise CallFailed(f"returned shape {tuple(value.shape)}, not [{len(inp.completions)}]")
            except CallFailed:
                value = torch.zeros(len(inp.completions))
                errors |= True
            terms[name] = value
        elif name in STATE_TYPES:
            if name not in states:
                raise KeyError(f"reward term {name!r} is stateful: pass its state (rewards.make_states(cfg))")
            terms[name] = TERMS[name](inp, cfg, states[name]).to(torch.float32)
        else:
            terms[name] = TERMS[name](inp, cfg).to(torch.float32)
    return terms


def _combine(inp: RewardInput, cfg: RewardConfig, terms: dict[str, torch.Tensor]):
    """-> (total [B], token_rewards [B,T] | None); token-level entries of ``terms`` become their token means."""
    total = torch.zeros(len(inp.completions), dtype=torch.float32)
    token_rewards = None
    for name, weight in cfg.terms.items():
        if name in TOKEN_LEVEL:  # [B,T]: summed into token_rewards; its per-sequence mean goes into total
            tr = weight * terms[name]
            token_rewards = tr if token_rewards is None else token_rewards + tr
            valid = torch.arange(tr.shape[1])[None, :] < inp.num_tokens[:, None]
            terms[name] = (terms[name] * valid).sum(-1) / valid.sum(-1).clamp(min=1)
        total = total + weight * terms[name]
    return total, token_rewards
