"""Each load_qa format on small synthetic files, plus the native round trip."""
import json
import logging

import pytest

from jmlr.data import QAExample, load_qa, load_qa_corpus, load_qa_with_corpus, qa_formats, save_qa


# ------------------------------------------------------------------------------------------ medqa
def test_medqa_four_and_five_options(write_jsonl, medqa_records):
    qa = load_qa("medqa", write_jsonl("medqa.jsonl", medqa_records))
    assert [q.id for q in qa] == ["medqa-0", "medqa-1"]
    assert len(qa[0].options) == 4 and len(qa[1].options) == 5
    assert qa[0].answer == "A" and qa[1].answer == "C"
    assert qa[1].options["C"] == "Vitamin C"
    assert qa[0].metadata == {"source": "medqa", "meta_info": "step1"}
    assert qa[0].gold_passage_ids == []


def test_medqa_key_value_options_and_limit(write_jsonl, medqa_records):
    rec = dict(medqa_records[0], options=[{"key": k, "value": v} for k, v in medqa_records[0]["options"].items()])
    qa = load_qa("MedQA", write_jsonl("m.jsonl", [rec, medqa_records[1]]), limit=1)
    assert len(qa) == 1 and qa[0].options["A"] == "ECG"


# ------------------------------------------------------------------------------------------ amboss
def test_amboss_top_level_letters_with_empty_trailing_options(write_jsonl):
    recs = [
        {"id": "am1", "stem": "A 30-year-old woman presents with fatigue.", "lead_in": "Most likely diagnosis?",
         "A": "Anemia", "B": "Hypothyroidism", "C": "Depression", "D": "Diabetes", "E": "Lupus", "F": "Lyme disease",
         "answer": "B", "explanation": "TSH was high."},
        {"id": "am2", "stem": "Stem two.", "A": "x", "B": "y", "C": "z", "D": "w", "E": None, "F": "", "answer": "d"},
        {"id": "am3", "question": "Plain question?", "options": {"A": "p", "B": "q", "C": "r", "D": "s", "E": ""},
         "answer": "A"},
    ]
    qa = load_qa("amboss", write_jsonl("amboss.jsonl", recs))
    assert qa[0].question == "A 30-year-old woman presents with fatigue.\nMost likely diagnosis?"
    assert list(qa[0].options) == list("ABCDEF")
    assert qa[0].metadata["explanation"] == "TSH was high."
    assert list(qa[1].options) == list("ABCD") and qa[1].answer == "D"
    assert list(qa[2].options) == list("ABCD")


def test_amboss_more_than_six_options_is_an_error(write_jsonl):
    rec = {"stem": "S", "options": list("abcdefg"), "answer": "A"}
    with pytest.raises(ValueError, match=r"line 1: 7 options; AMBOSS-style items have at most 6"):
        load_qa("amboss", write_jsonl("a.jsonl", [rec]))


# ------------------------------------------------------------------------------------------ medmcqa
def test_medmcqa_cop_and_explanation_passages(write_jsonl, medmcqa_records):
    path = write_jsonl("dev.json", medmcqa_records)
    qa, corpus = load_qa_with_corpus("medmcqa", path)
    assert [q.answer for q in qa] == ["A", "B", "D"]
    assert qa[0].gold_passage_ids == ["medmcqa-exp-q1"]
    assert qa[1].gold_passage_ids == [] and qa[2].gold_passage_ids == []  # null and blank exp
    assert qa[0].metadata["subject"] == "Pharmacology" and qa[1].metadata["topic"] == "General"
    assert len(corpus) == 1
    p = corpus.get("medmcqa-exp-q1")
    assert p.text == "Ethosuximide blocks T-type calcium channels." and p.title == "Pharmacology"
    c2 = load_qa_corpus("medmcqa", path)
    assert list(c2.ids) == [g for q in qa for g in q.gold_passage_ids]


