"""Dealing a step's groups out to ranks (trainer.balance_ranks): pure, no engine."""
import pytest

from trainers.sampling import balance_groups

pytestmark = pytest.mark.unit


def test_balance_groups_deals_equal_counts_longest_first():
    """Equal group counts per rank whatever the costs; longest-processing-time first: a costly group goes to the
    least loaded rank with room, so a long-tailed step's heavy groups land on different ranks."""
    assert balance_groups([9, 1, 1, 1], 2) == [[0, 3], [1, 2]]  # one 9 cannot be split: loads 10 and 2
    tail = [100] * 6 + [1500, 1400]  # two groups holding a long completion each: they go to different ranks
    parts = balance_groups(tail, 2)
    assert [len(p) for p in parts] == [4, 4] and {6, 7} & set(parts[0]) and {6, 7} & set(parts[1])
    assert sorted(sum(parts, [])) == list(range(8))
    loads = [sum(tail[g] for g in p) for p in parts]
    assert loads == [1800, 1700]  # contiguous halves would be 400 and 3100
    assert balance_groups([5, 5, 5], 1) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="3 groups"):
        balance_groups([1, 2, 3], 2)
