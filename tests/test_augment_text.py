"""fastreg.augment.text: EDA (Wei & Zou 2019) on sentences, seeded per (seed, index)."""
import ast
import inspect
import math
import random
import re
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastreg.augment import synonyms as synonyms_module
from fastreg.augment.synonyms import SYNONYMS
from fastreg.augment.text import (STOP_WORDS, eda, random_deletion, random_insertion,
                                  random_swap, synonym_replacement)

SENTENCE = ("The quick brown fox jumps over the lazy dog, and the big, happy Dog barked loudly "
            "at a strange noise (near the old river)!")
SENTENCES = ["A quick test.", "The big dog is happy!", "Hello, world!", "She said: \"Try again.\"",
             "Strange things happen in small towns.", "Nothing", "", "!!!",
             "The weather was terrible, but the trip was wonderful."]

WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
TOKEN = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*|\S")


def tokens(s):
    return TOKEN.findall(s)


def words(s):
    return [t for t in tokens(s) if WORD.fullmatch(t)]


def marks(s):
    return [t for t in tokens(s) if not WORD.fullmatch(t)]


def spacing(s):
    return re.findall(r"\s+", s)


def is_subsequence(small, big):
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


def all_ops(sentence, seed, index=0, **kw):
    return [synonym_replacement(sentence, seed=seed, index=index, **kw),
            random_insertion(sentence, seed=seed, index=index, **kw),
            random_swap(sentence, seed=seed, index=index),
            random_deletion(sentence, seed=seed, index=index),
            tuple(eda(sentence, seed=seed, index=index, **kw))]


# --- reproducibility ------------------------------------------------------------------------------

def test_same_seed_and_index_give_the_same_output():
    assert all_ops(SENTENCE, 3, 5) == all_ops(SENTENCE, 3, 5)


def test_other_seed_or_index_gives_another_draw():
    by_seed = {tuple(eda(SENTENCE, seed=s, num_aug=4)) for s in range(10)}
    by_index = {tuple(eda(SENTENCE, seed=0, index=i, num_aug=4)) for i in range(10)}
    assert len(by_seed) == 10 and len(by_index) == 10
    for fn in (synonym_replacement, random_insertion, random_swap, random_deletion):
        assert len({fn(SENTENCE, seed=s) for s in range(10)}) > 5, fn.__name__
        assert len({fn(SENTENCE, seed=0, index=i) for i in range(10)}) > 5, fn.__name__


def test_functions_draw_from_separate_streams():
    # the same (seed, index) does not make swap and deletion pick the same positions
    swaps = [random_swap("a b c d e f g h", n=1, seed=s) for s in range(20)]
    deletions = [random_deletion("a b c d e f g h", 0.5, seed=s) for s in range(20)]
    assert swaps == [random_swap("a b c d e f g h", n=1, seed=s) for s in range(20)]
    assert len(set(swaps)) > 10 and len(set(deletions)) > 10


def test_output_per_index_does_not_depend_on_order_or_batching():
    def run(order):
        return {i: all_ops(SENTENCES[i], 11, i) for i in order}

    n = len(SENTENCES)
    in_order = run(range(n))
    assert run(reversed(range(n))) == in_order
    shuffled = list(range(n))
    random.Random(0).shuffle(shuffled)
    assert run(shuffled) == in_order
    batches = {}
    for start in range(0, n, 2):  # batches of two, the last batch first
        batches.update(run(range(start, min(start + 2, n))))
    assert batches == in_order
    assert run([3]) == {3: in_order[3]}


def test_global_random_state_is_neither_used_nor_changed():
    np.random.seed(1)
    random.seed(1)
    expected = (np.random.random(), random.random())
    np.random.seed(1)
    random.seed(1)
    out = all_ops(SENTENCE, 0)
    assert (np.random.random(), random.random()) == expected
    np.random.seed(2)
    random.seed(2)
    assert all_ops(SENTENCE, 0) == out


# --- properties over many seeds -------------------------------------------------------------------

VOCAB = sorted(SYNONYMS)[::7] + ["the", "a", "is", "and", "of", "not", "don't", "it's", "Dog",
                                  "BIG", "Happy", "zebra", "42"]
piece = st.tuples(st.sampled_from(["", "(", "\""]), st.sampled_from(VOCAB),
                  st.sampled_from(["", "", "", ",", ".", "!", "?", ")", "...", ";", "\""]))