def test_medmcqa_zero_based_cop_is_detected_and_said(write_jsonl, medmcqa_records, caplog):
    recs = [dict(r, cop=r["cop"] - 1) for r in medmcqa_records]  # 0, 1, 3
    with caplog.at_level(logging.WARNING, logger="jmlr.data"):
        qa = load_qa("medmcqa", write_jsonl("dev0.jsonl", recs))
    assert [q.answer for q in qa] == ["A", "B", "D"]
    assert "0-based" in caplog.text


def test_medmcqa_forced_base_and_unlabelled(write_jsonl, medmcqa_records):
    recs = [dict(medmcqa_records[0], cop=2), dict(medmcqa_records[1], cop=-1), dict(medmcqa_records[2], cop=None)]
    qa = load_qa("medmcqa", write_jsonl("t.jsonl", recs), cop_base=0)
    assert [q.answer for q in qa] == ["C", None, None]


def test_medmcqa_mixed_cop_bases_is_an_error(write_jsonl, medmcqa_records):
    recs = [dict(medmcqa_records[0], cop=0), dict(medmcqa_records[1], cop=4)]
    with pytest.raises(ValueError, match=r"cop values include both 0 \(line 1\) and 4 \(line 2\)"):
        load_qa("medmcqa", write_jsonl("bad.jsonl", recs))


def test_medmcqa_json_array_file(tmp_path, medmcqa_records):
    path = tmp_path / "dev_array.json"
    path.write_text(json.dumps(medmcqa_records))
    assert [q.id for q in load_qa("medmcqa", path)] == ["q1", "q2", "q3"]


# ------------------------------------------------------------------------------------------ mmlu
MMLU_ANATOMY = ('"Which bone is in the arm, ""the long one""?",Humerus,Femur,Tibia,Fibula,A\n'
                '"Which organ\nmakes insulin?",Liver,Pancreas,Spleen,Kidney,B\n')
MMLU_GENETICS = "How many chromosomes do humans have?,23,46,44,48,B\n"


def test_mmlu_file_and_folder(tmp_path):
    (tmp_path / "anatomy_test.csv").write_text(MMLU_ANATOMY)
    (tmp_path / "medical_genetics_test.csv").write_text(MMLU_GENETICS)
    (tmp_path / "notes.txt").write_text("not a csv")
    one = load_qa("mmlu", tmp_path / "anatomy_test.csv")
    assert [q.id for q in one] == ["mmlu-anatomy-0", "mmlu-anatomy-1"]
    assert one[0].question == 'Which bone is in the arm, "the long one"?'
    assert one[1].question == "Which organ\nmakes insulin?" and one[1].answer == "B"
    both = load_qa("mmlu", tmp_path)
    assert len(both) == 3
    assert both[2].metadata == {"source": "mmlu", "subject": "medical_genetics"}
    assert both[2].options == {"A": "23", "B": "46", "C": "44", "D": "48"}


def test_mmlu_header_row_is_skipped(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("question,A,B,C,D,answer\n" + MMLU_GENETICS)
    assert len(load_qa("mmlu", p)) == 1


def test_mmlu_errors_name_the_csv_inside_a_folder(tmp_path):
    (tmp_path / "a_test.csv").write_text(MMLU_GENETICS)
    (tmp_path / "b_test.csv").write_text(MMLU_GENETICS + "Broken row,only,three\n")
    with pytest.raises(ValueError, match=r"b_test\.csv, line 2: 3 column\(s\); expected question"):
        load_qa("mmlu", tmp_path)
    (tmp_path / "b_test.csv").write_text(MMLU_GENETICS + "Q?,w,x,y,z,E\n")
    with pytest.raises(ValueError, match=r"b_test\.csv, line 2: answer 'E' is not an option"):
        load_qa("mmlu", tmp_path)


def test_mmlu_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="holds no .csv files"):
        load_qa("mmlu", tmp_path)


