"""Every ```python block of README.md and docs/*.md runs.

The blocks of one page run in order in one namespace and one temporary folder (the page reads like a notebook:
a later block may use the names and files of an earlier one). A block may declare, in an HTML comment on the
line before it, the fixtures it needs or why it is skipped:

    <!-- snippet: fixtures=tiny_models,demo_files -->
    <!-- snippet: skip reason=needs a GPU -->

A skip is only for a block that genuinely needs a GPU or a multi-GB download. The fixtures (FIXTURES below)
write small files into the page's folder and put the names a block uses into its namespace. ``tiny_models``
makes the bundled aliases ``minilm`` and ``smollm2-135m`` resolve to the tiny random models of
tests/tiny_models.py, so a block that loads them by alias runs unchanged, offline and fast; ``quick_train``
shortens the joint runs a block starts (2 steps, no periodic refresh) and ``quick_stages`` the stage runs,
generations and bias probe, without changing the calls a block shows. The compiled top-k kernels are not
built here (JMLR_KERNELS_NO_BUILD): tests/kernels covers them.
"""
from __future__ import annotations

import json
import re
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
DIRECTIVE = re.compile(r"<!--\s*snippet:\s*(?P<body>.*?)\s*-->\s*\Z", re.S)


@dataclass
class Snippet:
    page: str
    line: int
    code: str
    fixtures: list[str] = field(default_factory=list)
    skip: str | None = None


def extract(page: str, root: Path = ROOT) -> list[Snippet]:
    """The python blocks of ``page`` (a path relative to ``root``), with their directives."""
    text = (root / page).read_text()
    out = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        s = Snippet(page, line, textwrap.dedent(m.group("code")))
        d = DIRECTIVE.search(before)
        if d:
            body = d.group("body")
            if body.startswith("skip"):
                reason = re.match(r"skip\s+reason=(.+)", body)
                if not reason:
                    raise ValueError(f"{page}:{line}: a skipped snippet says why (skip reason=...)")
                s.skip = reason.group(1).strip()
            else:
                f = re.fullmatch(r"fixtures=([\w,]+)", body)
                if not f:
                    raise ValueError(f"{page}:{line}: unknown snippet directive {body!r}")
                s.fixtures = f.group(1).split(",")
        out.append(s)
    return out


# ---------------------------------------------------------------------------------------------- fixtures
class Env:
    """What a fixture gets: the page's namespace and folder, monkeypatch, and the tiny model folders."""

    def __init__(self, ns, folder, monkeypatch, encoder, reader):
        self.ns, self.folder, self.mp, self.encoder, self.reader = ns, folder, monkeypatch, encoder, reader


def _demo_questions(n):
    from jmlr.data.demo import demo_qa

    return demo_qa("train")[:n]


def _write_jsonl(path, rows):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def fx_tiny_models(env):
    """``minilm`` and ``smollm2-135m`` resolve to the tiny random encoder and reader; caches go to the folder."""
    import jmlr.models

    env.mp.setattr(jmlr.models, "_minilm_path", lambda: env.encoder)
    env.mp.setattr(jmlr.models, "_smollm2_path", lambda: env.reader)
    env.mp.setenv("JMLR_CACHE", str(env.folder / "cache"))


def fx_quick_train(env):
    """Joint runs from ``load_config`` take 2 steps of 2 questions, without periodic refresh or evaluation."""
    import jmlr.config

    real = jmlr.config.load_config

    def quick(path=None, overrides=(), *a, **kw):
        extra = ["optim.steps=2", "optim.batch_size=2", "optim.warmup_steps=0", "refresh.every=0",
                 "eval_every=0", "data.max_eval=4", "report_to=[jsonl]"]
        return real(path, [*list(overrides or []), *extra], *a, **kw)

    env.mp.setattr(jmlr.config, "load_config", quick)


def fx_quick_stages(env):
    """Stage runs (pretrain, sft) stop after 2 optimizer steps whatever their optim.steps; generation is 8
    tokens at most; the bias probe asks for its first two vignettes only."""
    import jmlr.eval.bias as bias
    import jmlr.eval.generation as generation
    from jmlr.train.stages import pretrain, sft

    for mod in (pretrain, sft):
        real = mod.train_loop

        def short(cfg, run, *a, _real=real, **kw):
            cfg.optim.steps = min(cfg.optim.steps, 2)
            return _real(cfg, run, *a, **kw)

        env.mp.setattr(mod, "train_loop", short)
    real_gen = generation.evaluate_generation
    env.mp.setattr(generation, "evaluate_generation",
                   lambda *a, **kw: real_gen(*a, **{**kw, "max_new_tokens": min(kw.get("max_new_tokens", 8), 8)}))
    env.mp.setattr(bias, "DEFAULT_ITEMS", bias.DEFAULT_ITEMS[:2])
    real_probe = bias.run_bias_probe
    env.mp.setattr(bias, "run_bias_probe", lambda reader=None, items=None, **kw: real_probe(
        reader, items if items is not None else bias.DEFAULT_ITEMS, **kw))


