"""Easy Data Augmentation (EDA) for text classification.

The four operations of Wei & Zou, "EDA: Easy Data Augmentation Techniques for Boosting Performance
on Text Classification Tasks", EMNLP 2019 (https://aclanthology.org/D19-1670), on one sentence
(a str) at a time:

    synonym_replacement  replace n random non-stop words with a random synonym
    random_insertion     insert a random synonym of a random non-stop word, n times
    random_swap          swap two random words, n times
    random_deletion      delete each word with probability p (at least one word stays)
    eda                  num_aug augmented sentences mixing the four

Randomness. Every call draws from a counter-based generator (NumPy's Philox) keyed by
``(seed, index)``: sentence ``index`` gets the same result whatever else is processed, in
whatever order, batch or worker, and another seed or index gives another draw. Pass each
sentence its position in the data set (``eda(s, seed=seed, index=i)``) and change the seed for a
new draw (``seed=base_seed + epoch``). Each function has its own stream, so
``random_swap(s, seed=0)`` and ``random_deletion(s, seed=0)`` are not correlated.

Tokens. A sentence is split into words (runs of letters and digits, with inner apostrophes and
hyphens: "don't", "well-known", "42", and with their combining marks and zero-width joiners:
"cafe\u0301", "हिंदी") and punctuation marks (every other non-space character),
and the whitespace before each token is remembered. Only words are replaced, inserted, swapped
or deleted; punctuation marks are never moved, swapped or deleted and the original spacing is
kept, so "Hello, big world!" can become "Hello, large world!" or "Hello, world!", never
"Hello world ,!".

Stop words (``STOP_WORDS``: the English list EDA uses, plus contractions such as "don't") are
never replaced and never used as insertion sources; swap and deletion treat them like any other
word, as in the paper.

Case. Words are looked up in lower case (with "’" read as "'"). A replacement takes the replaced
word's pattern: "Big" -> "Large", "BIG" -> "LARGE", "big" -> "large". Inserted words are written
as the synonym source gives them (lower case for the built-in table); swapped words keep theirs.

Synonyms. ``synonyms=None`` uses the table shipped in ``fastreg.augment.synonyms`` (about 700
common English words). Also accepted: a mapping ``{word: [synonym, ...]}`` with lower-case keys,
a callable ``word -> list of synonyms`` (called with the lower-case word), or ``"wordnet"``:
WordNet through nltk, which must be installed with its corpus (``pip install nltk`` then
``python -m nltk.downloader wordnet``); nothing is ever downloaded at run time.
"""
import numbers
import re
import unicodedata
from collections import namedtuple
from collections.abc import Iterable, Mapping

import numpy as np

from .. import _arrays
from .synonyms import SYNONYMS

__all__ = ["synonym_replacement", "random_insertion", "random_swap", "random_deletion", "eda",
           "STOP_WORDS"]

