"""`diffalign train` on a generated dataset, unchanged: DPO on the pairs view and RankDPO on the ranked table."""

from __future__ import annotations

import datasets

from diffusion_align.data.datasets import load_pickapic_compatible
from generate.helpers import load_train_cli

train_cli = load_train_cli()


def test_diffalign_train_runs_on_the_pairs_and_on_the_ranked_table(generated, tmp_path):
    assert load_pickapic_compatible(generated / "pairs").num_rows == 18
    ranked = datasets.load_dataset("parquet", data_files=str(generated / "ranked" / "*.parquet"), split="train")
    assert ranked.num_rows == 12
    loader = ["data.loader.num_workers=0", "data.loader.pin_memory=false", "data.loader.batch_size=2"]
    dpo = train_cli(tmp_path / "dpo", "data=pickapic", f"data.dataset.paths={generated / 'pairs'}", *loader)
    rank = train_cli(tmp_path / "rank", "method=rankdpo", "data=ranked", f"data.dataset.paths={generated / 'ranked'}",
                     *loader)
    for out in (dpo, rank):
        assert (out / "pytorch_lora_weights.safetensors").is_file()
        assert "Non-finite steps skipped: 0" in (out / "README.md").read_text()
