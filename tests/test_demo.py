"""`jmlr demo` with tiny random models in place of the bundled ones: the wall-clock budget decides how many steps
run, the summary says what happened, and no budget runs the preset's steps."""
import json

import pytest

from jmlr.demo import run_demo


def tiny(tiny_bert_dir, tiny_reader_dir):
    return [f"retriever.model={tiny_bert_dir}", f"reader.model={tiny_reader_dir}", "optim.steps=3",
            "data.max_eval=4", "data.max_train=16", "reader.max_length=256"]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    # only the embedding cache moves: a fresh JMLR_CACHE would also rebuild the compiled top-k kernels
    import jmlr.index.embedding_cache as ec

    monkeypatch.setattr(ec, "default_folder", lambda: tmp_path / "cache" / "embeddings")
    return tmp_path / "cache"


def test_no_budget_runs_every_preset_step_and_a_second_run_reads_the_cache(tmp_path, tiny_bert_dir,
                                                                           tiny_reader_dir, cache):
    over = tiny(tiny_bert_dir, tiny_reader_dir)
    s = run_demo(quick=True, out=str(tmp_path / "a"), overrides=over, budget_s=0)
    assert s["budget"]["steps_done"] == 3 and not s["budget"]["stopped_by_budget"]
    assert s["budget"]["train_budget_s"] is None and s["config"]["optim"]["max_time_s"] == 0
    on_disk = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert on_disk["precision"]["requested"] == "auto" and on_disk["precision"]["precision"] in ("fp32", "bf16")
    assert (tmp_path / "a" / "curves.png").is_file()
    assert not s["budget"]["index_from_cache"] and len(list((cache / "embeddings").glob("*.npy"))) == 1
    second = run_demo(quick=True, out=str(tmp_path / "b"), overrides=over, budget_s=0)
    assert second["budget"]["index_from_cache"]
    assert second["frozen_rag"] == s["frozen_rag"], "the cached vectors are the ones the first run encoded"


def test_a_spent_budget_still_trains_one_step_and_says_it_stopped(tmp_path, tiny_bert_dir, tiny_reader_dir,
                                                                  cache):
    # 1 ms is gone before training starts: the first step runs (nothing measured yet), the second does not
    s = run_demo(quick=True, out=str(tmp_path / "run"), overrides=tiny(tiny_bert_dir, tiny_reader_dir),
                 budget_s=0.001)
    b = s["budget"]
    assert b["steps_done"] == 1 and b["stopped_by_budget"] and b["steps_planned"] == 3
    assert b["within_budget"] is False and b["train_budget_s"] == pytest.approx(1e-3)
    assert len(s["losses"]) == 1


def test_negative_budget_is_refused(tmp_path):
    with pytest.raises(ValueError, match="budget"):
        run_demo(quick=True, out=str(tmp_path / "run"), budget_s=-1)