# The stop-word list of the EDA reference code (NLTK's English list), plus contractions.
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
her hers herself it its itself they them their theirs themselves what which who whom this that
these those am is are was were be been being have has had having do does did doing a an the and
but if or because as until while of at by for with about against between into through during
before after above below to from up down in out on off over under again further then once here
there when where why how all any both each few more most other some such no nor not only own
same so than too very s t can will just don should now
don't doesn't didn't isn't aren't wasn't weren't haven't hasn't hadn't won't wouldn't can't
couldn't shouldn't mustn't i'm you're he's she's it's we're they're i've you've we've they've
i'd you'd he'd she'd we'd they'd i'll you'll he'll she'll we'll they'll that's there's let's
""".split())

# Streams: the same (seed, index) gives unrelated draws in each function.
_STREAMS = {"eda": 0, "synonym_replacement": 1, "random_insertion": 2, "random_swap": 3,
            "random_deletion": 4}

_WORDNET_HINT = ("install nltk with `pip install nltk` and its WordNet corpus with "
                "`python -m nltk.downloader wordnet`")

# A token: the whitespace before it, its text, and whether it is a word (else punctuation).
_Token = namedtuple("_Token", "space text is_word")
_TOKEN_RE = re.compile(r"(\s*)(?:([^\W_]+(?:['’-][^\W_]+)*)|(\S))")


# --- tokens ---------------------------------------------------------------------------------------

def _joins(ch):
    """Whether ``ch`` belongs to the word before it: a combining mark (accents in decomposed
    text, Indic vowel signs and viramas: Unicode category M), or a zero-width (non-)joiner."""
    return ch in "\u200c\u200d" or unicodedata.category(ch)[0] == "M"


def _tokenize(sentence):
    """(tokens, trailing whitespace). Joining ``space + text`` over the tokens, then the trailing
    whitespace, gives back the sentence exactly. A word's combining marks and zero-width
    joiners stay in it, with the letters after them ("cafe\u0301", "हिंदी": one word each)."""
    tokens, end = [], 0
    for m in _TOKEN_RE.finditer(sentence):
        space, word, mark = m.groups()
        end = m.end()
        if not space and tokens and tokens[-1].is_word:
            prev = tokens[-1]
            if (mark is not None and _joins(mark)) or (word is not None and _joins(prev.text[-1])):
                tokens[-1] = _Token(prev.space, prev.text + (word or mark), True)
                continue
        tokens.append(_Token(space, word or mark, word is not None))
    return tokens, sentence[end:]


def _detokenize(tokens, tail):
    return "".join(t.space + t.text for t in tokens) + tail


def _key(word):
    """The form a word is looked up under: lower case, typographic apostrophe as "'"."""
    return word.lower().replace("’", "'")


def _match_case(new, old):
    """``new`` written in the capitalization pattern of ``old`` (UPPER, Title or as is)."""
    if len(old) > 1 and old.isupper():
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


# --- argument checks ------------------------------------------------------------------------------

def _check_sentence(sentence):
    if not isinstance(sentence, str):
        hint = (" (for several sentences, call once per sentence with index=i)"
                if isinstance(sentence, (list, tuple)) else "")
        raise TypeError(f"sentence must be a str, got {type(sentence).__name__}{hint}")


def _check_int(v, name, minimum):
    v = _arrays._scalar(v)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    return int(v)


def _count(n, alpha, num_words):
    """How many changes to make: ``n`` when given, else ``max(1, int(alpha * num_words))`` as in
    the paper, and 0 when alpha is 0 (the operation is then the identity)."""
    alpha = _arrays.check_probability(alpha, "alpha")
    if n is not None:
        return _check_int(n, "n", 0)
    return max(1, int(alpha * num_words)) if alpha > 0 else 0


def _rng(seed, index, stream):
    """The generator for one sentence: Philox keyed by (seed, index), in its own stream.

    The 128-bit key holds seed (low 64 bits) and index (high 64 bits), so every pair has its own
    sequence; the stream number sits in the top word of the 256-bit counter, which a sentence's
    few hundred draws never reach."""
    seed = _arrays.check_uint64(seed, "seed")
    index = _arrays.check_uint64(index, "index")
    return np.random.Generator(np.random.Philox(key=seed | index << 64,
                                                counter=_STREAMS[stream] << 192))


# --- synonyms -------------------------------------------------------------------------------------

def _wordnet():
    """A lookup word -> synonyms from nltk's WordNet; ImportError saying how to install it."""
    try:
        from nltk.corpus import wordnet
    except ImportError as exc:
        raise ImportError(f"synonyms='wordnet' needs nltk, which is not installed: "
                          f"{_WORDNET_HINT}") from exc
    try:
        wordnet.ensure_loaded()
    except LookupError:
        raise ImportError(f"synonyms='wordnet': nltk's WordNet corpus is not installed "
                          f"(it is never downloaded at run time): {_WORDNET_HINT}") from None

    def lookup(word):
        return [lemma.name().replace("_", " ") for synset in wordnet.synsets(word)
                for lemma in synset.lemmas()]
    return lookup


def _synonym_source(synonyms):
    """A function lower-case word -> list of distinct synonyms (never the word itself)."""
    if synonyms is None:
        lookup = SYNONYMS.get
    elif isinstance(synonyms, str):
        if synonyms != "wordnet":
            raise ValueError(f"synonyms must be None, a mapping, a callable or 'wordnet', "
                             f"got {synonyms!r}")
        lookup = _wordnet()
    elif isinstance(synonyms, Mapping):
        lookup = synonyms.get
    elif callable(synonyms):
        lookup = synonyms
    else:
        raise TypeError("synonyms must be None, a mapping {word: [synonym, ...]}, a callable "
                        f"word -> list of synonyms, or 'wordnet'; got {type(synonyms).__name__}")
    cache = {}

    def synonyms_of(word):
        if word not in cache:
            found = lookup(word)
            found = [] if found is None else found
            if isinstance(found, str) or not isinstance(found, Iterable):
                raise TypeError(f"synonyms of {word!r} must be a list of str, got {found!r}")
            unordered = isinstance(found, (set, frozenset))
            found = list(found)
            if not all(isinstance(s, str) for s in found):
                raise TypeError(f"synonyms of {word!r} must be a list of str, got {found!r}")
            if unordered:
                found.sort()  # a set's order changes from run to run: sort it
            cleaned = (s.strip() for s in found)
            cache[word] = list(dict.fromkeys(s for s in cleaned if s and s.lower() != word))
        return cache[word]
    return synonyms_of


