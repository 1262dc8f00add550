"""Baselines on jmlr's bundled demo data (what `jmlr demo` trains on), measured with the bundled models.

* Retrieval: off-the-shelf all-MiniLM-L6-v2 (``resolve("minilm")``), query = question text, document =
  "title. text", cosine similarity, exact search over the whole demo corpus. Recall@1/5/20 and MRR@10 on
  each split (a question has exactly one gold passage).
* Reader: SmolLM2-135M-Instruct (``resolve("smollm2-135m")``, ``--precision``) on the test MCQs, in three settings:
  - closed_book: no passage (the facts are invented, so this should sit near chance, 0.25);
  - oracle: the gold passage before the question (``Context: title. text``), the most that retrieval can
    give this reader;
  - retrieved@1: minilm's top-1 passage instead (what off-the-shelf RAG gives);
  and two answer protocols:
  - letter: the plain prompt ``Question: ...\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:``, argmax of the
    next-token logits of " A", " B", " C", " D" (the share of answers per letter shows a letter bias);
  - cloze: the chat template with the question (and context) but no option list; each option text is
    scored as the assistant's reply, argmax of its summed log-probability.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/demo_baselines.py --out runs/bench/demo_baselines

Writes ``demo_baselines.json`` and ``demo_baselines.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import machine_info, write_json  # noqa: E402

LETTERS = ("A", "B", "C", "D")
SPLITS = ("train", "dev", "test")


# ------------------------------------------------------------------------------------------------
# Retrieval
# ------------------------------------------------------------------------------------------------
def retrieval_metrics(ranked_ids: list[list[str]], gold: list[list[str]], ks=(1, 5, 20), mrr_k: int = 10) -> dict:
    """Recall@k (share of questions with a gold id in the top k) and MRR@mrr_k over ranked id lists."""
    if len(ranked_ids) != len(gold):
        raise ValueError(f"{len(ranked_ids)} rankings for {len(gold)} questions")
    out = {f"recall@{k}": 0.0 for k in ks}
    mrr = 0.0
    for ranking, g in zip(ranked_ids, gold):
        gs = set(g)
        first = next((r for r, pid in enumerate(ranking) if pid in gs), None)
        for k in ks:
            out[f"recall@{k}"] += float(first is not None and first < k)
        if first is not None and first < mrr_k:
            mrr += 1.0 / (first + 1)
    n = max(len(gold), 1)
    out = {k: v / n for k, v in out.items()}
    out[f"mrr@{mrr_k}"] = mrr / n
    return out


def minilm_rankings(model, corpus_ids: list[str], doc_emb, questions: list[str], k: int = 20,
                    batch_size: int = 64) -> list[list[str]]:
    """Top-k corpus ids per question by cosine similarity (embeddings are L2-normalised)."""
    import torch

    q = model.encode(questions, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                     show_progress_bar=False)  # (Q, d)
    scores = q.float() @ doc_emb.float().T  # (Q, N)
    top = torch.topk(scores, k=min(k, scores.shape[1]), dim=1).indices  # (Q, k)
    return [[corpus_ids[i] for i in row] for row in top.tolist()]


# ------------------------------------------------------------------------------------------------
# Reader
# ------------------------------------------------------------------------------------------------
def mcq_prompt(question: str, options: dict[str, str], context: str | None = None) -> str:
    """The plain MCQ prompt; with ``context`` the passage comes first."""
    lines = [f"Context: {context}"] if context else []
    lines.append(f"Question: {question}")
    lines += [f"{letter}. {options[letter]}" for letter in LETTERS]
    lines.append("Answer:")
    return "\n".join(lines)


def letter_predictions(model, tokenizer, prompts: list[str], batch_size: int = 16, desc: str = "reader"):
    """Predicted letter per prompt: argmax over the next-token logits of " A".." D" (left-padded batches)."""
    import torch
    from tqdm import tqdm

    letter_ids = []
    for letter in LETTERS:
        ids = tokenizer.encode(" " + letter, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"tokenizer splits {' ' + letter!r} into {len(ids)} tokens, expected one")
        letter_ids.append(ids[0])
    letter_ids = torch.tensor(letter_ids)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    preds = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True)
        with torch.inference_mode():
            logits = model(**enc, logits_to_keep=1).logits[:, -1, :]  # (B, V)
        choice = logits[:, letter_ids].float().argmax(dim=1)  # (B,)
        preds.extend(LETTERS[j] for j in choice.tolist())
    return preds


def cloze_prompt(tokenizer, question: str, context: str | None = None) -> str:
    """The chat prompt of the cloze protocol: the user turn holds the context (if any) and the question,
    NOT the options; each option text is then scored as the assistant's reply."""
    user = (f"Context: {context}\n" if context else "") + f"Question: {question}"
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)


