"""benchmarks/joint_study.py: the --quick study end to end (tiny random models, demo data), its paired
comparisons, the dev-only sweep, the 'other explanations' corpus and the index.fixed_candidates arm key."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import joint_study as js  # noqa: E402

# The smoke runs test the study's logic, not the compiled top-k (tests/kernels does): no JIT build here; and one
# thread, since tiny tensors gain nothing from more and a shared host makes their barriers slow.
ENV = {**os.environ, "JMLR_KERNELS_NO_BUILD": "1", "OMP_NUM_THREADS": "1"}


def test_quick_study_writes_arms_and_paired_comparisons(tmp_path, tiny_bert_dir, tiny_reader_dir):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "joint_study.py"), "--quick", "--quiet",
                        "--out", str(tmp_path), "--datasets", "demo", "--reader", tiny_reader_dir,
                        "--retriever", tiny_bert_dir], capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(18/18) i_joint_query_side" in r.stdout  # one progress line per arm and seed
    payload = json.loads((tmp_path / "joint_study_demo.json").read_text())
    arms = payload["arms"]
    assert [a["arm"] for a in arms] == js.ARMS
    from jmlr.data.demo import demo_qa

    test_ids = [q.id for q in demo_qa("test")[:payload["settings"]["n_test"]]]
    for a in arms:
        assert set(a) >= {"arm", "seeds", "accuracy_mean", "accuracy_ci95", "recall_at_5_mean"}
        assert a["seeds"] == [0, 1] and [r["seed"] for r in a["runs"]] == [0, 1]
        assert a["question_ids"] == test_ids  # every arm is scored on the same test questions, in one order
        per_seed = [np.mean(r["correct"]) for r in a["runs"]]
        assert per_seed == pytest.approx([r["accuracy"] for r in a["runs"]])
        assert a["accuracy_mean"] == pytest.approx(np.mean(per_seed))
        lo, hi = a["accuracy_ci95"]
        assert lo <= a["accuracy_mean"] <= hi
        closed = a["arm"] in js.CLOSED_BOOK
        assert (a["recall_at_5_mean"] is None) == closed
        assert closed or 0.0 <= a["recall_at_5_mean"] <= 1.0
        assert all(r["flops"] > 0 and r["wall_s"] > 0 for r in a["runs"])
        if not closed:  # curve: step 0, then the final evaluation at the whole training time
            for run in a["runs"]:
                assert [c[1] for c in run["curve"]][0] == 0 and run["curve"][-1][1] == payload["settings"]["steps"]
                assert run["curve"][-1][0] == pytest.approx(run["wall_s"]) and run["curve"][-1][2] == run["accuracy"]
    by = {a["arm"]: a for a in arms}
    assert [(c["a"], c["b"]) for c in payload["comparisons"]] == js.COMPARISONS
    for c in payload["comparisons"]:
        assert set(c) >= {"a", "b", "diff", "ci95", "p_value"}
        ca = np.array([r["correct"] for r in by[c["a"]]["runs"]])
        cb = np.array([r["correct"] for r in by[c["b"]]["runs"]])
        assert c["diff"] == pytest.approx(ca.mean() - cb.mean())  # the paired difference of the stored outcomes
        assert c["ci95"][0] <= c["diff"] <= c["ci95"][1] and 0 < c["p_value"] <= 1
        assert c["n_questions"] == len(test_ids) and c["seeds"] == [0, 1]
    assert (tmp_path / "joint_study_demo.png").stat().st_size > 1000
    md = (tmp_path / "joint_study_demo.md").read_text()
    assert "| h_jmlr_as_released |" in md and "Paired comparisons" in md


def _arm(name, seeds, correct, qids):
    runs = [{"seed": s, "correct": c} for s, c in zip(seeds, correct)]
    return {"arm": name, "seeds": list(seeds), "runs": runs, "question_ids": qids}


def test_compare_pairs_questions_and_seeds():
    args = js.parse_args(["--out", "x", "--n-boot", "2000"])
    q = ["q1", "q2", "q3", "q4"]
    a = _arm("a", [0, 1, 2], [[1, 1, 0, 1], [1, 0, 1, 1], [0, 0, 0, 0]], q)
    b = _arm("b", [0, 1], [[0, 1, 0, 0], [0, 0, 1, 0]], q)
    c = js.compare(a, b, args)  # seed 2 ran for a alone: left out of the pairing
    assert c["seeds"] == [0, 1]
    assert c["diff"] == pytest.approx((3 + 3) / 8 - (1 + 1) / 8)
    # seed 0: a right / b wrong on q1, q4; seed 1: q1, q4 again; b never right where a is wrong
    assert c["mcnemar_p_per_seed"] == pytest.approx([0.5, 0.5])  # 2 * (1/2)^2
    assert c["mcnemar_p_pooled"] == pytest.approx(2 / 16)
    with pytest.raises(ValueError, match="different questions"):
        js.compare(a, _arm("b", [0], [[0, 1, 0, 0]], ["q2", "q1", "q3", "q4"]), args)


def test_sweep_chooses_on_dev_only(tmp_path, tiny_bert_dir, tiny_reader_dir):
    argv = ["--quick", "--quiet", "--sweep", "--out", str(tmp_path), "--datasets", "demo", "--reader",
            tiny_reader_dir, "--retriever", tiny_bert_dir]
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "joint_study.py"), *argv], capture_output=True,
                       text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = json.loads((tmp_path / "joint_study_sweep_demo.json").read_text())
    args = js.parse_args(argv)
    pool, test, *_ = js.load_study_data("demo", args)
    assert sweep["dev_ids"] == [q.id for q in pool[:args.n_dev]]
    assert not set(sweep["dev_ids"]) & {q.id for q in test}
    assert len(sweep["grid"]) == 2 and {g["retriever_lr"] for g in sweep["grid"]} == {3e-5, 3e-4}
    best = max(sweep["grid"], key=lambda g: (g["dev_accuracy"], g["dev_recall_at_5"] or 0.0, -g["wall_s"]))
    assert sweep["best"] == {k: best[k] for k in ("retriever_lr", "temperature", "k")}
    settings = js.parse_args(["--out", "x", "--settings", str(tmp_path / "joint_study_sweep_demo.json")])
    assert (settings.retriever_lr, settings.temperature, settings.k) == (best["retriever_lr"], best["temperature"],
                                                                           best["k"])


def test_other_explanations_removes_own_and_duplicate_explanations():
    from jmlr.data import Corpus, Passage, QAExample

    passages = [Passage(id=f"e{i}", text=f"Explanation number {i} about topic {i % 2}.", title=f"Anatomy: T{i % 2}")
                for i in range(6)]
    passages.append(Passage(id="dup", text="  EXPLANATION number 0 about topic 0. ", title="Anatomy: T0"))
    qa = [QAExample(id=f"q{i}", question=f"Question {i}?", options={"A": "x", "B": "y"}, answer="A",
                    gold_passage_ids=[f"e{i}"], metadata={"subject": "Anatomy", "topic": f"T{i % 2}"})
          for i in range(3)]
    train, test, corpus, related, check = js.other_explanations(qa[:2], qa[2:], Corpus(passages))
    assert list(corpus.ids) == ["e3", "e4", "e5"]  # e0-e2 are the questions' own, "dup" repeats e0's text
    assert check["questions_meeting_own_explanation"] == 0 and check["removed_duplicate_texts"] == 1
    assert all(not q.gold_passage_ids for q in train + test)
    assert related == {"q0": ["e4"], "q1": ["e3", "e5"], "q2": ["e4"]}  # same subject and topic


def test_other_explanations_on_medmcqa():
    if not (js.jvs.SHARED / "medmcqa" / "dev.json").is_file():
        pytest.skip(f"MedMCQA is not in {js.jvs.SHARED} (a user's machine)")
    from jmlr.data.text import normalize_for_dedup

    args = js.parse_args(["--out", "x", "--n-train", "200", "--n-test", "50"])
    train, test, corpus, related, info = js.load_study_data("medmcqa_other", args)
    _, _, full = js.jvs.load_dataset("medmcqa", 200, 50, 0)
    own_ids = {f"medmcqa-exp-{q.id}" for q in train + test}
    assert own_ids <= set(full.ids) and not own_ids & set(corpus.ids)
    own_texts = {normalize_for_dedup(full[full.index_of(i)].text) for i in own_ids}
    assert not own_texts & {normalize_for_dedup(p.text) for p in corpus}
    assert info["corpus"] == len(corpus) > 1000 and info["test_with_related"] > 0


def test_fixed_candidates_come_from_the_initial_retriever(tmp_path, tiny_bert_dir, tiny_reader_dir):
    from jmlr.config import load_config
    from jmlr.data import Corpus, Passage, QAExample
    from jmlr.reader import Reader
    from jmlr.retriever import DualEncoder
    from jmlr.train.trainer import JointTrainer

    fruits = ["apple", "pear", "plum", "fig", "lime", "kiwi", "date", "lemon"]
    corpus = Corpus([Passage(id=f"p{i}", text=f"Drug {i} goes with {fruits[i % 8]}.") for i in range(16)])
    qa = [QAExample(id=f"q{i}", question=f"Which fruit goes with drug {i}?", options={"A": fruits[i % 8], "B": "rice"},
                    answer="A", gold_passage_ids=[f"p{i}"]) for i in range(6)]
    # index.type=flat (faiss): the key is about which candidates the loop uses, not about the compiled top-k
    cfg = load_config(None, [f"output_dir={tmp_path}", "optim.steps=3", "optim.batch_size=2", "index.top_k=4", "index.type=flat",
                             "index.fixed_candidates=true", "refresh.every=0", "retriever.lr=1e-2",
                             "optim.warmup_steps=0", "optim.precision=fp32", "eval_every=0", "loss.name=jmlr_rank",
                             "index.sample_m=2", 'loss.options={"num_samples": 2}'])
    retriever = DualEncoder.from_pretrained(tiny_bert_dir)
    initial = copy.deepcopy(retriever)
    t = JointTrainer(cfg, retriever, Reader.from_pretrained(tiny_reader_dir, max_length=128), corpus, qa, None,
                     progress=False)
    t.setup()
    calls = []
    search = t.retrieval.search
    t.retrieval.search = lambda q, k, **kw: (calls.append(len(q)), search(q, k, **kw))[1]
    t.train()
    assert calls == [len(qa)]  # one search of every training question, none after
    with torch.no_grad():  # the served index is never refreshed, so it still holds the initial doc embeddings
        q0 = initial.encode_queries([ex.question for ex in qa], progress=False).float()
        ref = search(q0, 4)[1]
    assert torch.equal(torch.stack([t._pool[id(ex)] for ex in t.train_data]), ref)
    moved = [not torch.equal(a, b) for a, b in zip(initial.state_dict().values(), retriever.state_dict().values())]
    assert any(moved)  # the retriever still trains on its fixed pool


def test_append_adds_only_the_missing_runs(tmp_path, tiny_bert_dir, tiny_reader_dir):
    def run(*extra):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "joint_study.py"), "--quick", "--quiet",
                               "--out", str(tmp_path), "--datasets", "demo", "--reader", tiny_reader_dir,
                               "--retriever", tiny_bert_dir, *extra], capture_output=True, text=True, timeout=600,
                              env=ENV)

    r = run("--arms", "c_frozen_rag", "--seeds", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    first = json.loads((tmp_path / "joint_study_demo.json").read_text())
    r = run("--append", "--arms", "c_frozen_rag,e_joint_rag_sequence", "--seeds", "0,1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(3/3) e_joint_rag_sequence" in r.stdout  # c seed 0 was not run again
    payload = json.loads((tmp_path / "joint_study_demo.json").read_text())
    by = {a["arm"]: a for a in payload["arms"]}
    assert by["c_frozen_rag"]["seeds"] == [0, 1] and by["e_joint_rag_sequence"]["seeds"] == [0, 1]
    assert by["c_frozen_rag"]["runs"][0] == first["arms"][0]["runs"][0]
    assert [(c["a"], c["b"]) for c in payload["comparisons"]] == [("e_joint_rag_sequence", "c_frozen_rag")]
    r = run("--append", "--arms", "c_frozen_rag", "--seeds", "2", "--steps", "3")
    assert r.returncode != 0 and "other settings (steps)" in r.stderr