def _candidates(tokens, synonyms_of):
    """Positions of the words that may be replaced or serve as insertion sources: words that are
    not stop words and have at least one synonym."""
    return [i for i, t in enumerate(tokens) if t.is_word and _key(t.text) not in STOP_WORDS
            and synonyms_of(_key(t.text))]


# --- the four operations, on token lists (they return a new list) ---------------------------------

def _replace(tokens, n, rng, synonyms_of):
    # As in the reference code: n distinct words, each replaced at all of its occurrences.
    at = {}   # word key -> the positions of its occurrences (one scan: linear in the text)
    for i, t in enumerate(tokens):
        if t.is_word:
            at.setdefault(_key(t.text), []).append(i)
    words = list(dict.fromkeys(_key(tokens[i].text) for i in _candidates(tokens, synonyms_of)))
    out = list(tokens)
    for w in rng.permutation(len(words))[:n]:
        word = words[w]
        options = synonyms_of(word)
        new = options[rng.integers(len(options))]
        for i in at[word]:
            out[i] = out[i]._replace(text=_match_case(new, tokens[i].text))
    return out


def _insert(tokens, n, rng, synonyms_of):
    sources = _candidates(tokens, synonyms_of)
    if not sources:
        return list(tokens)
    # the text as a prefix of non-words, then one group per word: the word and the non-words
    # after it; an insertion before the k-th word is then one list insert (linear overall, where
    # rebuilding the word positions at each insertion was quadratic)
    first = next(i for i, t in enumerate(tokens) if t.is_word)
    groups = []
    for t in tokens[first:]:
        if t.is_word:
            groups.append([t])
        else:
            groups[-1].append(t)
    for _ in range(n):
        options = synonyms_of(_key(tokens[sources[rng.integers(len(sources))]].text))
        new = options[rng.integers(len(options))]
        # before a random word (as in the paper); the new word takes that word's spacing
        k = rng.integers(len(groups))
        word = groups[k][0]
        groups[k][0] = word._replace(space=" ")
        groups.insert(k, [_Token(word.space, new, True)])
    return list(tokens[:first]) + [t for g in groups for t in g]


def _swap(tokens, n, rng):
    words = [i for i, t in enumerate(tokens) if t.is_word]
    out = list(tokens)
    if len(words) < 2:
        return out
    for _ in range(n):
        i, j = (words[k] for k in rng.choice(len(words), size=2, replace=False))
        out[i], out[j] = out[i]._replace(text=out[j].text), out[j]._replace(text=out[i].text)
    return out


def _delete(tokens, p, rng):
    words = [i for i, t in enumerate(tokens) if t.is_word]
    if not words:
        return list(tokens)
    drop = set(np.asarray(words)[rng.random(len(words)) < p].tolist())
    if len(drop) == len(words):  # keep one word at random, as in the paper
        drop.discard(words[rng.integers(len(words))])
    out, space = [], None
    for i, t in enumerate(tokens):
        if i in drop:
            space = t.space if space is None else space  # a deleted run's leading whitespace
            continue
        if space is not None and t.space:  # "a big, cat" -> "a, cat" but "big cat" -> "cat"
            t = t._replace(space=space)
        out.append(t)
        space = None
    return out


# --- public functions -----------------------------------------------------------------------------

def synonym_replacement(sentence, n=None, *, alpha=0.1, seed, index=0, synonyms=None):
    """Replace ``n`` random non-stop words of a sentence with a random synonym (EDA's SR).

    Parameters
    ----------
    sentence : str
    n : int >= 0, optional
        Number of distinct words to replace; default ``max(1, int(alpha * num_words))`` (0 when
        ``alpha`` is 0), num_words counting word tokens only. Fewer are replaced when fewer words
        have synonyms.
    alpha : float in [0, 1]
        Fraction of the words to replace when ``n`` is not given.
    seed : int in [0, 2**64)
    index : int in [0, 2**64)
        The sentence's index: the draw depends only on ``(seed, index)``.
    synonyms : None, mapping, callable or "wordnet"
        Where synonyms come from (see the module docstring); None: the built-in table.

    Returns
    -------
    str
        The sentence with the chosen words replaced (every occurrence of a chosen word gets the
        same synonym), each in the case pattern of the word it replaces; punctuation, stop words
        and spacing unchanged.

    Raises
    ------
    TypeError
        sentence not a str; n not an integer; a synonym source returning something other than a
        list of str.
    ValueError
        alpha outside [0, 1] or NaN; n negative; seed or index not an integer in [0, 2**64);
        synonyms an unknown string.
    ImportError
        synonyms="wordnet" without nltk or its WordNet corpus.

    Notes
    -----
    Wei & Zou, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text
    Classification Tasks", EMNLP 2019, operation SR.
    """
    _check_sentence(sentence)
    tokens, tail = _tokenize(sentence)
    n = _count(n, alpha, sum(t.is_word for t in tokens))
    rng = _rng(seed, index, "synonym_replacement")
    return _detokenize(_replace(tokens, n, rng, _synonym_source(synonyms)), tail)