# ------------------------------------------------------------------------------------------ pubmedqa
def test_pubmedqa_answers_and_context_passages(tmp_path, pubmedqa_data):
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(pubmedqa_data))
    qa, corpus = load_qa_with_corpus("pubmedqa", path)
    assert [q.id for q in qa] == ["pubmedqa-111", "pubmedqa-222", "pubmedqa-333"]
    assert qa[0].options == {"A": "yes", "B": "no", "C": "maybe"}
    assert [q.answer for q in qa] == ["A", "B", "C"]
    assert qa[1].gold_passage_ids == ["pubmed-222-0", "pubmed-222-1", "pubmed-222-2"]
    assert qa[0].metadata["long_answer"] == "Aspirin reduced stroke." and qa[0].metadata["year"] == "2001"
    assert len(corpus) == 6
    p = corpus.get("pubmed-222-1")
    assert (p.title, p.text) == ("METHODS", "Methods two.")
    assert list(load_qa_corpus("pubmedqa", path).ids) == [g for q in qa for g in q.gold_passage_ids]


def test_pubmedqa_split_file(tmp_path, pubmedqa_data):
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(pubmedqa_data))
    split = tmp_path / "test_ground_truth.json"
    split.write_text(json.dumps({"222": "no", "333": "maybe"}))
    test = load_qa("pubmedqa", path, split_file=split)
    train = load_qa("pubmedqa", path, split_file=split, split="train")
    assert [q.id for q in test] == ["pubmedqa-222", "pubmedqa-333"]
    assert [q.id for q in train] == ["pubmedqa-111"]
    split.write_text(json.dumps({"222": "yes"}))
    with pytest.raises(ValueError, match=r"record '222': final_decision 'no' disagrees"):
        load_qa("pubmedqa", path, split_file=split)
    split.write_text(json.dumps({"999": "yes"}))
    with pytest.raises(ValueError, match=r"record '999': PMID not in"):
        load_qa("pubmedqa", path, split_file=split)


def test_pubmedqa_bad_decision(tmp_path, pubmedqa_data):
    pubmedqa_data["111"]["final_decision"] = "probably"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(pubmedqa_data))
    with pytest.raises(ValueError, match=r"p\.json, record '111': final_decision is 'probably'; expected yes, no or maybe"):
        load_qa("pubmedqa", path)


# ------------------------------------------------------------------------------------------ huatuo
def test_huatuo_question_groups_and_lite_layout(write_jsonl):
    recs = [
        {"questions": [["感冒了怎么办?", "感冒怎么治疗?"], ["发烧吃什么药?"]], "answers": ["多休息，多喝水。", "可以服用退烧药。"]},
        {"question": "头痛的原因?", "answer": "原因很多。"},
    ]
    qa = load_qa("huatuo", write_jsonl("huatuo.jsonl", recs))
    assert [q.id for q in qa] == ["huatuo-0-0", "huatuo-0-1", "huatuo-1"]
    assert qa[0].question == "感冒了怎么办?" and qa[0].metadata["paraphrases"] == ["感冒怎么治疗?"]
    assert qa[1].answer_text == "可以服用退烧药。"
    assert all(q.options == {} and q.answer is None for q in qa)


def test_huatuo_mismatched_groups(write_jsonl):
    with pytest.raises(ValueError, match=r"line 1: 2 question group\(s\) but 1 answer\(s\)"):
        load_qa("huatuo", write_jsonl("h.jsonl", [{"questions": [["a"], ["b"]], "answers": ["x"]}]))


# ------------------------------------------------------------------------------------------ generic jsonl
def test_jsonl_mapping_with_option_fields_and_nested_paths(write_jsonl):
    recs = [{"uid": 7, "data": {"q": "Best test for DVT?"}, "o1": "Ultrasound", "o2": "X-ray", "o3": "CT head",
             "label": "a", "subject": "vascular", "docs": ["d1", "d2"]}]
    qa = load_qa("jsonl", write_jsonl("g.jsonl", recs),
                 mapping={"id": "uid", "question": "data.q", "options": ["o1", "o2", "o3"], "answer": "label",
                          "gold_passage_ids": "docs", "metadata": ["subject"]})
    assert qa[0].id == "7" and qa[0].question == "Best test for DVT?"
    assert qa[0].options == {"A": "Ultrasound", "B": "X-ray", "C": "CT head"} and qa[0].answer == "A"
    assert qa[0].gold_passage_ids == ["d1", "d2"] and qa[0].metadata == {"subject": "vascular"}