sentences = st.lists(piece, min_size=1, max_size=15).map(
    lambda ps: " ".join(pre + w + post for pre, w, post in ps))
seeds = st.integers(0, 2**64 - 1)
indices = st.integers(0, 2**64 - 1)


def is_stop(word):
    return word.lower().replace("’", "'") in STOP_WORDS


@settings(max_examples=100, deadline=None)
@given(sentences, seeds, indices, st.integers(0, 6))
def test_synonym_replacement_touches_only_non_stop_words_and_uses_the_table(s, seed, index, n):
    out = synonym_replacement(s, n, seed=seed, index=index)
    before, after = tokens(s), tokens(out)
    assert len(after) == len(before) and spacing(out) == spacing(s)
    changed = set()
    for old, new in zip(before, after):
        if new != old:
            assert WORD.fullmatch(old) and not is_stop(old), (old, new)
            assert new.lower() in SYNONYMS[old.lower()], (old, new)
            assert new == (new.upper() if len(old) > 1 and old.isupper() else
                           new[:1].upper() + new[1:] if old[0].isupper() else new)
            changed.add(old.lower())
    assert len(changed) <= n
    replaceable = {w.lower() for w in words(s) if not is_stop(w) and w.lower() in SYNONYMS}
    assert len(changed) == min(n, len(replaceable))


@settings(max_examples=100, deadline=None)
@given(sentences, seeds, st.integers(0, 6))
def test_random_insertion_adds_synonyms_of_the_sentence_and_keeps_the_rest(s, seed, n):
    out = random_insertion(s, n, seed=seed)
    assert marks(out) == marks(s)
    assert is_subsequence(tokens(s), tokens(out))
    sources = [w.lower() for w in words(s) if not is_stop(w) and w.lower() in SYNONYMS]
    added = Counter(words(out)) - Counter(words(s))
    assert sum(added.values()) == (n if sources else 0)
    allowed = {syn for w in sources for syn in SYNONYMS[w]}
    assert set(added) <= allowed


@settings(max_examples=100, deadline=None)
@given(sentences, seeds, st.integers(0, 6))
def test_random_swap_moves_words_only(s, seed, n):
    out = random_swap(s, n, seed=seed)
    before, after = tokens(s), tokens(out)
    assert spacing(out) == spacing(s) and len(after) == len(before)
    assert [t for t in after if not WORD.fullmatch(t)] == [t for t in before
                                                            if not WORD.fullmatch(t)]
    for old, new in zip(before, after):  # punctuation stays at its position
        assert bool(WORD.fullmatch(old)) == bool(WORD.fullmatch(new))
    assert Counter(words(out)) == Counter(words(s))


@settings(max_examples=100, deadline=None)
@given(sentences, seeds, st.floats(0, 1))
def test_random_deletion_keeps_punctuation_and_at_least_one_word(s, seed, p):
    out = random_deletion(s, p, seed=seed)
    assert marks(out) == marks(s)
    assert is_subsequence(words(out), words(s))
    assert len(words(out)) >= 1


@settings(max_examples=40, deadline=None)
@given(sentences, seeds, st.integers(1, 12))
def test_eda_outputs_keep_punctuation(s, seed, num_aug):
    out = eda(s, seed=seed, num_aug=num_aug)
    assert len(out) == num_aug
    for a in out:
        assert marks(a) == marks(s)


# --- the operations' details ----------------------------------------------------------------------

def test_spacing_and_punctuation_are_kept():
    assert synonym_replacement("Hello, big world!", n=2, seed=0) in {
        f"Hello, {b} {w}!" for b in SYNONYMS["big"] for w in SYNONYMS["world"]}
    assert random_swap("Hello, world!", n=1, seed=0) == "world, Hello!"
    assert {random_deletion("Hello, big world!", 0.5, seed=s) for s in range(40)} == {
        "Hello, big world!", "Hello, big!", "Hello, world!", ", big world!", "Hello,!",
        ", big!", ", world!"}
    s = "  Tabs\tand\nnewlines:  big   happy dog.\n"
    for out in (synonym_replacement(s, 2, seed=1), random_swap(s, 2, seed=1)):
        assert spacing(out) == spacing(s) and out != s
    out = random_insertion(s, 1, seed=1)  # the new word comes with one space
    assert sorted(spacing(out)) == sorted(spacing(s) + [" "])