def random_insertion(sentence, n=None, *, alpha=0.1, seed, index=0, synonyms=None):
    """Insert a random synonym of a random non-stop word at a random place, ``n`` times (EDA's RI).

    Parameters
    ----------
    sentence : str
    n : int >= 0, optional
        Number of insertions; default ``max(1, int(alpha * num_words))`` (0 when ``alpha`` is 0).
    alpha : float in [0, 1]
        Insertions per word of the sentence when ``n`` is not given.
    seed : int in [0, 2**64)
    index : int in [0, 2**64)
        The sentence's index: the draw depends only on ``(seed, index)``.
    synonyms : None, mapping, callable or "wordnet"
        Where synonyms come from; None: the built-in table.

    Returns
    -------
    str
        The sentence with the new words, each placed before a random word (never inside or
        after a run of punctuation) and taking that word's leading whitespace. Unchanged when
        no non-stop word has a synonym.

    Raises
    ------
    TypeError, ValueError, ImportError
        As in ``synonym_replacement``.

    Notes
    -----
    Wei & Zou, EMNLP 2019, operation RI. Sources are the non-stop words of the original
    sentence that have synonyms (a word occurring twice is twice as likely); inserted words are
    written as the synonym source gives them (lower case for the built-in table).
    """
    _check_sentence(sentence)
    tokens, tail = _tokenize(sentence)
    n = _count(n, alpha, sum(t.is_word for t in tokens))
    rng = _rng(seed, index, "random_insertion")
    return _detokenize(_insert(tokens, n, rng, _synonym_source(synonyms)), tail)


def random_swap(sentence, n=None, *, alpha=0.1, seed, index=0):
    """Swap two random words of a sentence, ``n`` times (EDA's RS).

    Parameters
    ----------
    sentence : str
    n : int >= 0, optional
        Number of swaps; default ``max(1, int(alpha * num_words))`` (0 when ``alpha`` is 0).
    alpha : float in [0, 1]
        Swaps per word of the sentence when ``n`` is not given.
    seed : int in [0, 2**64)
    index : int in [0, 2**64)
        The sentence's index: the draw depends only on ``(seed, index)``.

    Returns
    -------
    str
        The sentence with words swapped (two distinct positions each time; with fewer than two
        words, unchanged). Words move with their own capitalization; punctuation marks and the
        whitespace stay where they were.

    Raises
    ------
    TypeError
        sentence not a str; n not an integer.
    ValueError
        alpha outside [0, 1] or NaN; n negative; seed or index not an integer in [0, 2**64).

    Notes
    -----
    Wei & Zou, EMNLP 2019, operation RS. Stop words are swapped like any other word.
    """
    _check_sentence(sentence)
    tokens, tail = _tokenize(sentence)
    n = _count(n, alpha, sum(t.is_word for t in tokens))
    return _detokenize(_swap(tokens, n, _rng(seed, index, "random_swap")), tail)


def random_deletion(sentence, p=0.1, *, seed, index=0):
    """Delete each word of a sentence with probability ``p``, keeping at least one (EDA's RD).

    Parameters
    ----------
    sentence : str
    p : float in [0, 1]
        Deletion probability of each word; 0 returns the sentence unchanged.
    seed : int in [0, 2**64)
    index : int in [0, 2**64)
        The sentence's index: the draw depends only on ``(seed, index)``.

    Returns
    -------
    str
        The remaining words in their order, with every punctuation mark kept. When every word
        was drawn for deletion, one of them chosen at random stays. A deleted word's whitespace
        passes to the next token if that one had whitespace before it ("The big, red cat" can
        become "The, red cat" or "big, red cat"); a sentence without words is returned as is.

    Raises
    ------
    TypeError
        sentence not a str.
    ValueError
        p outside [0, 1] or NaN; seed or index not an integer in [0, 2**64).

    Notes
    -----
    Wei & Zou, EMNLP 2019, operation RD. Stop words are deleted like any other word.
    """
    _check_sentence(sentence)
    p = _arrays.check_probability(p, "p")
    tokens, tail = _tokenize(sentence)
    return _detokenize(_delete(tokens, p, _rng(seed, index, "random_deletion")), tail)