def cloze_predictions(model, tokenizer, prompts: list[str], options: list[dict[str, str]], batch_size: int = 8,
                      desc: str = "reader (cloze)") -> list[str]:
    """Predicted letter per prompt: argmax over the options of log p(option text | prompt), summed over the
    option's tokens. The reader has to produce the entity itself, not to bind it to a letter."""
    scores = cloze_scores(model, tokenizer, prompts, options, batch_size=batch_size, desc=desc)  # (Q, 4)
    return [LETTERS[j] for j in scores.argmax(dim=1).tolist()]


def cloze_scores(model, tokenizer, prompts: list[str], options: list[dict[str, str]], batch_size: int = 8,
                 desc: str = "reader (cloze)"):
    """``(Q, 4)`` float tensor: log p(option text | prompt) summed over the option's tokens, options A..D."""
    import torch
    from tqdm import tqdm

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        seqs, conts = [], []
        for prompt, opts in zip(prompts[i:i + batch_size], options[i:i + batch_size]):
            p_ids = tokenizer.encode(prompt, add_special_tokens=False)
            for letter in LETTERS:
                c = tokenizer.encode(opts[letter], add_special_tokens=False)
                seqs.append(p_ids + c)
                conts.append(c)
        width, n_keep = max(map(len, seqs)), max(map(len, conts)) + 1
        ids = torch.tensor([[pad] * (width - len(x)) + x for x in seqs])  # (4B, T), left-padded
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in seqs])  # (4B, T)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=n_keep).logits  # (4B, n_keep, V)
        logp = logits.float().log_softmax(-1)
        # position j of the kept logits predicts token (width - n_keep + j + 1); an option is the last len(c)
        # tokens, so its predictors are kept positions n_keep-1-len(c) .. n_keep-2.
        scores = torch.stack([
            logp[r, n_keep - 1 - len(c): n_keep - 1].gather(1, torch.tensor(c)[:, None]).sum()
            for r, c in enumerate(conts)]).view(-1, len(LETTERS))  # (B, 4)
        out.append(scores)
    return torch.cat(out) if out else torch.zeros(0, len(LETTERS))  # (Q, 4)


def accuracy(preds: list[str], gold: list[str], types: list[str] | None = None) -> dict:
    """Accuracy, the share of predictions per letter, and (with ``types``) accuracy per question type."""
    n = len(gold)
    acc = sum(p == g for p, g in zip(preds, gold)) / max(n, 1)
    share = {letter: sum(p == letter for p in preds) / max(n, 1) for letter in LETTERS}
    out = {"accuracy": acc, "n": n, "pred_share": share}
    if types is not None:
        by: dict[str, list[bool]] = {}
        for p, g, t in zip(preds, gold, types):
            by.setdefault(t, []).append(p == g)
        out["accuracy_by_type"] = {t: sum(v) / len(v) for t, v in sorted(by.items())}
    return out