def test_insertion_spacing():
    out = random_insertion("(big)", n=1, seed=0)
    assert out in {f"({w} big)" for w in SYNONYMS["big"]}
    out = random_insertion("Big dog.", n=1, seed=3)
    assert re.fullmatch(r"(\w+ )?Big (\w+ )?dog\.", out) and len(words(out)) == 3


def test_case_pattern_of_replaced_words():
    table = {"cat": ["feline"], "sat": ["perched"]}
    assert synonym_replacement("Cat CAT cat sat.", n=1, seed=0, synonyms={"cat": ["feline"]}) \
        == "Feline FELINE feline sat."
    assert synonym_replacement("The CAT sat", n=2, seed=0, synonyms=table) == "The FELINE perched"


def test_unicode_words_and_apostrophes():
    table = {"café": ["bistro"], "don't": ["never"]}
    assert synonym_replacement("Le café!", n=1, seed=0, synonyms=table) == "Le bistro!"
    # stop words (here contractions, either apostrophe) are never replaced
    for s in ("I don't know", "I don’t know"):
        assert synonym_replacement(s, n=3, seed=0, synonyms=table) == s
    assert words("well-known rock'n'roll") == ["well-known", "rock'n'roll"]


def test_every_occurrence_of_a_replaced_word_gets_the_same_synonym():
    for seed in range(20):
        out = synonym_replacement("big dog and big cat and Big bird", n=1, seed=seed,
                                  synonyms={"big": ["large", "huge", "vast"]})
        new = {w.lower() for w in words(out)} - {"dog", "and", "cat", "bird"}
        assert len(new) == 1


def test_zero_strength_is_the_identity():
    for s in SENTENCES + [SENTENCE]:
        assert synonym_replacement(s, alpha=0, seed=1) == s
        assert random_insertion(s, alpha=0, seed=1) == s
        assert random_swap(s, alpha=0, seed=1) == s
        assert random_deletion(s, 0, seed=1) == s
        assert synonym_replacement(s, 0, seed=1) == random_swap(s, 0, seed=1) == s


def test_default_count_follows_the_paper():
    s = "big " * 25  # 25 words: alpha 0.1 -> int(2.5) = 2 swaps, 0.01 -> max(1, 0) = 1
    assert len(words(random_insertion(s, alpha=0.1, seed=0))) == 27
    assert len(words(random_insertion(s, alpha=0.01, seed=0))) == 26
    assert len(words(random_insertion(s, alpha=1.0, seed=0))) == 50


def test_deletion_with_p_one_keeps_exactly_one_word():
    for seed in range(30):
        out = random_deletion(SENTENCE, 1.0, seed=seed)
        assert len(words(out)) == 1 and marks(out) == marks(SENTENCE)
    assert random_deletion("Hello!", 1.0, seed=0) == "Hello!"


def test_sentences_without_words_are_returned_as_is():
    for s in ("", "   ", "!!!", "-- ..."):
        assert all_ops(s, 0)[:4] == [s] * 4
        assert eda(s, seed=0, num_aug=3) == [s] * 3


def test_no_synonyms_no_change():
    s = "Zebras xylophone quirkily."
    assert synonym_replacement(s, 3, seed=0) == random_insertion(s, 3, seed=0) == s


# --- eda ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_aug", [1, 2, 3, 4, 5, 8, 9, 16])
def test_eda_returns_num_aug_sentences(num_aug):
    assert len(eda(SENTENCE, seed=0, num_aug=num_aug)) == num_aug
    out = eda(SENTENCE, seed=0, num_aug=num_aug, include_original=True)
    assert len(out) == num_aug + 1 and out[-1] == SENTENCE
    assert out[:-1] == eda(SENTENCE, seed=0, num_aug=num_aug)


def _kind(a):
    """Which EDA operation made sentence ``a`` from SENTENCE (p_rd high enough to delete)."""
    w, n = words(a), len(words(SENTENCE))
    if len(w) > n:
        return "ri"
    if len(w) < n:
        return "rd"
    return "rs" if Counter(w) == Counter(words(SENTENCE)) else "sr"