def eda(sentence, *, alpha_sr=0.1, alpha_ri=0.1, alpha_rs=0.1, p_rd=0.1, num_aug=9, seed,
        index=0, synonyms=None, include_original=False):
    """``num_aug`` augmented versions of a sentence, mixing the four EDA operations.

    Parameters
    ----------
    sentence : str
    alpha_sr, alpha_ri, alpha_rs : float in [0, 1]
        Strength of synonym replacement, random insertion and random swap: each makes
        ``max(1, int(alpha * num_words))`` changes. 0 leaves that operation out.
    p_rd : float in [0, 1]
        Deletion probability of random deletion; 0 leaves it out.
    num_aug : int >= 1
        Number of augmented sentences wanted: ``min(num_aug, k * (num_aug // 4 + 1))`` are
        returned, k being the number of enabled operations, so exactly ``num_aug`` with all
        four enabled (see Notes).
    seed : int in [0, 2**64)
    index : int in [0, 2**64)
        The sentence's index: the result depends only on ``(seed, index)`` (and the arguments).
    synonyms : None, mapping, callable or "wordnet"
        Where synonyms come from; None: the built-in table.
    include_original : bool
        Also append the original sentence at the end of the list (the reference code always
        does); default False.

    Returns
    -------
    list of str
        ``min(num_aug, k * (num_aug // 4 + 1))`` augmented sentences (one more with the
        original appended). Some may equal the original sentence or each other, e.g. when no
        word has a synonym.

    Raises
    ------
    TypeError
        sentence not a str; num_aug not an integer; include_original not a bool; a synonym
        source returning something other than a list of str.
    ValueError
        an alpha or p_rd outside [0, 1] or NaN; all four of them 0; num_aug < 1; seed or index
        not an integer in [0, 2**64); synonyms an unknown string.
    ImportError
        synonyms="wordnet" without nltk or its WordNet corpus.

    Notes
    -----
    Wei & Zou, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text
    Classification Tasks", EMNLP 2019. The counts follow the authors' reference code
    (``eda.py``): each enabled operation (alpha or p_rd > 0) makes ``num_aug // 4 + 1``
    sentences (``num_new_per_technique = int(num_aug/4)+1``), the pool is shuffled and its
    first ``num_aug`` are kept; each augmented sentence comes from one operation applied to
    the original. With all four operations the pool always exceeds ``num_aug``; with an
    operation disabled the pool may be smaller, and then, as in the reference code, fewer
    than ``num_aug`` sentences come back (e.g. one operation and ``num_aug=9``: 3).
    """
    _check_sentence(sentence)
    strengths = [_arrays.check_probability(v, name) for v, name in
                 ((alpha_sr, "alpha_sr"), (alpha_ri, "alpha_ri"), (alpha_rs, "alpha_rs"),
                  (p_rd, "p_rd"))]
    num_aug = _check_int(num_aug, "num_aug", 1)
    if not isinstance(include_original, (bool, np.bool_)):
        raise TypeError(f"include_original must be a bool, got {type(include_original).__name__}")
    if not any(strengths):
        raise ValueError("eda: alpha_sr, alpha_ri, alpha_rs and p_rd are all 0, so there is no "
                         "operation to apply")
    rng = _rng(seed, index, "eda")
    synonyms_of = _synonym_source(synonyms)
    tokens, tail = _tokenize(sentence)
    num_words = sum(t.is_word for t in tokens)
    def n_of(alpha):
        return max(1, int(alpha * num_words))
    ops = [lambda a: _replace(tokens, n_of(a), rng, synonyms_of),
           lambda a: _insert(tokens, n_of(a), rng, synonyms_of),
           lambda a: _swap(tokens, n_of(a), rng),
           lambda p: _delete(tokens, p, rng)]
    enabled = [(op, s) for op, s in zip(ops, strengths) if s > 0]
    per_op = num_aug // 4 + 1     # the reference code's num_new_per_technique
    pool = [_detokenize(op(s), tail) for op, s in enabled for _ in range(per_op)]
    out = [pool[i] for i in rng.permutation(len(pool))[:num_aug]]
    return out + [sentence] if include_original else out
