"""optim.max_time_s: the loop stops before a step that would end past the budget, on every rank together, and
says so in the summary. Time is faked (a scripted clock), so nothing here depends on how fast the host is."""
import pytest

from jmlr.train.budget import TimeBudget, all_ranks_agree


def clock_of(times):
    it = iter(times)
    return lambda: next(it)


def test_no_limit_never_stops():
    b = TimeBudget(0)
    b.begin()
    assert all(b.allows_next([100.0] * n) for n in range(5))


def test_the_first_step_always_runs_and_the_median_predicts_the_next():
    # begin at t=0; the first question reads no clock (no step measured), then t=30, t=55, t=80
    b = TimeBudget(100.0, clock=clock_of([0.0, 30.0, 55.0, 80.0]))
    b.begin()
    assert b.allows_next([])                  # nothing measured: run it
    assert b.allows_next([29.0])              # 30 + 29 = 59 <= 100
    assert b.allows_next([29.0, 25.0])        # 55 + median 27 = 82 <= 100
    assert not b.allows_next([29.0, 25.0, 25.0])  # 80 + 25 = 105 > 100


def test_one_slow_outlier_does_not_decide():
    b = TimeBudget(50.0, clock=clock_of([0.0, 40.0]))
    b.begin()
    assert b.allows_next([2.0, 2.0, 30.0, 2.0, 2.0])  # median 2 s, not the 30 s refresh stall


def test_negative_budget_is_refused():
    with pytest.raises(ValueError, match="max_time_s"):
        TimeBudget(-1)


def test_one_process_agrees_with_itself():
    assert all_ranks_agree(True) is True and all_ranks_agree(False) is False


def test_trainer_stops_early_and_records_it(tmp_path, tiny_bert_dir, tiny_reader_dir, monkeypatch):
    from test_trainer import make_trainer

    import jmlr.train.trainer as trainer_mod

    t = make_trainer(tmp_path / "run", tiny_bert_dir, tiny_reader_dir, ["optim.steps=8", "optim.max_time_s=3500"])
    # a clock that advances 1000 "seconds" per reading: begin reads 0, the check before step 1 reads nothing (no
    # step measured yet), the check before step k+1 reads 1000k. Step times come from the real clock (seconds at
    # most), so steps 2, 3 and 4 run (1000, 2000, 3000 s spent) and the check before step 5 (4000 s) stops the loop.
    ticks = iter(range(0, 100_000, 1000))
    monkeypatch.setattr(trainer_mod, "TimeBudget", lambda s: TimeBudget(s, clock=lambda: float(next(ticks))))
    summary = t.train()
    assert summary["steps"] == 4 and len(summary["losses"]) == 4
    assert summary["time_budget"]["stopped_at_step"] == 4 and summary["time_budget"]["planned_steps"] == 8


def test_trainer_without_a_budget_runs_every_step(tmp_path, tiny_bert_dir, tiny_reader_dir):
    from test_trainer import make_trainer

    t = make_trainer(tmp_path / "run", tiny_bert_dir, tiny_reader_dir, ["optim.steps=3"])
    summary = t.train()
    assert summary["steps"] == 3 and summary["time_budget"]["stopped_at_step"] is None
