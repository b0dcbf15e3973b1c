"""CPU-only. Per-request sampling seeds (rlhf.seeds) as the controller and the rollout derive them."""
from rlhf.seeds import derive_seed


def _request_seeds(run_seed, steps, engines, prompts, n):
    """Controller: base per (step, engine); RolloutWorker.generate: per (prompt, sample)."""
    return [derive_seed(derive_seed(run_seed, "train", step, e), i, j)
            for step in range(steps) for e in range(engines) for i in range(prompts) for j in range(n)]


def test_no_two_requests_of_a_run_share_a_seed():
    seeds = _request_seeds(1, steps=30, engines=2, prompts=16, n=8)
    assert len(set(seeds)) == len(seeds) == 30 * 2 * 16 * 8
    assert all(0 <= s < 2**63 for s in seeds)


def test_the_old_arithmetic_scheme_repeated_last_steps_seeds():
    # what this module replaces: step s+1, prompt i reused step s's seeds one slot over
    old = lambda seed, step, e, i, j, n=4: seed * 1_000_003 + step + 7919 * e + i * n + j  # noqa: E731
    assert old(1, 1, 0, 0, 0) == old(1, 0, 0, 0, 1)


def test_seeds_are_stable_and_depend_on_every_part():
    base = derive_seed(1, "train", 3, 0)
    assert base == derive_seed(1, "train", 3, 0)  # the same run resumes with the same streams
    others = {derive_seed(2, "train", 3, 0), derive_seed(1, "eval", 3, 0), derive_seed(1, "train", 4, 0),
              derive_seed(1, "train", 3, 1), derive_seed(1, "train", 30)}
    assert base not in others and len(others) == 5
    assert derive_seed(1, 23) != derive_seed(12, 3)  # parts are delimited, not concatenated
    assert derive_seed("1") != derive_seed(1)
