"""``trainer.compile``: the modes, which modules each compiles, and a training run with regional compilation."""

import pytest
import torch
from diffusers import PixArtTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
from safetensors.torch import load_file

from diffusion_align.config import ConfigError
from diffusion_align.train.compile import (
    compile_denoiser,
    compile_mode,
    repeated_block_classes,
    use_channels_last,
)


class Recorded(list):
    kwargs: list[dict]

    def __init__(self):
        super().__init__()
        self.kwargs = []


@pytest.mark.parametrize(("value", "mode"), [(False, None), (None, None), ("false", None), (True, "full"),
                                             ("true", "full"), ("full", "full"), ("regional", "regional")])
def test_compile_modes(value, mode):
    assert compile_mode(value) == mode


def test_unknown_compile_mode_is_refused():
    with pytest.raises(ConfigError, match="trainer.compile 'fast'.*full, regional"):
        compile_mode("fast")


@pytest.fixture
def recorded(monkeypatch):
    """Class names of the modules ``nn.Module.compile`` is called on (compiled with the eager backend: the wiring,
    not inductor's C++ build, is under test); the keyword arguments of each call in ``recorded.kwargs``."""
    compiled = Recorded()
    original = torch.nn.Module.compile

    def record(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        compiled.kwargs.append(kwargs)
        return original(self, *args, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", record)
    return compiled


@pytest.mark.parametrize(("path_fixture", "cls", "blocks"), [
    ("tiny_sd15_path", UNet2DConditionModel, {"BasicTransformerBlock"}),  # declared: _repeated_blocks
    ("tiny_sd3_path", SD3Transformer2DModel, {"JointTransformerBlock"}),  # found: transformer_blocks
    ("tiny_pixart_path", PixArtTransformer2DModel, {"BasicTransformerBlock"}),
])
def test_regional_compiles_each_repeated_block(request, recorded, path_fixture, cls, blocks):
    subfolder = "unet" if cls is UNet2DConditionModel else "transformer"
    denoiser = cls.from_pretrained(request.getfixturevalue(path_fixture), subfolder=subfolder)
    assert repeated_block_classes(denoiser) == blocks
    compiled = compile_denoiser(denoiser, "regional")
    expected = [m for m in denoiser.modules() if type(m).__name__ in blocks]
    assert len(compiled) == len(expected) >= 1 and all(a is b for a, b in zip(compiled, expected, strict=True))
    assert set(recorded) == blocks and len(recorded) == len(expected)


def test_regional_compilation_leaves_room_for_every_block_version(tiny_sd15_path, recorded):
    """All blocks share their class's forward, hence one dynamo cache: its limit is raised above the default 8."""
    import torch._dynamo

    # not monkeypatch: its undo deletes a config it did not find in the instance __dict__, which hides it in torch
    limit = torch._dynamo.config.recompile_limit
    try:
        torch._dynamo.config.recompile_limit = 8
        compile_denoiser(UNet2DConditionModel.from_pretrained(tiny_sd15_path, subfolder="unet"), "regional")
        assert torch._dynamo.config.recompile_limit >= 64
    finally:
        torch._dynamo.config.recompile_limit = limit


def test_full_compiles_the_denoiser_and_off_compiles_nothing(tiny_sd15_path, recorded):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15_path, subfolder="unet")
    assert compile_denoiser(unet, None) == [] and recorded == []
    assert compile_denoiser(unet, "full") == [unet] and recorded == ["UNet2DConditionModel"]


def test_regional_without_blocks_is_refused():
    with pytest.raises(ValueError, match="no _repeated_blocks.*trainer.compile=full"):
        compile_denoiser(torch.nn.Sequential(torch.nn.Linear(2, 2)), "regional")


def test_training_with_regional_compilation(run_train, tiny_pairs, tmp_path, recorded):
    """The loop trains through compiled blocks with the LoRA-disabled reference, and the saved LoRA keeps its
    names (``nn.Module.compile`` adds no ``_orig_mod`` prefix): it equals an eager run's."""
    eager = run_train(tmp_path / "eager", f"data.dataset.paths={tiny_pairs}")
    assert recorded == []
    compiled = run_train(tmp_path / "regional", f"data.dataset.paths={tiny_pairs}", "trainer.compile=regional")
    assert recorded and set(recorded) == {"BasicTransformerBlock"}
    a = load_file(eager / "pytorch_lora_weights.safetensors")
    b = load_file(compiled / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)


def test_a_frozen_reference_copy_is_compiled_too(run_train, tiny_pairs, tmp_path, recorded):
    run_train(tmp_path / "full", f"data.dataset.paths={tiny_pairs}", "model.finetune.mode=full",
              "reference=frozen_copy", "trainer.compile=full")
    assert recorded == ["UNet2DConditionModel", "UNet2DConditionModel"]  # the policy's, then the copy's


def test_config_check_names_a_bad_compile_mode(run_train, tiny_pairs, tmp_path):
    with pytest.raises(ConfigError, match="trainer.compile 'fastest'"):
        run_train(tmp_path / "bad", f"data.dataset.paths={tiny_pairs}", "trainer.compile=fastest")


def test_compile_options_reach_every_compile_call(run_train, tiny_pairs, tmp_path, recorded):
    run_train(tmp_path / "full", f"data.dataset.paths={tiny_pairs}", "model.finetune.mode=full",
              "reference=frozen_copy", "trainer.compile=full", "trainer.max_steps=1",
              "trainer.compile_options.mode=reduce-overhead", "trainer.compile_options.dynamic=false")
    # the options set, to the policy's compile and the copy's (fullgraph's default false is torch's too)
    assert recorded.kwargs == [{"mode": "reduce-overhead", "dynamic": False, "fullgraph": False}] * 2


def test_an_unknown_compile_option_is_refused_before_loading(run_train, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown trainer key\(s\) 'trainer.compile_options.mod' \(did you mean "
                                          r"'trainer.compile_options.mode'\?\)"):
        run_train(tmp_path / "bad", "data.dataset.paths=/nonexistent", "model.adapter.path=/nonexistent",
                  "+trainer.compile_options.mod=max-autotune")


def test_channels_last_converts_the_convolutions_and_trains_as_contiguous(run_train, tiny_pairs, tiny_sd15_path,
                                                                         tmp_path, monkeypatch):
    """A full fine-tune with a frozen copy: both networks' 4-D weights channels-last, the trained weights (saved
    contiguous, checkpoints too) equal to a contiguous run's within float reordering."""
    from diffusion_align.train import loop

    seen = {}
    original = loop.apply_speed_options

    def watched(trainer, adapter, reference):
        original(trainer, adapter, reference)
        for name, model in (("policy", adapter.denoiser), ("copy", reference.model)):
            seen[name] = all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters()
                             if p.dim() == 4)

    # SGD: the update follows the gradient's float reordering, where Adam's normalisation would magnify it in the
    # elements whose gradient is near zero
    sgd = ["trainer.optimizer._target_=torch.optim.SGD", "~trainer.optimizer.betas", "~trainer.optimizer.eps"]
    common = [f"data.dataset.paths={tiny_pairs}", f"model.adapter.path={tiny_sd15_path}", "model.finetune.mode=full",
              "reference=frozen_copy", "trainer.max_steps=2", "trainer.checkpoint_every=1",
              "trainer.optimizer.lr=0.05", *sgd]
    plain = run_train(tmp_path / "plain", *common)
    monkeypatch.setattr(loop, "apply_speed_options", watched)
    last = run_train(tmp_path / "channels_last", *common, "trainer.channels_last=true")
    assert seen == {"policy": True, "copy": True}
    a = load_file(plain / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(last / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    initial = load_file(tiny_sd15_path / "unet" / "diffusion_pytorch_model.safetensors")
    assert initial.keys() == b.keys() and any(v.dim() == 4 for v in b.values())
    assert any(not torch.equal(v, initial[k]) for k, v in b.items() if v.dim() == 4), "the convolutions did not train"
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-7, msg=key)
    assert (last / "checkpoints" / "checkpoint-2" / "trainable.safetensors").is_file()


def test_channels_last_leaves_a_video_transformers_3d_patch_embedding_alone(tiny_wan_path):
    """Wan's patch embedding is a 3-D convolution (a 5-D weight), which the 2-D channels-last format refuses."""
    from diffusers import WanTransformer3DModel

    transformer = WanTransformer3DModel.from_pretrained(tiny_wan_path, subfolder="transformer")
    before = {name: p.detach().clone() for name, p in transformer.named_parameters()}
    use_channels_last(transformer)
    assert any(p.dim() == 5 for p in transformer.parameters())
    for name, p in transformer.named_parameters():
        assert p.is_contiguous() and torch.equal(p, before[name]), name
