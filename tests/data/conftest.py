"""Small helpers for the data-layer tests: write synthetic files into tmp_path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


def _write_jsonl(path: Path, records, raw_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) if not isinstance(r, str) else r for r in records]
    lines.extend(raw_lines)
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return path


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(name, records) -> Path; a str record is written verbatim (for malformed lines)."""
    def w(name, records, raw_lines=()):
        return _write_jsonl(tmp_path / name, records, raw_lines)
    return w


@pytest.fixture
def medqa_records():
    return [
        {"question": "A 45-year-old man has crushing chest pain. Next step?", "answer": "ECG",
         "options": {"A": "ECG", "B": "Discharge", "C": "MRI of the knee", "D": "Observation"},
         "meta_info": "step1", "answer_idx": "A"},
        {"question": "Which vitamin deficiency causes scurvy?", "answer": "Vitamin C",
         "options": {"A": "Vitamin A", "B": "Vitamin B12", "C": "Vitamin C", "D": "Vitamin D", "E": "Vitamin K"},
         "meta_info": "step2&3", "answer_idx": "C"},
    ]


@pytest.fixture
def medmcqa_records():
    return [
        {"id": "q1", "question": "Drug of choice for absence seizures?", "opa": "Ethosuximide", "opb": "Phenytoin",
         "opc": "Carbamazepine", "opd": "Gabapentin", "cop": 1, "exp": "Ethosuximide blocks T-type calcium channels.",
         "subject_name": "Pharmacology", "topic_name": None, "choice_type": "single"},
        {"id": "q2", "question": "Largest organ of the body?", "opa": "Liver", "opb": "Skin", "opc": "Brain",
         "opd": "Lung", "cop": 2, "exp": None, "subject_name": "Anatomy", "topic_name": "General", "choice_type": "single"},
        {"id": "q3", "question": "Normal adult resting heart rate?", "opa": "20-40", "opb": "40-50", "opc": "120-150",
         "opd": "60-100", "cop": 4, "exp": "  ", "subject_name": "Physiology", "topic_name": None, "choice_type": "single"},
    ]


@pytest.fixture
def pubmedqa_data():
    return {
        "111": {"QUESTION": "Does aspirin reduce stroke risk?", "CONTEXTS": ["Background text one.", "Results text one."],
                "LABELS": ["BACKGROUND", "RESULTS"], "MESHES": ["Aspirin"], "YEAR": "2001",
                "final_decision": "yes", "LONG_ANSWER": "Aspirin reduced stroke."},
        "222": {"QUESTION": "Is coffee harmful to the liver?", "CONTEXTS": ["Objective two.", "Methods two.", "Results two."],
                "LABELS": ["OBJECTIVE", "METHODS", "RESULTS"], "MESHES": [], "YEAR": "2010",
                "final_decision": "no", "LONG_ANSWER": "No harm seen."},
        "333": {"QUESTION": "Does exercise improve mood?", "CONTEXTS": ["Only section."], "LABELS": ["BACKGROUND"],
                "final_decision": "maybe", "LONG_ANSWER": "Unclear."},
    }
