"""BLEU/ROUGE equal sacrebleu / rouge-score called directly; char tokenisation makes Chinese scoreable."""
from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from jmlr.eval.generation import bleu, evaluate_generation, generation_metrics, rouge, rouge_tokenizer

HYP = ["the patient should take paracetamol for the fever", "rest and drink plenty of fluids"]
REF = ["the patient can take paracetamol to lower the fever", "drink plenty of fluids and rest at home"]


def test_bleu_equals_sacrebleu():
    got = bleu(HYP, REF)
    direct = sacrebleu.corpus_bleu(HYP, [REF])
    assert got["bleu"] == pytest.approx(direct.score, abs=1e-9)
    assert got["precisions"] == pytest.approx(direct.precisions)
    assert got["bleu4"] == pytest.approx(direct.score)
    assert got["bleu1"] == pytest.approx(sacrebleu.metrics.BLEU(max_ngram_order=1).corpus_score(HYP, [REF]).score)
    assert got["bleu1"] > got["bleu2"] > got["bleu4"] > 0


def test_rouge_equals_rouge_score():
    got = rouge(HYP, REF)
    sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for t in ("rouge1", "rouge2", "rougeL"):
        direct = [sc.score(r, h)[t] for h, r in zip(HYP, REF)]
        assert got[t] == pytest.approx(sum(d.fmeasure for d in direct) / 2, abs=1e-12)
        assert got[f"{t}_precision"] == pytest.approx(sum(d.precision for d in direct) / 2)
        assert got[f"{t}_recall"] == pytest.approx(sum(d.recall for d in direct) / 2)


def test_chinese_needs_char_tokenisation():
    hyp, ref = ["头痛吃药"], ["头痛喝水"]
    assert rouge(hyp, ref)["rouge1"] == 0.0  # rouge-score's default tokenizer drops non-ASCII
    got = rouge(hyp, ref, tokenize="char")
    assert got["rouge1"] == pytest.approx(0.5)  # 头 痛 shared out of 4 characters
    assert got["rouge2"] == pytest.approx(1 / 3)  # 头痛 shared out of 3 bigrams
    direct = rouge_scorer.RougeScorer(["rougeL"], tokenizer=rouge_tokenizer("char")).score(ref[0], hyp[0])
    assert got["rougeL"] == pytest.approx(direct["rougeL"].fmeasure)
    b = bleu(["头痛可以服用布洛芬。"], ["头痛可服用布洛芬。"], tokenize="char")
    assert b["bleu"] == pytest.approx(sacrebleu.metrics.BLEU(tokenize="char").corpus_score(
        ["头痛可以服用布洛芬。"], [["头痛可服用布洛芬。"]]).score)
    assert b["bleu"] > 0
    # punctuation does not count as a matching character for ROUGE
    assert rouge(["，。"], ["，。"], tokenize="char")["rouge1"] == 0.0
    # mixed text: CJK by character, Latin by word
    assert rouge_tokenizer("zh").tokenize("服用Ibuprofen 400mg") == ["服", "用", "ibuprofen", "400mg"]


def test_multiple_references_and_errors():
    m = rouge(["fluids and rest"], [["take antibiotics", "rest and fluids"]])
    assert m["rouge1"] == pytest.approx(1.0)  # the best reference counts
    b = bleu(["a b c d e"], [["a b c d e", "x y z"]])
    assert b["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu(HYP, REF[:1])
    with pytest.raises(ValueError, match="different numbers of references"):
        bleu(HYP, [["x"], ["y", "z"]])
    with pytest.raises(ValueError, match="unknown tokenize"):
        rouge(HYP, REF, tokenize="jieba")
    with pytest.raises(ValueError, match="single string"):
        bleu("abc", "abc")


def test_generation_metrics_and_reader_run(tiny_reader_dir):
    m = generation_metrics(HYP, REF)
    assert m["n"] == 2 and {"bleu", "rouge1", "rouge2", "rougeL"} <= set(m)
    from jmlr.data import QAExample
    from jmlr.reader import Reader

    reader = Reader.from_pretrained(tiny_reader_dir, template="freetext", max_length=128)
    exs = [QAExample(id="h1", question="头痛怎么办？", answer_text="多休息。"),
           QAExample(id="h2", question="What lowers fever?", answer_text="Paracetamol.")]
    res = evaluate_generation(reader, exs, max_new_tokens=6, tokenize="char")
    assert len(res["predictions"]) == 2 and 0.0 <= res["rouge1"] <= 1.0 and res["tokenize"] == "char"