# ------------------------------------------------------------------------------------------------
def run(out_dir: Path, splits=SPLITS, reader: bool = True, reader_split: str = "test",
        batch_size: int = 16, precision: str = "auto") -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from jmlr.data.demo import demo_corpus, demo_qa
    from jmlr.models import resolve

    corpus = demo_corpus()
    ids = list(corpus.ids)
    doc_texts = corpus.texts(with_title=True)
    qa = {s: demo_qa(s) for s in splits}
    results: dict = {"corpus_size": len(corpus), "split_sizes": {s: len(v) for s, v in qa.items()},
                     "machine": machine_info(), "retrieval": {}, "reader": {}}

    t0 = time.perf_counter()
    st = SentenceTransformer(resolve("minilm"), device="cpu")
    doc_emb = st.encode(doc_texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True,
                        show_progress_bar=True)  # (N, 384)
    rankings = {}
    for s, exs in qa.items():
        rankings[s] = minilm_rankings(st, ids, doc_emb, [e.question for e in exs], k=20)
        m = retrieval_metrics(rankings[s], [e.gold_passage_ids for e in exs])
        by_rel: dict[str, list[int]] = {}
        for e, r in zip(exs, rankings[s]):
            key = f"{e.metadata.get('relation')}/{e.metadata.get('direction')}"
            by_rel.setdefault(key, []).append(int(r[0] in e.gold_passage_ids))
        m["recall@1_by_type"] = {k: sum(v) / len(v) for k, v in sorted(by_rel.items())}
        results["retrieval"][s] = m
    results["retrieval_seconds"] = time.perf_counter() - t0

    if reader and reader_split not in qa:
        raise ValueError(f"the reader runs on the {reader_split!r} split: add it to --splits, or pass --no-reader")
    if reader:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        path = resolve("smollm2-135m")
        tok = AutoTokenizer.from_pretrained(path)
        from jmlr.core.precision import resolve_precision

        amp = resolve_precision(precision, "cpu", key="--precision")  # bf16 weights only where bf16 is native
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=amp.dtype or torch.float32).eval()
        results["reader_precision"] = amp.as_dict()
        exs = qa[reader_split]
        gold = [e.answer for e in exs]
        types = [f"{e.metadata.get('relation')}/{e.metadata.get('direction')}" for e in exs]
        text_of = {pid: t for pid, t in zip(ids, doc_texts)}
        contexts = {
            "closed_book": [None] * len(exs),
            "oracle": [text_of[e.gold_passage_ids[0]] for e in exs],
            "retrieved@1": [text_of[r[0]] for r in rankings[reader_split]],
        }
        rr = {"split": reader_split, "chance": 1 / len(LETTERS), "letter": {}, "cloze": {}}
        for name, ctx in contexts.items():
            prompts = [mcq_prompt(e.question, e.options, c) for e, c in zip(exs, ctx)]
            preds = letter_predictions(lm, tok, prompts, batch_size=batch_size, desc=f"letter {name}")
            rr["letter"][name] = accuracy(preds, gold)
        for name, ctx in contexts.items():
            prompts = [cloze_prompt(tok, e.question, c) for e, c in zip(exs, ctx)]
            preds = cloze_predictions(lm, tok, prompts, [e.options for e in exs], desc=f"cloze {name}")
            rr["cloze"][name] = accuracy(preds, gold, types)
        results["reader"] = rr
        results["reader_seconds"] = time.perf_counter() - t0

    write_report(out_dir, results)
    return results


def write_report(out_dir: Path, results: dict) -> None:
    from benchmarks._report import markdown_table

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "demo_baselines.json", results)
    rows = [{"split": s, "questions": results["split_sizes"][s], **{k: v for k, v in m.items() if k != "recall@1_by_type"}}
            for s, m in results["retrieval"].items()]
    md = [f"# Demo data baselines\n\ncorpus: {results['corpus_size']} passages\n",
          "## Off-the-shelf minilm retrieval (query = question, doc = title. text, cosine)\n",
          markdown_table(rows)]
    if "test" in results["retrieval"]:
        by = results["retrieval"]["test"]["recall@1_by_type"]
        md += ["\nRecall@1 on test by question type:\n",
               markdown_table([{"type": k, "recall@1": v} for k, v in by.items()])]
    if results["reader"]:
        r = results["reader"]
        rows = []
        for proto in ("letter", "cloze"):
            for k, v in r[proto].items():
                rows.append({"protocol": proto, "setting": k, "n": v["n"], "accuracy": v["accuracy"],
                             **{f"share {x}": v["pred_share"][x] for x in LETTERS}})
        md += [f"\n## smollm2-135m reader on {r['split']} (chance {r['chance']:.2f})\n",
               "letter: plain prompt with the options listed, argmax of the next-token logits of \" A\"..\" D\" "
               "after `Answer:`. cloze: chat template with the question (and context) but no option list, argmax "
               "of log p(option text) as the reply. closed_book: no passage; oracle: the gold passage; "
               "retrieved@1: minilm's top passage. share X: how often letter X is predicted.\n",
               markdown_table(rows)]
    (out_dir / "demo_baselines.md").write_text("\n".join(md))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench/demo_baselines", help="output folder")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    ap.add_argument("--no-reader", action="store_true", help="skip the smollm2-135m reader")
    ap.add_argument("--batch-size", type=int, default=16, help="reader batch size")
    ap.add_argument("--precision", default="auto", help="reader weights: auto (bf16 only where native), fp32, bf16")
    args = ap.parse_args(argv)
    res = run(Path(args.out), splits=args.splits, reader=not args.no_reader, batch_size=args.batch_size,
              precision=args.precision)
    print((Path(args.out) / "demo_baselines.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
