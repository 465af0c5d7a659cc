"""The seeded epoch sampler: a permutation fixed by (seed, epoch)."""

from diffusion_align.train.sampler import EpochPermutationSampler


def test_each_epoch_is_a_seeded_permutation():
    sampler = EpochPermutationSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(10)) and second != first
    again = EpochPermutationSampler(10, seed=3)
    again.set_epoch(1)
    assert list(again) == second
    assert list(EpochPermutationSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
