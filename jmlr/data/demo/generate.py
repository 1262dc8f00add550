"""Deterministic generator of jmlr's bundled demo data: an invented drug formulary and an MCQ set on it.

Everything here is fictional and written by this script: drug names are built from syllables, conditions
combine invented eponyms with ordinary anatomical modifiers, enzymes, antidotes and drug classes are made
up, and each drug gets random facts. No pretrained model can know these facts, so a closed-book reader
sits near chance, while a reader given the right passage can copy the answer from it.

The corpus holds one short passage per (drug, relation) fact, plus interaction passages (one per drug
pair) and background passages about conditions, enzyme families and drug classes. Distractors share
vocabulary on purpose: drugs of one class share a name suffix and an enzyme family, some drugs have
near-identical names ("Tremazol" / "Tramazol"), and conditions differ only by modifier ("hepatic Varnell
syndrome" / "renal Varnell syndrome"). Questions paraphrase the passage instead of quoting it.

Regenerate (byte-identical output for the same seed)::

    python -m jmlr.data.demo.generate --out jmlr/data/demo

Only the standard library is used (``random.Random`` with a fixed seed, ``json``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jmlr.core.fs import atomic_file
from jmlr.data.types import LETTERS  # every question has four options: LETTERS[:4]

SEED = 20240611
N_CLASSES = 20
DRUGS_PER_CLASS = 13
N_CONDITION_BASES = 50
SPLIT_SIZES = {"train": 600, "dev": 100, "test": 150}
MIN_WORDS, MAX_WORDS = 25, 60

# --------------------------------------------------------------------------------------------------
# Vocabulary. Word pieces are ours; combinations are random.
# --------------------------------------------------------------------------------------------------
ONSETS = ["b", "br", "c", "cl", "d", "dr", "f", "fl", "g", "gr", "h", "k", "kl", "l", "m", "n", "p",
          "pl", "pr", "qu", "r", "s", "sk", "st", "t", "tr", "v", "z"]
VOWELS = ["a", "e", "i", "o", "u"]
CODAS = ["l", "m", "n", "r", "s", "v", "x", "st", "lt", "nd", "rm", "sk", "lv", "rt", "mb", "nt"]
DRUG_SUFFIXES = ["azol", "arin", "imide", "oxan", "uprant", "ecline", "olast", "ivane", "aprine", "etrex",
                 "odine", "amab", "itrol", "efone", "astin", "oquin", "elmid", "avire", "ostan", "ipone"]
CLASS_TARGETS = ["torvane", "melkine", "quellar", "brassoid", "dravenic", "pellinic", "sarkine", "vostral",
                 "hemmic", "trulane", "calvoid", "nestrine", "ordane", "faustic", "grellin", "plovane",
                 "zentric", "kaldric", "morvane", "issetic"]
CLASS_KINDS = ["receptor antagonist", "channel blocker", "receptor agonist", "reuptake inhibitor",
               "pathway modulator"]
ANTIDOTE_SUFFIXES = ["tide", "bind", "fab", "sorb", "lex"]
ENZYME_STEMS_PER_CLASS = 2
ENZYME_VARIANTS = ("1", "2", "3")

DISEASE_KINDS = ["syndrome", "disease", "fever", "anemia", "myopathy", "dystrophy", "palsy",
                 "storage disorder"]
BASE_ENDINGS = ["ell", "ek", "ard", "ow", "ani", "ing", "et", "orn"]
DISEASE_NATURE = ["a rare inherited disorder of connective tissue", "an uncommon immune disorder",
                  "a disorder of cellular energy metabolism", "a slowly progressive storage disorder",
                  "an inflammatory disorder of small blood vessels", "a rare disorder of ion transport",
                  "a recurrent autoinflammatory illness", "a disorder of protein folding"]

# modifier used in passages -> paraphrases used in questions ("{b}" is the base name).
MODIFIERS = {
    "hepatic": ["{b} of liver origin", "{b} affecting the liver"],
    "renal": ["{b} of kidney origin", "{b} affecting the kidneys"],
    "cardiac": ["{b} affecting the heart", "{b} involving the heart"],
    "pulmonary": ["{b} affecting the lungs", "{b} involving the lungs"],
    "cutaneous": ["{b} affecting the skin", "{b} confined to the skin"],
    "ocular": ["{b} affecting the eyes", "{b} involving the eye"],
    "congenital": ["{b} present from birth", "inborn {b}"],
    "juvenile": ["{b} beginning in childhood", "childhood-onset {b}"],
    "acute": ["{b} of sudden onset", "sudden-onset {b}"],
    "chronic": ["long-standing {b}", "{b} that has lasted for years"],
    "relapsing": ["{b} that keeps coming back", "recurrent {b}"],
    "neonatal": ["{b} in a newborn", "{b} of the newborn"],
}

# adverse effects (passages and options use the first form).
ADVERSE_EFFECTS = ["neutropenia", "hepatotoxicity", "ototoxicity", "nephrotoxicity", "peripheral neuropathy",
                   "QT prolongation", "thrombocytopenia", "hyperkalemia", "hypoglycemia", "bradycardia",
                   "pancreatitis", "photosensitivity", "tinnitus", "lactic acidosis", "myopathy",
                   "agranulocytosis", "cardiotoxicity", "pulmonary fibrosis", "hemorrhagic cystitis",
                   "seizures", "hypotension", "angioedema", "optic neuritis", "hyponatremia", "alopecia",
                   "mucositis", "hypothyroidism", "bone marrow suppression"]
ORGANS = ["liver", "kidneys", "lungs", "intestinal wall", "spleen", "skeletal muscle", "skin", "placenta"]
DOSE_MG = [2, 5, 10, 20, 25, 40, 50, 80, 100, 150, 200, 250, 400, 500]
DOSE_FREQ = ["once daily", "twice daily", "three times daily", "every other day", "once weekly"]
ROUTES = ["by mouth", "by slow intravenous infusion", "by subcutaneous injection", "as an oral solution"]

RELATIONS = ["contraindication", "mechanism", "indication", "adverse_effect", "antidote", "organ",
             "interaction"]
REVERSIBLE = {"contraindication", "indication", "antidote"}  # facts unique per value: ask both ways

# --------------------------------------------------------------------------------------------------
# Passage templates: {D} drug, {cls} class, {c} condition, {e} enzyme, {a} effect, {x} antidote,
# {o} organ, {P} partner drug. Each fact sentence is followed by an elaboration and padding.
# --------------------------------------------------------------------------------------------------
FACT_TEMPLATES = {
    "contraindication": [
        "{D} is contraindicated in patients with {c}, in whom it can provoke a severe crisis.",
        "{D} must not be used in {c}, because the drug worsens the underlying disorder.",
        "Patients with {c} should never be treated with {D}, since serious harm has been reported.",
    ],
    "mechanism": [
        "{D} acts by inhibiting {e}, which lowers the output of the pathway that {e} controls.",
        "The main action of {D} is selective blockade of {e}.",
        "{D} binds to {e} and switches off its activity, and this explains its clinical effect.",
    ],
    "indication": [
        "{D} is the first-line treatment for {c}, and most patients respond within weeks.",
        "In {c}, {D} is the recommended initial therapy.",
        "Guidelines name {D} as the drug of first choice for {c}.",
    ],
    "adverse_effect": [
        "The dose-limiting toxicity of {D} is {a}, which should be checked for at every visit.",
        "Higher doses of {D} are restricted by {a}, the adverse effect that limits its use.",
        "With {D}, {a} is the adverse effect that sets the maximum tolerated dose.",
    ],
    "antidote": [
        "An overdose of {D} is treated with {x}, a specific antidote that binds the free drug.",
        "The effects of {D} can be reversed rapidly by giving {x}.",
        "{x} is the specific reversal agent for {D} and is kept in emergency departments.",
    ],
    "organ": [
        "{D} is metabolised mainly in the {o}, and only traces are excreted unchanged.",
        "Clearance of {D} depends chiefly on the {o}.",
        "Most of each dose of {D} is broken down in the {o}.",
    ],
    "interaction": [
        "{D} should not be combined with {P}, because together the two drugs raise the risk of {a}.",
        "Taking {D} with {P} is dangerous: the combination can cause {a}.",
        "{D} and {P} interact, and giving them together may lead to {a}.",
    ],
}
CLASS_SENTENCES = ["{D} is {a_cls}.", "{D} belongs to the {cls} class.", "{D} is one of the {cls_pl}."]
DOSE_SENTENCES = ["It is given {route} at {mg} mg {freq}.", "The usual adult dose is {mg} mg {freq}.",
                  "It is supplied as {mg} mg tablets taken {freq}.", "It is usually given {route}."]
EXTRA_SENTENCES = ["Prescribers should review the label before starting treatment.",
                   "Treatment is usually started in a specialist clinic.",
                   "Blood counts and kidney function are checked before the first dose.",
                   "Patients are advised to carry a card that names the medicine.",
                   "Elderly patients often need a lower starting dose.",
                   "The drug is not recommended during pregnancy."]

# --------------------------------------------------------------------------------------------------
# Question templates: forward questions name the drug; reverse questions name the value (paraphrased).
# --------------------------------------------------------------------------------------------------
FORWARD_Q = {
    "contraindication": [
        "In which condition should {D} be avoided?",
        "{D} must not be prescribed to a patient who has which disorder?",
        "Which disease is a reason to withhold {D}?",
        "A doctor should not give {D} to a patient with which condition?",
    ],
    "mechanism": [
        "Which enzyme does {D} block?",
        "{D} produces its effect by acting on which enzyme?",
        "What is the molecular target of {D}?",
        "Through inhibition of which enzyme does {D} work?",
    ],
    "indication": [
        "{D} is the preferred starting treatment for which condition?",
        "For which disorder is {D} the usual first choice?",
        "Which illness is {D} mainly used to treat first?",
        "Doctors reach for {D} first when treating which disease?",
    ],
    "adverse_effect": [
        "Which side effect restricts how much {D} can be given?",
        "What problem prevents the dose of {D} from being raised further?",
        "Which toxicity caps the amount of {D} a patient can receive?",
        "Increasing the dose of {D} is mainly limited by which adverse reaction?",
    ],
    "antidote": [
        "Which agent is used to counteract an overdose of {D}?",
        "Poisoning with {D} is reversed by which agent?",
        "If a patient takes too much {D}, which antidote should be given?",
        "What is given to undo the effects of {D}?",
    ],
    "organ": [
        "Which organ or tissue is mainly responsible for clearing {D}?",
        "Where in the body is {D} chiefly broken down?",
        "{D} is eliminated mostly by which organ or tissue?",
        "The metabolism of {D} takes place mainly in which part of the body?",
    ],
    "interaction": [
        "Which drug should not be taken together with {D}?",
        "Giving {D} alongside which other medicine is hazardous?",
        "{D} has a dangerous interaction with which drug?",
        "A patient on {D} must avoid which other medicine?",
    ],
}
REVERSE_Q = {
    "contraindication": [
        "A patient with {cp} should not receive which drug?",
        "Which agent is unsafe for someone with {cp}?",
        "Which medicine must be avoided in {cp}?",
        "Which drug should be withheld from a patient who has {cp}?",
    ],
    "indication": [
        "Which drug is the preferred starting treatment for {cp}?",
        "A patient newly diagnosed with {cp} should usually be started on which drug?",
        "What is the treatment of first choice for {cp}?",
        "Which medicine do doctors reach for first in {cp}?",
    ],
    "antidote": [
        "{x} is given to reverse poisoning by which drug?",
        "Which drug's toxic effects can be undone with {x}?",
        "An overdose of which drug is treated with {x}?",
        "{x} is the antidote for which medicine?",
    ],
}


# --------------------------------------------------------------------------------------------------
# Entities
# --------------------------------------------------------------------------------------------------
@dataclass
class Condition:
    base: str
    modifier: str

    @property
    def name(self) -> str:
        return f"{self.modifier} {self.base}"


@dataclass
class Drug:
    name: str
    cls: int
    family: int
    facts: dict = field(default_factory=dict)  # relation -> value (Condition / str)


@dataclass
class Passage:
    id: str
    title: str
    text: str
    relation: str | None = None      # None for background passages
    drug: str | None = None
    value: str | None = None         # answer entity (verbatim in text)
    partner: str | None = None       # interaction partner


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _plural(kind: str) -> str:
    return kind + "s"


def _a(phrase: str) -> str:
    """``phrase`` with its indefinite article ("a torvane ...", "an ordane ...")."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


