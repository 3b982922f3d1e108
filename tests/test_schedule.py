import math

import pytest

from unetseg.core.schedule import Schedule

ORIGINAL = Schedule(base_lr=1e-3, min_lr=1e-4, warmup_steps=100, total_steps=1250, decay_factor=5e8)


@pytest.mark.parametrize("step", [0, 50, 100, 200, 505, 1250])
def test_original_schedule_matches_the_formula(step):
    if step < 100:
        expected = max(1e-3 * step**2 / 100**2, 1e-4)
    else:
        expected = max(1e-3 - math.sqrt((step - 100) / 5e8), 1e-4)
    assert ORIGINAL(step) == pytest.approx(expected, rel=1e-12)


def test_original_schedule_hand_values():
    assert ORIGINAL(0) == 1e-4  # warm-up floored at min_lr
    assert ORIGINAL(50) == pytest.approx(2.5e-4)
    assert ORIGINAL(100) == pytest.approx(1e-3)
    assert ORIGINAL(200) == pytest.approx(1e-3 - math.sqrt(100 / 5e8))
    assert ORIGINAL(200) == pytest.approx(5.5279e-4, rel=1e-4)
    assert ORIGINAL(1250) == 1e-4  # sqrt(1150 / 5e8) > base_lr: floored at min_lr


@pytest.mark.parametrize("decay", ["poly", "cosine"])
def test_poly_and_cosine_go_from_base_to_min(decay):
    schedule = Schedule(1e-3, 1e-5, 10, 110, decay=decay)
    assert schedule(10) == pytest.approx(1e-3)
    assert schedule(110) == pytest.approx(1e-5)
    values = schedule.values()
    assert len(values) == 110
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_cosine_midpoint():
    schedule = Schedule(1e-3, 0.0, 0, 100, decay="cosine")
    assert schedule(50) == pytest.approx(0.5e-3)


@pytest.mark.parametrize("decay", ["poly", "cosine"])
def test_progress_replaces_the_step_share_of_the_decay(decay):
    schedule = Schedule(1e-3, 1e-5, 10, 100, decay)
    assert schedule(10, progress=0.0) == pytest.approx(1e-3)
    assert schedule(50, progress=1.0) == pytest.approx(1e-5)
    assert schedule(50, progress=2.0) == pytest.approx(1e-5)  # past the budget: stays at min
    # Whichever is further decides: the clock (0.4 > 10/90) or the steps (0.4 < 80/90).
    assert schedule(20, progress=0.4) == pytest.approx(schedule(46))
    assert schedule(90, progress=0.4) == pytest.approx(schedule(90))
    assert schedule(100, progress=0.1) == pytest.approx(1e-5)
    assert schedule(5, progress=0.9) == schedule(5)  # warm-up still goes by steps
    if decay == "cosine":
        assert schedule(10, progress=0.5) == pytest.approx((1e-3 + 1e-5) / 2)