@pytest.mark.parametrize("num_aug", [1, 2, 3, 4, 5, 7, 8, 9, 12, 16])
def test_eda_counts_follow_the_reference_code(num_aug):
    # eda.py: num_new_per_technique = int(num_aug/4)+1 per enabled operation, shuffled, trimmed
    per_op = int(num_aug / 4) + 1
    for enabled in ("sr", "ri", "rs", "rd"), ("rs",), ("sr", "rd"), ("ri", "rs", "rd"):
        strengths = {name: (0.3 if name[-2:] in enabled else 0.0)
                     for name in ("alpha_sr", "alpha_ri", "alpha_rs", "p_rd")}
        strengths["p_rd"] = 0.5 if "rd" in enabled else 0.0
        out = eda(SENTENCE, seed=3, num_aug=num_aug, **strengths)
        assert len(out) == min(num_aug, len(enabled) * per_op), (enabled, num_aug)
        kinds = Counter(_kind(a) for a in out)
        assert set(kinds) <= set(enabled)
        assert all(c <= per_op for c in kinds.values()), kinds
        if len(enabled) * per_op <= num_aug:     # the whole pool comes back
            assert kinds == {k: per_op for k in enabled}


def test_eda_skips_disabled_operations():
    only_swap = eda(SENTENCE, alpha_sr=0, alpha_ri=0, p_rd=0, seed=0, num_aug=9)
    assert len(only_swap) == 3              # 9 // 4 + 1 from the one operation (reference code)
    for a in only_swap:
        assert Counter(words(a)) == Counter(words(SENTENCE)) and a != SENTENCE
    only_delete = eda(SENTENCE, alpha_sr=0, alpha_ri=0, alpha_rs=0, p_rd=0.3, seed=0, num_aug=5)
    for a in only_delete:
        assert is_subsequence(words(a), words(SENTENCE)) and len(words(a)) < len(words(SENTENCE))
    only_replace = eda(SENTENCE, alpha_ri=0, alpha_rs=0, p_rd=0, seed=0, num_aug=5)
    for a in only_replace:
        assert len(tokens(a)) == len(tokens(SENTENCE)) and a != SENTENCE


def test_eda_mixes_the_four_operations():
    # num_aug=15: 15 // 4 + 1 = 4 sentences per operation, 16 in the pool, one dropped
    kinds = Counter(_kind(a) for a in eda(SENTENCE, seed=0, num_aug=15, p_rd=0.5))
    assert sum(kinds.values()) == 15 and set(kinds) == {"sr", "ri", "rs", "rd"}
    assert sorted(kinds.values()) == [3, 4, 4, 4]


# --- synonym sources ------------------------------------------------------------------------------

def test_user_mapping():
    table = {"cat": ["feline", "kitty"], "dog": ("hound",), "sat": {"perched", "rested"}}
    outs = {synonym_replacement("The cat sat.", n=1, seed=s, synonyms=table) for s in range(30)}
    assert outs == {"The feline sat.", "The kitty sat.", "The cat perched.", "The cat rested."}
    assert random_insertion("A dog", n=1, seed=0, synonyms=table) in {"hound A dog",
                                                                       "A hound dog"}
    # a word's own name and duplicates are dropped
    assert synonym_replacement("cat", 1, seed=0, synonyms={"cat": ["Cat", "cat", ""]}) == "cat"


def test_user_callable_gets_the_lower_case_word():
    seen = []

    def lookup(word):
        seen.append(word)
        return [word[::-1]] if word != "the" else ["xyz"]
    out = synonym_replacement("The Stressed dog", n=2, seed=0, synonyms=lookup)
    assert out == "The Desserts god"
    assert "stressed" in seen and "dog" in seen
    assert synonym_replacement("a b", 2, seed=0, synonyms=lambda w: None) == "a b"


def test_set_valued_synonyms_do_not_depend_on_set_order():
    # a set's iteration order changes with PYTHONHASHSEED; it is read in sorted order
    syns = {"a1", "b2", "c3", "d4", "e5", "f6"}
    for seed in range(10):
        assert synonym_replacement("cat", seed=seed, synonyms={"cat": syns}) == \
            synonym_replacement("cat", seed=seed, synonyms={"cat": sorted(syns)})


def test_bad_synonym_sources():
    with pytest.raises(ValueError, match="synonyms"):
        synonym_replacement("a cat", seed=0, synonyms="thesaurus")
    with pytest.raises(TypeError, match="synonyms"):
        synonym_replacement("a cat", seed=0, synonyms=42)
    with pytest.raises(TypeError, match="'cat'.*list of str"):
        synonym_replacement("a cat", seed=0, synonyms={"cat": "feline"})
    with pytest.raises(TypeError, match="'cat'.*list of str"):
        synonym_replacement("a cat", seed=0, synonyms=lambda w: [1, 2])