def test_jsonl_answer_as_text_or_index(write_jsonl):
    recs = [{"q": "Q1?", "choices": ["red", "green"], "ans": "green"}, {"q": "Q2?", "choices": ["x", "y"], "ans": 0}]
    path = write_jsonl("g.jsonl", recs)
    mapping = {"question": "q", "options": "choices", "answer": "ans"}
    with pytest.raises(ValueError, match=r"line 2: answer is the integer 0; pass answer_index_base=0 or 1"):
        load_qa("jsonl", path, mapping=mapping)
    qa = load_qa("jsonl", path, mapping=mapping, answer_index_base=0)
    assert [q.answer for q in qa] == ["B", "A"] and [q.id for q in qa] == ["q-0", "q-1"]


def test_jsonl_default_mapping_free_text(write_jsonl):
    qa = load_qa("jsonl", write_jsonl("g.jsonl", [{"question": "Why?", "answer": "Because."}]))
    assert qa[0].options == {} and qa[0].answer_text == "Because."


def test_jsonl_mapping_errors(write_jsonl):
    path = write_jsonl("g.jsonl", [{"q": "Q?", "opts": ["a", "b"], "ans": "A"}, {"q": "Q2?", "opts": ["a", "b"]}])
    with pytest.raises(ValueError, match=r"g\.jsonl, line 2: missing field 'ans' \(mapped to 'answer'\)"):
        load_qa("jsonl", path, mapping={"question": "q", "options": "opts", "answer": "ans"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['anser'\]"):
        load_qa("jsonl", path, mapping={"question": "q", "anser": "ans"})


# ------------------------------------------------------------------------------------------ hf
def test_hf_dataset_and_dataset_dict():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({
        "question": ["First?", "Second?"], "opa": ["a1", "a2"], "opb": ["b1", "b2"], "cop": [1, 0],
        "id": ["h1", "h2"]})
    mapping = {"id": "id", "question": "question", "options": ["opa", "opb"], "answer": "cop"}
    qa = load_qa("hf", ds, mapping=mapping, answer_index_base=0)
    assert [(q.id, q.answer) for q in qa] == [("h1", "B"), ("h2", "A")]
    dd = datasets.DatasetDict({"train": ds, "test": ds})
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\]; pass split="):
        load_qa("hf", dd, mapping=mapping, answer_index_base=0)
    assert len(load_qa("hf", dd, mapping=mapping, answer_index_base=0, split="test")) == 2
    bad = datasets.Dataset.from_dict({"question": ["Q?"], "opa": ["a"], "opb": ["b"], "cop": [5], "id": ["x"]})
    with pytest.raises(ValueError, match=r"hf dataset, record 0: answer index 5 is not an option"):
        load_qa("hf", bad, mapping=mapping, answer_index_base=0)


# ------------------------------------------------------------------------------------------ native
def test_native_roundtrip(tmp_path):
    exs = [QAExample("a", "Q1?", {"A": "x", "B": "y"}, "B", ["p1"], None, {"subject": "cardio", "n": 3}),
           QAExample("b", "Q2 — ünïcode?", answer_text="free text"),
           QAExample("c", "Q3?", {"A": "x", "B": "y", "C": "z"}, None)]
    path = save_qa(exs, tmp_path / "sub" / "qa.jsonl")
    assert load_qa("jmlr", path) == exs
    assert [p.name for p in path.parent.iterdir()] == ["qa.jsonl"]  # no temporary file left behind
    with pytest.raises(ValueError, match="duplicate example id 'a'"):
        save_qa([exs[0], exs[0]], tmp_path / "dup.jsonl")
    assert not (tmp_path / "dup.jsonl").exists()


def test_formats_listed():
    assert qa_formats() == ["jmlr", "medqa", "amboss", "medmcqa", "mmlu", "pubmedqa", "huatuo", "jsonl", "hf"]


def test_load_qa_corpus_on_a_format_without_passages(write_jsonl, medqa_records):
    with pytest.raises(ValueError, match="carried no passages"):
        load_qa_corpus("medqa", write_jsonl("m.jsonl", medqa_records))
