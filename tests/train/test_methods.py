"""Every offline loss trains through `diffalign train` on the tiny SD1.5 model (flow and video methods: on their
families in test_families.py). Each run must move the LoRA weights and log finite metrics."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def tiny_ranked(tmp_path_factory):
    from diffusion_align.testing.data import write_tiny_ranked_parquet

    directory = tmp_path_factory.mktemp("ranked")
    write_tiny_ranked_parquet(directory, n_prompts=4, k=3, resolution=32)
    return directory


PAIRWISE = {
    "dpo": [],
    "dpo_hinge": [],
    "dpo_ipo": [],
    "sft": [],
    "mapo": [],
    # their own noising: ReNoise inversion (SmPO, 5 steps) and DDIM inversion + 0.1 noise (InPO, 10 steps)
    "smpo": [],
    "inpo": [],
}


def assert_trained(out):
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    ups = [v for k, v in weights.items() if ".lora_B." in k]
    assert ups and any(v.abs().max() > 0 for v in ups), "LoRA up-weights still zero: no update reached the model"
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert "Non-finite steps skipped: 0" in (out / "README.md").read_text()


@pytest.mark.parametrize("method", sorted(PAIRWISE))
def test_pairwise_method_trains(method, run_train, tiny_pairs, tmp_path):
    out = run_train(tmp_path / method, f"method={method}", f"data.dataset.paths={tiny_pairs}", *PAIRWISE[method])
    assert_trained(out)


def test_rankdpo_trains_on_ranked_data(run_train, tiny_ranked, tmp_path):
    out = run_train(tmp_path / "rank", "method=rankdpo", "data=ranked", f"data.dataset.paths={tiny_ranked}",
                    "data.loader.batch_size=2", "data.loader.num_workers=0")
    assert_trained(out)


def test_kto_trains_on_unpaired_view(run_train, tiny_pairs, tmp_path):
    out = run_train(tmp_path / "kto", "method=kto", "data=unpaired", f"data.dataset.source.paths={tiny_pairs}",
                    "data.loader.batch_size=4", "data.loader.num_workers=0")
    assert_trained(out)


def test_dpo_trains_from_the_latent_cache(run_train, tiny_pairs, tmp_path):
    out = run_train(tmp_path / "cached", f"data.dataset.paths={tiny_pairs}", "data.cache.enabled=true")
    assert_trained(out)
    assert any((out / "cache").glob("*.safetensors"))


def test_inversion_needs_a_discrete_schedule(run_train, tiny_pairs, tmp_path):
    from diffusion_align.config import ConfigError

    with pytest.raises(ConfigError, match="method.noising 'renoise_inversion' inverts DDIM steps of a discrete"):
        run_train(tmp_path / "flow", "model=tiny_sd3", "method=smpo", f"data.dataset.paths={tiny_pairs}")
    with pytest.raises(ConfigError, match="method.noising 'sde': expected one of forward, ddim_inversion"):
        run_train(tmp_path / "bad", "method=dpo", "method.noising=sde", f"data.dataset.paths={tiny_pairs}")


def test_unpaired_methods_and_data_must_match(run_train, tiny_pairs, tmp_path):
    from diffusion_align.config import ConfigError

    with pytest.raises(ConfigError, match="method kto trains on single images.*use data=unpaired"):
        run_train(tmp_path / "kto", "method=kto", f"data.dataset.paths={tiny_pairs}")
    with pytest.raises(ConfigError, match="data=unpaired gives single images, but method dpo takes pairwise"):
        run_train(tmp_path / "dpo", "data=unpaired", f"data.dataset.source.paths={tiny_pairs}")