def _fake_nltk(monkeypatch, wordnet):
    nltk = types.ModuleType("nltk")
    corpus = types.ModuleType("nltk.corpus")
    corpus.wordnet = wordnet
    nltk.corpus = corpus
    monkeypatch.setitem(sys.modules, "nltk", nltk)
    monkeypatch.setitem(sys.modules, "nltk.corpus", corpus)


def test_wordnet_without_nltk_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)  # makes `import nltk` fail
    monkeypatch.setitem(sys.modules, "nltk.corpus", None)
    for call in (lambda: synonym_replacement("a cat", seed=0, synonyms="wordnet"),
                 lambda: random_insertion("a cat", seed=0, synonyms="wordnet"),
                 lambda: eda("a cat", seed=0, synonyms="wordnet")):
        with pytest.raises(ImportError, match=r"pip install nltk.*python -m nltk\.downloader "
                                              r"wordnet"):
            call()


def test_wordnet_without_its_corpus_says_how_to_install(monkeypatch):
    class Missing:
        def ensure_loaded(self):
            raise LookupError("Resource wordnet not found.")
    _fake_nltk(monkeypatch, Missing())
    with pytest.raises(ImportError, match=r"corpus.*python -m nltk\.downloader wordnet"):
        synonym_replacement("a cat", seed=0, synonyms="wordnet")


def test_wordnet_lemmas_are_used(monkeypatch):
    lemma = types.SimpleNamespace
    synset = types.SimpleNamespace

    class FakeWordNet:
        def ensure_loaded(self):
            pass

        def synsets(self, word):
            if word != "cat":
                return []
            return [synset(lemmas=lambda: [lemma(name=lambda: "cat"),
                                           lemma(name=lambda: "true_cat")])]
    _fake_nltk(monkeypatch, FakeWordNet())
    assert synonym_replacement("A cat!", seed=0, synonyms="wordnet") == "A true cat!"


def test_real_wordnet():
    pytest.importorskip("nltk")
    from nltk.corpus import wordnet
    try:
        wordnet.ensure_loaded()
    except LookupError:
        pytest.skip("nltk's WordNet corpus is not installed")
    out = synonym_replacement("The car is fast", n=1, seed=0, synonyms="wordnet")
    assert out != "The car is fast" and out.startswith("The ")


# --- the built-in table and stop words ------------------------------------------------------------

def test_builtin_table_is_clean():
    assert len(SYNONYMS) >= 300
    for word, syns in SYNONYMS.items():
        assert WORD.fullmatch(word) and word == word.lower(), word
        assert word not in STOP_WORDS, word
        assert syns and len(set(syns)) == len(syns) and word not in syns, word
        for s in syns:
            assert WORD.fullmatch(s) and s == s.lower(), (word, s)
    # no key written twice (a dict literal would silently keep the last one)
    tree = ast.parse(Path(synonyms_module.__file__).read_text())
    keys = [k.value for node in ast.walk(tree) if isinstance(node, ast.Dict) for k in node.keys]
    assert len(keys) == len(set(keys)) == len(SYNONYMS)


def test_stop_words_include_the_eda_list():
    for w in ("i", "the", "and", "is", "was", "not", "very", "don", "don't", "it's"):
        assert w in STOP_WORDS


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["a list"]])
def test_sentence_must_be_a_str(bad):
    for fn in (synonym_replacement, random_insertion, random_swap, random_deletion, eda):
        with pytest.raises(TypeError, match="sentence must be a str"):
            fn(bad, seed=0)
    with pytest.raises(TypeError, match="index=i"):
        eda(["a", "b"], seed=0)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, math.inf])
def test_strengths_must_be_in_unit_interval(bad):
    for fn in (synonym_replacement, random_insertion, random_swap):
        with pytest.raises(ValueError, match="alpha"):
            fn("a cat", alpha=bad, seed=0)
    with pytest.raises(ValueError, match="^p "):
        random_deletion("a cat", bad, seed=0)
    for name in ("alpha_sr", "alpha_ri", "alpha_rs", "p_rd"):
        with pytest.raises(ValueError, match=name):
            eda("a cat", seed=0, **{name: bad})