def fx_demo_files(env):
    """README's quick start: medqa-format train.jsonl/dev.jsonl (demo questions), guidelines.jsonl (their gold
    passages and more), and the shipped configs under jmlr/configs/ as in a checkout."""
    from jmlr.data.demo import demo_corpus

    qs = _demo_questions(12)
    rows = [{"question": q.question, "options": q.options, "answer_idx": q.answer} for q in qs]
    _write_jsonl(env.folder / "train.jsonl", rows[:8])
    _write_jsonl(env.folder / "dev.jsonl", rows[8:])
    gold = {g for q in qs for g in q.gold_passage_ids}
    corpus = demo_corpus()
    keep = [p for p in corpus if p.id in gold] + [p for p in list(corpus)[:16] if p.id not in gold]
    _write_jsonl(env.folder / "guidelines.jsonl", [{"id": p.id, "title": p.title, "text": p.text} for p in keep])
    shutil.copytree(ROOT / "jmlr" / "configs", env.folder / "jmlr" / "configs")


def fx_data_files(env):
    """docs/data.md: a MedMCQA file with explanations, a medqa file, a folder of textbooks, a pubmed corpus, a
    generic JSONL and a HF DatasetDict for the mapping examples, and the names the API tour uses."""
    import datasets
    from transformers import AutoTokenizer

    from jmlr.data import Corpus

    qs = _demo_questions(20)
    med = [{"id": f"m{i}", "question": q.question, "opa": q.options["A"], "opb": q.options["B"],
            "opc": q.options["C"], "opd": q.options["D"], "cop": "ABCD".index(q.answer) + 1,
            "exp": f"Explanation {i}: the answer is {q.options[q.answer]}.", "subject_name": "Pharmacology"}
           for i, q in enumerate(qs[:6])]
    _write_jsonl(env.folder / "data" / "medmcqa" / "dev.json", med)
    _write_jsonl(env.folder / "medqa.jsonl", [{"question": q.question, "options": q.options, "answer_idx": q.answer}
                                              for q in qs])
    books = env.folder / "textbooks"
    books.mkdir()
    (books / "pharmacology.md").write_text("\n\n".join(f"{q.question} {q.options[q.answer]}." for q in qs[:10]))
    (books / "repeat.txt").write_text(f"{qs[0].question} {qs[0].options[qs[0].answer]}.\n\nA second paragraph.")
    pubmed = [{"id": f"pubmed-{21645374 + i}-0", "title": f"Abstract {i}", "text": f"{q.question} "
               f"{q.options[q.answer]} is the answer in this abstract."} for i, q in enumerate(qs)]
    _write_jsonl(env.folder / "pubmed.jsonl", pubmed)
    generic = [{"uid": f"g{i}", "data": {"stem": q.question}, "opa": q.options["A"], "opb": q.options["B"],
                "opc": q.options["C"], "opd": q.options["D"], "label": "ABCD".index(q.answer),
                "doc_ids": [f"pubmed-{21645374 + i}-0"], "subject": "pharmacology"} for i, q in enumerate(qs[:4])]
    _write_jsonl(env.folder / "my.jsonl", generic)
    env.ns["ds"] = datasets.DatasetDict({"validation": datasets.Dataset.from_list(generic)})
    env.ns["path"] = env.encoder  # the folder a tokenizer loads from
    env.ns["tok"] = AutoTokenizer.from_pretrained(env.encoder)
    env.ns["AutoTokenizer"] = AutoTokenizer
    env.ns["pid"] = pubmed[3]["id"]
    env.ns["gold_ids"] = [pubmed[1]["id"], "not-in-the-corpus", pubmed[0]["id"]]
    whole = Corpus.load(env.folder / "pubmed.jsonl")
    env.ns["a"], env.ns["b"], env.ns["indices"] = whole[:5], whole[5:], [0, 2, 4]


