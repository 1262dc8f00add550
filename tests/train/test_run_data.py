"""jmlr.train.run_data.check_prompt_lengths: the passage slots it counts are the ones a prompt will hold."""
import pytest

from jmlr.config import load_config
from jmlr.data import QAExample
from jmlr.reader import Reader
from jmlr.train.run_data import check_prompt_lengths


def _tokens(reader, ex, k):
    p = reader.build_prompt(ex.question, reader.prompt_options(ex), [""] * k) + reader.target_for(ex)
    return len(reader.tokenizer(p, add_special_tokens=False)["input_ids"])


def test_sampled_candidates_count_m_slots_in_training_and_top_k_in_evaluation(tiny_reader_dir):
    ex = QAExample(id="q", question="Which drug lowers a fever in a child? " * 3, options={"A": "x", "B": "y"},
                   answer="A")
    probe = Reader.from_pretrained(tiny_reader_dir, max_length=4096)
    two, twenty = _tokens(probe, ex, 2), _tokens(probe, ex, 20)
    assert twenty > two + 20  # twenty empty "Reference [i]" headers take more room than two
    reader = Reader.from_pretrained(tiny_reader_dir, max_length=two + 10)  # fits 2 empty slots, not 20
    sampled = load_config(None, ["index.top_k=20", "index.sample_m=2"])
    assert check_prompt_lengths(reader, [ex], sampled, "train") == [ex]  # the reader sees m = 2 of the 20
    with pytest.raises(ValueError, match="dev data: 1 of 1 questions do not fit"):
        check_prompt_lengths(reader, [ex], sampled, "dev")  # evaluation gives it all top_k = 20
    with pytest.raises(ValueError, match="train data: 1 of 1 questions do not fit"):
        check_prompt_lengths(reader, [ex], load_config(None, ["index.top_k=20"]), "train")