def test_other_bad_arguments():
    with pytest.raises(TypeError, match="alpha"):
        random_swap("a b", alpha="0.1", seed=0)
    with pytest.raises(ValueError, match="n must be"):
        random_swap("a b", -1, seed=0)
    with pytest.raises(TypeError, match="n must be"):
        random_swap("a b", 1.5, seed=0)
    with pytest.raises(ValueError, match="num_aug"):
        eda("a b", seed=0, num_aug=0)
    with pytest.raises(TypeError, match="num_aug"):
        eda("a b", seed=0, num_aug=2.0)
    with pytest.raises(TypeError, match="include_original"):
        eda("a b", seed=0, include_original="yes")
    with pytest.raises(ValueError, match="all 0"):
        eda("a b", seed=0, alpha_sr=0, alpha_ri=0, alpha_rs=0, p_rd=0)
    with pytest.raises(TypeError):
        eda("a b")  # seed is required


@pytest.mark.parametrize("name", ["seed", "index"])
@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, "7", True, None])
def test_seed_and_index_must_be_uint64(name, bad):
    kw = {"seed": 0, name: bad}
    for fn in (synonym_replacement, random_insertion, random_swap, random_deletion, eda):
        with pytest.raises(ValueError, match=f"{name} must be an integer in \\[0, 2\\*\\*64\\)"):
            fn("a cat", **kw)


def test_numpy_integers_are_accepted():
    assert eda(SENTENCE, seed=np.uint64(2**64 - 1), index=np.int32(4), num_aug=np.int64(3)) \
        == eda(SENTENCE, seed=2**64 - 1, index=4, num_aug=3)
    assert random_deletion(SENTENCE, np.float32(0.25), seed=1) == random_deletion(SENTENCE, 0.25,
                                                                                 seed=1)


# --- the public surface ---------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [synonym_replacement, random_insertion, random_swap,
                                random_deletion, eda], ids=lambda f: f.__name__)
def test_docstrings(fn):
    doc = inspect.getdoc(fn)
    for section in ("Parameters\n----------", "Returns\n-------", "Raises\n------",
                    "Notes\n-----"):
        assert section in doc, (fn.__name__, section)
    assert "Wei & Zou" in doc
    for name in inspect.signature(fn).parameters:
        assert re.search(rf"^{name}\b|, {name}\b", doc, re.M), (fn.__name__, name)


def test_import_loads_neither_numba_nor_nltk():
    code = ("import sys, fastreg.augment.text; "
            "bad = [m for m in ('numba', 'nltk', 'cffi') if m in sys.modules]; "
            "assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_combining_marks_stay_in_their_words():
    """Decomposed accents, Indic vowel signs and zero-width joiners are part of the word: a
    swap or deletion moves or drops whole words (found by review: marks became punctuation)."""
    from fastreg.augment import text as T
    assert [t.text for t in T._tokenize("हिंदी")[0]] == ["हिंदी"]
    assert [t.text for t in T._tokenize("cafe\u0301 noir, ok")[0]] == ["cafe\u0301", "noir", ",",
                                                                       "ok"]
    assert [t.text for t in T._tokenize("می\u200cخواهم")[0]] == ["می\u200cخواهم"]
    assert T.random_swap("cafe\u0301 noir", seed=0, index=0) in ("noir cafe\u0301",
                                                                  "cafe\u0301 noir")
    words = set("मैं हिंदी बोलता हूँ".split())
    for i in range(10):
        out = T.random_swap("मैं हिंदी बोलता हूँ", seed=0, index=i, n=1)
        assert set(out.split()) == words
        left = T.random_deletion("cafe\u0301 noir", 0.5, seed=0, index=i)
        assert set(left.split()) <= {"cafe\u0301", "noir"} and left


def test_long_texts_take_linear_time():
    """Insertion and replacement scale with the text (a 20,000-word text: about 0.2 s for eda's
    four variants here, 3 s before, when each insertion rebuilt the word positions); the result
    is a function of the seed alone. No wall-clock threshold: the number of words checks it."""
    words = ("the quick brown fox jumps over the lazy dog while a happy child watches " * 1430)
    text = words.strip()
    a = eda(text, seed=3, num_aug=4)
    b = eda(text, seed=3, num_aug=4)
    assert a == b and len(a) == 4
    n = len(text.split())
    ins = random_insertion(text, seed=3)
    assert len(ins.split()) == n + max(1, int(0.1 * n))