def fx_loss_inputs(env):
    """docs/losses.md: scores and log-likelihoods of B=3 questions x K=4 candidates (the last one padding in row
    0), the extras some losses need, and a TrainConfig."""
    import torch

    from jmlr.config import TrainConfig

    g = torch.Generator().manual_seed(0)
    B, K, T = 3, 4, 5
    env.ns["scores"] = torch.randn(B, K, generator=g).requires_grad_()
    env.ns["loglik"] = (-torch.rand(B, K, generator=g) * 5).requires_grad_()
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, -1] = False
    env.ns["mask"] = mask
    env.ns["loo_loglik"] = -torch.rand(B, K, generator=g) * 5
    env.ns["token_logp"] = -torch.rand(B, K, T, generator=g)
    env.ns["answer_mask"] = torch.ones(B, T, dtype=torch.bool)
    env.ns["cfg"] = TrainConfig()


def fx_qa_objects(env):
    """Questions, their passages and a corpus: docs/reader.md, docs/retrieval.md, docs/stages.md."""
    import torch

    from jmlr.data.demo import demo_corpus

    qs = _demo_questions(6)
    corpus = demo_corpus()
    keep = {g for q in qs for g in q.gold_passage_ids}
    small = corpus.select([i for i, p in enumerate(corpus) if p.id in keep or i < 20])
    env.ns.update(
        torch=torch, examples=qs[:2], train_qa=qs,
        huatuo_test=[__import__("jmlr.data", fromlist=["QAExample"]).QAExample(
            id="h0", question="头痛怎么办？", options={}, answer=None, answer_text="多休息，多喝水。")],
        passages=[[corpus.get(q.gold_passage_ids[0]).text, corpus[0].text] for q in qs[:2]],
        retrieved_texts=[[corpus[i].text, corpus[i + 1].text] for i in range(len(qs))],
        corpus=small, questions=[q.question for q in qs[:2]], steps=2, B=2, K=3, Reader=__import__(
            "jmlr.reader", fromlist=["Reader"]).Reader,
        flat=lambda cand: [small.get(str(i)).text if not isinstance(i, int) else small[i].text
                           for i in cand.reshape(-1).tolist()],
        hyps=["the first-line drug is ethosuximide", "metformin"],
        refs=["ethosuximide is the first-line drug", "metformin"],
        hf_dataset=__import__("datasets").Dataset.from_list([{"abstract": p.text} for p in list(small)[:8]]),
    )
    _write_jsonl(env.folder / "corpus.jsonl", [{"id": p.id, "title": p.title, "text": p.text} for p in small])


FIXTURES = {
    "tiny_models": fx_tiny_models,
    "quick_train": fx_quick_train,
    "quick_stages": fx_quick_stages,
    "demo_files": fx_demo_files,
    "data_files": fx_data_files,
    "loss_inputs": fx_loss_inputs,
    "qa_objects": fx_qa_objects,
}


def test_every_directive_names_a_known_fixture():
    for page in PAGES:
        for s in extract(page):
            unknown = set(s.fixtures) - set(FIXTURES)
            assert not unknown, f"{page}:{s.line}: unknown fixture(s) {sorted(unknown)}; known: {sorted(FIXTURES)}"


def test_the_extractor_finds_indented_blocks_and_directives(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- snippet: fixtures=a,b -->\n```python\nx = 1\n```\n- item\n\n  ```python\n"
                    "  y = 2\n  ```\n<!-- snippet: skip reason=needs a GPU -->\n```python\nz\n```\n```bash\nls\n```\n")
    got = [(s.line, s.code, s.fixtures, s.skip) for s in extract("page.md", tmp_path)]
    assert got == [(3, "x = 1\n", ["a", "b"], None), (8, "y = 2\n", [], None), (12, "z\n", [], "needs a GPU")]


@pytest.mark.parametrize("page", PAGES)
def test_page_snippets_run(page, tmp_path, monkeypatch, tiny_bert_dir, tiny_reader_dir):
    snippets = extract(page)
    if not snippets:
        pytest.skip(f"{page} has no python block")
    monkeypatch.chdir(tmp_path)
    # the calls, not the speed of the compiled top-k kernels (tests/kernels): no JIT build of them here
    monkeypatch.setenv("JMLR_KERNELS_NO_BUILD", "1")
    ns: dict = {"__name__": "__snippet__"}
    env = Env(ns, tmp_path, monkeypatch, tiny_bert_dir, tiny_reader_dir)
    ran, done = 0, set()
    for s in snippets:
        if s.skip:
            continue
        for name in s.fixtures:
            if name not in done:
                FIXTURES[name](env)
                done.add(name)
        try:
            exec(compile("\n" * s.line + s.code, str(ROOT / page), "exec"), ns)  # tracebacks: the page's lines
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"the block at {page}:{s.line} fails: {type(e).__name__}: {e}") from e
        ran += 1
    if not ran:
        pytest.skip(f"every block of {page} is skipped: " + "; ".join(f"{s.line}: {s.skip}" for s in snippets))
