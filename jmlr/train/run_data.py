"""What a joint run trains on: the data ``cfg.data`` names, Hugging Face datasets turned into jmlr's types,
and the prompt-length check that runs before the corpus is encoded."""
from __future__ import annotations

import dataclasses
import logging

from jmlr.config import TrainConfig
from jmlr.data import Corpus, load_qa
from jmlr.data.demo import demo_corpus, demo_qa
from jmlr.data.hf import corpus_load_kwargs, is_hf_dataset
from jmlr.reader import Reader
from jmlr.retriever import DualEncoder

logger = logging.getLogger(__name__)

__all__ = ["load_data", "load_models", "from_datasets", "retriever_prefix", "check_prompt_lengths"]


def from_datasets(corpus, train_data, dev_data):
    """Hugging Face datasets in: a Dataset corpus through Corpus.from_hf, Dataset QA through load_qa("hf")."""
    if is_hf_dataset(corpus):
        corpus = Corpus.from_hf(corpus)
    if is_hf_dataset(train_data) or is_hf_dataset(dev_data):
        train_data = load_qa("hf", train_data) if is_hf_dataset(train_data) else train_data
        dev_data = load_qa("hf", dev_data) if is_hf_dataset(dev_data) else dev_data
    return corpus, train_data, dev_data


def retriever_prefix(value, rcfg):
    """A retriever prefix from the config: the value, else the model's prompt (None), or none at all ("")."""
    return value if value is not None else (None if rcfg.model_prompts else "")


def load_models(cfg: TrainConfig, reader_kw: dict):
    """(retriever, reader) named by ``cfg`` (aliases resolve to the bundled offline models); ``reader_kw``: the
    checked loading options of :func:`jmlr.reader.loading.reader_load_kwargs`."""
    r = cfg.retriever
    retriever = DualEncoder.from_pretrained(r.model, shared=r.shared_towers, pooling=r.pooling, normalize=r.normalize,
                                            max_length=r.max_length, query_prefix=retriever_prefix(r.query_prefix, r),
                                            doc_prefix=retriever_prefix(r.doc_prefix, r))
    reader = Reader.from_pretrained(cfg.reader.model, template=cfg.reader.template, max_length=cfg.reader.max_length,
                                    target=cfg.reader.target, gradient_checkpointing=cfg.reader.gradient_checkpointing,
                                    trust_remote_code=cfg.reader.trust_remote_code, **reader_kw)
    return retriever, reader


def load_data(cfg: TrainConfig):
    """(train, dev, test, corpus) named by ``cfg.data`` ('demo' = the bundled demo data)."""
    d = cfg.data

    def qa(src, split):
        if src == "demo":
            ex = demo_qa(split)
        else:
            ex = load_qa(d.format, src, **({"mapping": d.mapping} if d.mapping else {}))
        lim = d.max_train if split == "train" else d.max_eval
        return ex[:lim] if lim else ex

    if d.corpus == "demo":
        corpus = demo_corpus()
    else:
        kw = corpus_load_kwargs(d.corpus_format, d.corpus_mapping, d.corpus) if d.corpus_mapping else {}
        corpus = Corpus.load(d.corpus, fmt=d.corpus_format, **kw)
    return qa(d.train, "train"), qa(d.dev, "dev"), qa(d.test, "test"), corpus


def check_prompt_lengths(reader, examples: list, cfg: TrainConfig, split: str) -> list:
    """Tokenise every question once (question + options + answer, the passages empty) before the corpus is
    encoded. An example that cannot fit ``reader.max_length`` even without passages is refused, naming the
    longest (``data.long_prompts=refuse``), or has its question text cut to fit (``truncate``)."""
    tok = getattr(reader, "tokenizer", None)
    limit = int(getattr(reader, "max_length", 0) or 0)
    if not examples or tok is None or limit <= 0 or not hasattr(reader, "build_prompt"):
        return examples
    # the passages one prompt holds: index.sample_m of the top_k in training when JMLR's sampling is on, top_k
    # when evaluating
    K = cfg.index.sample_m if split == "train" and 0 < cfg.index.sample_m < cfg.index.top_k else cfg.index.top_k
    cap = 32 * limit  # characters: a prefix this long that already overflows needs no full tokenisation

    def count(texts: list[str]) -> list[int]:
        return [len(x) for x in tok([t[:cap] for t in texts], add_special_tokens=False)["input_ids"]]

    def needs(batch: list) -> list[int]:
        prompts, targets = [], []
        for ex in batch:
            prompts.append(reader.build_prompt(ex.question, reader.prompt_options(ex), [""] * K))
            try:
                if getattr(reader, "target", None) == "option_text" and getattr(ex, "options", None):
                    targets.append([reader.target_for(ex, letter=L) for L in ex.options])
                else:
                    targets.append([reader.target_for(ex)])
            except ValueError:  # unlabelled (evaluation only): its answer's length is unknown
                targets.append([""])
        flat = [t for ts in targets for t in ts]
        tl, it = iter(count(flat) if flat else []), []
        for ts in targets:
            it.append(max(next(tl) for _ in ts))
        return [p + t for p, t in zip(count(prompts), it)]

    lengths = needs(examples)
    over = [i for i, n in enumerate(lengths) if n > limit]
    if not over:
        return examples
    worst = max(over, key=lambda i: lengths[i])
    desc = (f"{split} data: {len(over)} of {len(examples)} questions do not fit reader.max_length={limit} even "
            f"without passages; the longest, {examples[worst].id!r}, needs at least {lengths[worst]} tokens "
            "(question + options + answer)")
    if cfg.data.long_prompts != "truncate":
        raise ValueError(desc + "; raise reader.max_length, shorten those questions, or set "
                                "data.long_prompts=truncate to cut them")
    out = list(examples)
    for i in over:
        ex = out[i]
        q = ex.question[:cap]
        enc = tok(q, add_special_tokens=False, return_offsets_mapping=True)
        offsets, n = enc["offset_mapping"], lengths[i]
        keep = len(offsets)
        for _ in range(16):
            keep = max(keep - (n - limit) - 1, 0)
            cut = q[: offsets[keep - 1][1]].rstrip() if keep else ""
            cand = dataclasses.replace(ex, question=cut or "?")
            n = needs([cand])[0]
            if n <= limit or keep == 0:
                break
        if n > limit:
            raise ValueError(f"{split} data: example {ex.id!r} needs {n} tokens for its options and answer alone, "
                             f"more than reader.max_length={limit}; raise reader.max_length")
        out[i] = cand
    logger.warning("%s; data.long_prompts=truncate: cut their question text to fit", desc)
    return out