class _Names:
    """Unique invented names (nothing repeated across entity types)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def stem(self) -> str:
        r = self.rng
        return r.choice(ONSETS) + r.choice(VOWELS) + r.choice(CODAS)

    def take(self, name: str) -> bool:
        key = name.lower()
        if key in self.used:
            return False
        self.used.add(key)
        return True


def _vowel_variants(stem: str, rng: random.Random, n: int) -> list[str]:
    """Stems differing from ``stem`` by one vowel ("trem" -> "tram", "trom")."""
    pos = [i for i, ch in enumerate(stem) if ch in VOWELS]
    out: list[str] = []
    if n <= 0:
        return out
    for v in rng.sample(VOWELS, len(VOWELS)):
        i = pos[0]
        cand = stem[:i] + v + stem[i + 1:]
        if cand != stem and cand not in out:
            out.append(cand)
        if len(out) == n:
            break
    return out


def build_world(rng: random.Random):
    """Invent classes, drugs (with near-name families), conditions, enzymes, antidotes and facts."""
    names = _Names(rng)
    classes = []
    for i in range(N_CLASSES):
        kind = CLASS_KINDS[i % len(CLASS_KINDS)]
        classes.append({"name": f"{CLASS_TARGETS[i]} {kind}", "plural": f"{CLASS_TARGETS[i]} {_plural(kind)}",
                        "suffix": DRUG_SUFFIXES[i], "enzymes": []})
    # enzyme families: each class owns ENZYME_STEMS_PER_CLASS stems, each with 3 numbered variants.
    enzymes = []
    for c in classes:
        while len(c["enzymes"]) < ENZYME_STEMS_PER_CLASS * len(ENZYME_VARIANTS):
            stem = names.stem()
            if not names.take(stem + "ase"):
                continue
            fam = [f"{stem}ase-{v}" for v in ENZYME_VARIANTS]
            c["enzymes"].extend(fam)
            enzymes.append(fam)
    # drugs: families of 1-3 near-identical names within a class.
    drugs: list[Drug] = []
    fam_id = 0
    for ci, c in enumerate(classes):
        members: list[Drug] = []
        while len(members) < DRUGS_PER_CLASS:
            size = min(rng.choice([1, 1, 2, 2, 3]), DRUGS_PER_CLASS - len(members))
            stem = names.stem()
            stems = [stem] + _vowel_variants(stem, rng, size - 1)
            cands = [_cap(s + c["suffix"]) for s in stems]
            if any(x.lower() in names.used for x in cands):
                continue
            for x in cands:
                names.take(x)
                members.append(Drug(x, ci, fam_id))
            fam_id += 1
        drugs.extend(members)
    assert len(drugs) == N_CLASSES * DRUGS_PER_CLASS and len(drugs) % 2 == 0
    # conditions: invented eponyms x kinds x anatomical modifiers.
    bases = []
    while len(bases) < N_CONDITION_BASES:
        eponym = _cap(names.stem() + rng.choice(BASE_ENDINGS))
        if not names.take(eponym):
            continue
        bases.append({"name": f"{eponym} {rng.choice(DISEASE_KINDS)}", "nature": rng.choice(DISEASE_NATURE)})
    conditions = [Condition(b["name"], m) for b in bases for m in MODIFIERS]
    # antidotes: one distinct agent per drug.
    antidotes: list[str] = []
    while len(antidotes) < len(drugs):
        x = _cap(names.stem() + rng.choice(VOWELS) + rng.choice(ANTIDOTE_SUFFIXES))
        if names.take(x):
            antidotes.append(x)
    # facts. Contraindications and indications are unique within their relation (so reverse questions
    # have one answer); a condition may be one drug's indication and another's contraindication.
    contra = rng.sample(conditions, len(drugs))
    indic_pool = [c for c in conditions]
    rng.shuffle(indic_pool)
    for i, d in enumerate(drugs):
        d.facts["contraindication"] = contra[i]
    for d in drugs:  # never the same condition as the drug's own contraindication
        j = next(k for k, c in enumerate(indic_pool) if c.name != d.facts["contraindication"].name)
        d.facts["indication"] = indic_pool.pop(j)
    rng.shuffle(antidotes)
    for i, d in enumerate(drugs):
        d.facts["mechanism"] = rng.choice(classes[d.cls]["enzymes"])
        d.facts["adverse_effect"] = rng.choice(ADVERSE_EFFECTS)
        d.facts["antidote"] = antidotes[i]
        d.facts["organ"] = rng.choice(ORGANS)
    # interactions: a random perfect matching of drugs (each drug in exactly one pair).
    order = list(range(len(drugs)))
    rng.shuffle(order)
    pairs = []
    for a, b in zip(order[0::2], order[1::2]):
        pairs.append((drugs[a], drugs[b], rng.choice(ADVERSE_EFFECTS)))
        drugs[a].facts["interaction"] = drugs[b].name
        drugs[b].facts["interaction"] = drugs[a].name
    return classes, drugs, bases, conditions, enzymes, antidotes, pairs


# --------------------------------------------------------------------------------------------------
# Passages
# --------------------------------------------------------------------------------------------------
def _words(text: str) -> int:
    return len(text.split())


def _pad(rng: random.Random, sentences: list[str], extra: list[str]) -> str:
    """Add padding sentences (in a random order) until the passage has at least MIN_WORDS words."""
    pool = list(extra)
    rng.shuffle(pool)
    while _words(" ".join(sentences)) < MIN_WORDS and pool:
        sentences.append(pool.pop())
    return " ".join(sentences)


def _dose_sentence(rng: random.Random) -> str:
    return rng.choice(DOSE_SENTENCES).format(route=rng.choice(ROUTES), mg=rng.choice(DOSE_MG),
                                             freq=rng.choice(DOSE_FREQ))


def drug_passage(rng: random.Random, d: Drug, cls: dict, relation: str, value: str,
                 partner: str | None = None, effect: str | None = None) -> str:
    fact = rng.choice(FACT_TEMPLATES[relation]).format(D=d.name, c=value, e=value, a=effect or value, x=value,
                                                       o=value, P=partner)
    fact = _cap(fact)
    cls_s = rng.choice(CLASS_SENTENCES).format(D=d.name, cls=cls["name"], a_cls=_a(cls["name"]),
                                               cls_pl=cls["plural"])
    sents = [cls_s, fact] if rng.random() < 0.5 else [fact, cls_s.replace(d.name, "It", 1)]
    extra = [_dose_sentence(rng)] + rng.sample(EXTRA_SENTENCES, 2)
    return _pad(rng, sents, extra)


def build_passages(rng: random.Random, world) -> list[Passage]:
    classes, drugs, bases, conditions, enzymes, antidotes, pairs = world
    out: list[Passage] = []
    for d in drugs:
        cls = classes[d.cls]
        for rel in ["contraindication", "mechanism", "indication", "adverse_effect", "antidote", "organ"]:
            v = d.facts[rel]
            v = v.name if isinstance(v, Condition) else v
            out.append(Passage("", d.name, drug_passage(rng, d, cls, rel, v), rel, d.name, v))
    for a, b, effect in pairs:
        text = drug_passage(rng, a, classes[a.cls], "interaction", b.name, partner=b.name, effect=effect)
        out.append(Passage("", f"{a.name} and {b.name}", text, "interaction", a.name, b.name, partner=b.name))
    # background passages (never name a drug's fact): conditions, enzyme families, classes.
    for b in bases:
        mods = rng.sample(list(MODIFIERS), 3)
        text = (f"{b['name']} is {b['nature']}. It is described in {mods[0]}, {mods[1]} and {mods[2]} forms, "
                f"and the {mods[0]} form is the most common. Diagnosis rests on the clinical picture and "
                f"specialist testing, and treatment depends on which organs are involved.")
        out.append(Passage("", b["name"], text))
    for fam in enzymes:
        cls = next(c for c in classes if fam[0] in c["enzymes"])
        text = (f"The enzymes {fam[0]}, {fam[1]} and {fam[2]} are closely related members of one family. "
                f"They share most of their structure but differ in the tissues where they are found. "
                f"Several {cls['plural']} act on members of this family.")
        out.append(Passage("", fam[0].rsplit("-", 1)[0], text))
    for ci, c in enumerate(classes):
        members = [d.name for d in drugs if d.cls == ci]
        shown = rng.sample(members, 3)
        text = (f"The {c['plural']} form a class of invented medicines whose names end in -{c['suffix']}. "
                f"Members include {shown[0]}, {shown[1]} and {shown[2]}. They differ in their uses, "
                f"their adverse effects and the way the body clears them.")
        out.append(Passage("", _cap(c["plural"]), text))
    rng.shuffle(out)
    width = len(str(len(out)))
    for i, p in enumerate(out):
        p.id = f"demo-{i:0{width}d}"
    for p in out:
        n = _words(p.text)
        if not MIN_WORDS <= n <= MAX_WORDS:
            raise AssertionError(f"passage {p.id} has {n} words, expected {MIN_WORDS}-{MAX_WORDS}: {p.text!r}")
    return out


# --------------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------------
def _mentions(text: str, entity: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(entity) + r"(?![\w-])", text, flags=re.IGNORECASE) is not None


def _pick_distractors(rng: random.Random, answer: str, preferred: list[str], pool: list[str],
                      banned_texts: list[str], n_preferred: int = 1, key=lambda x: x) -> list[str]:
    """Three distinct entities of the answer's type: up to ``n_preferred`` from ``preferred`` (same class or
    same disease), the rest from ``pool``; none may appear in any of ``banned_texts`` (the passages about
    the subject). Options have distinct ``key`` (a drug's name family, an enzyme's family): near-identical
    names make the corpus hard for the retriever, but as options they would only test the small reader's
    spelling."""
    def ok(x: str, chosen: list[str]) -> bool:
        if key(x) in {key(y) for y in [answer, *chosen]}:
            return False
        return not any(_mentions(t, x) for t in banned_texts)

    chosen: list[str] = []
    pref = list(preferred)
    rng.shuffle(pref)
    for x in pref:
        if len(chosen) == n_preferred:
            break
        if ok(x, chosen):
            chosen.append(x)
    tries = 0
    while len(chosen) < 3:
        x = rng.choice(pool)
        tries += 1
        if ok(x, chosen):
            chosen.append(x)
        if tries > 10000:
            raise AssertionError(f"cannot find distractors for {answer!r}")
    return chosen


def build_questions(rng: random.Random, world, passages: list[Passage]) -> dict[str, list[dict]]:
    classes, drugs, bases, conditions, enzymes, antidotes, pairs = world
    by_name = {d.name: d for d in drugs}
    about: dict[str, list[str]] = {}  # drug -> texts of every passage that names it
    for p in passages:
        for d in drugs_named(p, by_name):
            about.setdefault(d, []).append(p.text)
    # option pools hold only entities the corpus mentions (an option never seen anywhere is a giveaway).
    used = {r: {d.facts[r].name if isinstance(d.facts[r], Condition) else d.facts[r] for d in drugs}
            for r in RELATIONS}
    cond_names = [c.name for c in conditions if c.name in used["contraindication"] | used["indication"]]
    effects = [a for a in ADVERSE_EFFECTS if a in used["adverse_effect"]]
    organs = [o for o in ORGANS if o in used["organ"]]
    drug_names = [d.name for d in drugs]

    def family_of(name: str) -> int:
        return by_name[name].family

    def same_class_drugs(d: Drug) -> list[str]:  # same suffix, different stem
        return [x.name for x in drugs if x.cls == d.cls and x.family != d.family]

    def same_base_conditions(c: str) -> list[str]:
        base = c.split(" ", 1)[1]
        return [x for x in cond_names if x != c and x.endswith(" " + base)]

    def enzyme_family(name: str) -> str:
        return name.rsplit("-", 1)[0]

    specs = []
    for p in passages:
        if p.relation is None:
            continue
        dirs = ["forward", "reverse"] if p.relation in REVERSIBLE else ["forward"]
        if p.relation == "interaction":
            dirs = ["forward", "forward_partner"]
        specs.append((p, rng.choice(dirs)))
    # choose an equal number of questions per relation, then stratify the splits by relation.
    total = sum(SPLIT_SIZES.values())
    per_rel = {r: total // len(RELATIONS) for r in RELATIONS}
    for r in RELATIONS[: total - sum(per_rel.values())]:
        per_rel[r] += 1
    chosen = []
    for r in RELATIONS:
        group = [s for s in specs if s[0].relation == r]
        rng.shuffle(group)
        chosen.extend(group[: per_rel[r]])
    pattern = (["train"] * 12 + ["dev"] * 2 + ["test"] * 3)  # 600:100:150
    assert sum(SPLIT_SIZES.values()) % len(pattern) == 0
    split_of = [pattern[i % len(pattern)] for i in range(len(chosen))]

    questions: dict[str, list[dict]] = {s: [] for s in SPLIT_SIZES}
    for (p, direction), split in zip(chosen, split_of):
        rel = p.relation
        d = by_name[p.drug]
        if direction == "forward" or direction == "forward_partner":
            subject = d if direction == "forward" else by_name[p.partner]
            answer = p.value if direction == "forward" else d.name
            q = rng.choice(FORWARD_Q[rel]).format(D=subject.name)
            banned = about[subject.name]
            if rel in ("contraindication", "indication"):
                opts = _pick_distractors(rng, answer, same_base_conditions(answer), cond_names, banned)
            elif rel == "mechanism":
                opts = _pick_distractors(rng, answer, [], [e for fam in enzymes for e in fam], banned,
                                         key=enzyme_family)
            elif rel == "adverse_effect":
                opts = _pick_distractors(rng, answer, [], effects, banned)
            elif rel == "antidote":
                opts = _pick_distractors(rng, answer, [], antidotes, banned)
            elif rel == "organ":
                opts = _pick_distractors(rng, answer, [], organs, banned)
            else:  # interaction: answer is the other drug of the pair
                opts = _pick_distractors(rng, answer, same_class_drugs(by_name[answer]), drug_names,
                                         banned + [p.text], key=family_of)
            subject_name = subject.name
        else:  # reverse: the value is given (paraphrased), the drug is asked
            answer = d.name
            v = d.facts[rel]
            if isinstance(v, Condition):
                cp = rng.choice(MODIFIERS[v.modifier]).format(b=v.base)
                q = rng.choice(REVERSE_Q[rel]).format(cp=cp)
            else:
                q = _cap(rng.choice(REVERSE_Q[rel]).format(x=v))
            opts = _pick_distractors(rng, answer, same_class_drugs(d), drug_names, [p.text], key=family_of)
            subject_name = p.value
        q = _cap(q)
        questions[split].append({"question": q, "answer_text": answer, "distractors": opts,
                                 "gold": p.id, "relation": rel,
                                 "direction": "reverse" if direction == "reverse" else "forward",
                                 "subject": subject_name})
    # options and balanced answer letters per split.
    out: dict[str, list[dict]] = {}
    for split, qs in questions.items():
        rng.shuffle(qs)  # relations interleaved, so that any prefix of a split is a fair sample
        letters = [LETTERS[i % 4] for i in range(len(qs))]
        rng.shuffle(letters)
        rows = []
        for i, (q, letter) in enumerate(zip(qs, letters)):
            others = list(q["distractors"])
            rng.shuffle(others)
            k = LETTERS.index(letter)
            texts = others[:k] + [q["answer_text"]] + others[k:]
            rows.append({
                "id": f"demo-{split}-{i:04d}",
                "question": q["question"],
                "options": dict(zip(LETTERS, texts)),
                "answer": letter,
                "gold_passage_ids": [q["gold"]],
                "metadata": {"relation": q["relation"], "direction": q["direction"], "subject": q["subject"],
                             "source": "jmlr-demo (invented)"},
            })
        out[split] = rows
    return out


def drugs_named(p: Passage, by_name: dict[str, Drug]) -> list[str]:
    return [w for w in re.findall(r"[A-Z][a-z]+", p.text) if w in by_name]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
def generate(seed: int = SEED) -> tuple[list[dict], dict[str, list[dict]]]:
    """Build the corpus rows and the QA rows per split (pure function of ``seed``)."""
    rng = random.Random(seed)
    world = build_world(rng)
    passages = build_passages(rng, world)
    qa = build_questions(rng, world, passages)
    corpus = [{"id": p.id, "title": p.title, "text": p.text} for p in passages]
    return corpus, qa


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write(out_dir: str | os.PathLike, seed: int = SEED) -> dict[str, int]:
    """Write corpus.jsonl, train.jsonl, dev.jsonl and test.jsonl into ``out_dir``; return their sizes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus, qa = generate(seed)
    _write_jsonl(out / "corpus.jsonl", corpus)
    sizes = {"corpus": len(corpus)}
    for split, rows in qa.items():
        _write_jsonl(out / f"{split}.jsonl", rows)
        sizes[split] = len(rows)
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regenerate jmlr's bundled (invented) demo data.")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent), help="output folder")
    ap.add_argument("--seed", type=int, default=SEED, help="random seed (default: the bundled data's)")
    args = ap.parse_args(argv)
    sizes = write(args.out, args.seed)
    print(" ".join(f"{k}={v}" for k, v in sizes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
