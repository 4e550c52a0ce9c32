"""Near-duplicate detection: MinHash LSH on hand-made texts, SimHash blocking for embeddings."""

from __future__ import annotations

import numpy as np

from fitsense.data import dedup

REQUEST = ("I'm a 34-year-old woman, 168 cm, 61 kg, moderately active, intermediate. Goal: strength. "
           "Equipment: dumbbells, bench. 3 days/week, 45 min/session, max 6 exercises/day. Please write my plan.")
ANSWER = ('{"plan_name":"Strength base","days":[{"day":1,"name":"Upper","exercises":["Dumbbell Bench Press 3x8 '
          'RIR2 90s","One-Arm Dumbbell Row 3x10 RIR2 90s"]},{"day":3,"name":"Lower","exercises":["Goblet Squat '
          '3x8 RIR2 120s","Romanian Deadlift 3x10 RIR2 90s"]}],"notes":"Add reps before load."}')
OTHER_REQUEST = ("I'm a 61-year-old man with hypertension, 180 cm, 92 kg, sedentary, beginner. Goal: general health. "
                 "Equipment: bodyweight, resistance bands. 2 days/week, 30 min/session. My knee hurts on stairs.")
OTHER_ANSWER = ('{"plan_name":"Gentle start","days":[{"day":2,"name":"Full body","exercises":["Wall Push-Up 2x12 '
                'RIR3 60s","Band Pull-Apart 2x15 RIR3 60s"]}],"notes":"Stop if pain rises; see your GP first."}')


def _near(pairs, kinds=None, **kw):
    settings = {"jaccard": 0.8, "cosine": 0.95, "num_perm": 128, "shingle_size": 2, **kw}
    return dedup.deduplicate(pairs, kinds or ["plan_creation"] * len(pairs), "near", **settings)


def test_minhash_drops_near_duplicates_and_keeps_distinct_items():
    near = (REQUEST.replace("Please write my plan.", "Please write my plan!!").upper(), ANSWER)
    same_request_other_answer = (REQUEST, OTHER_ANSWER)
    pairs = [(REQUEST, ANSWER), (OTHER_REQUEST, OTHER_ANSWER), near, same_request_other_answer, (REQUEST, ANSWER)]
    keep, dropped = _near(pairs)
    # the exact copy and the case/punctuation variant go; a different answer to the same request stays
    assert keep == [0, 1, 3]
    assert dropped == {"exact_duplicate": 1, "near_duplicate": 1}


def test_near_duplicates_only_within_a_query_kind():
    pairs = [(REQUEST, ANSWER), (REQUEST + " Thanks", ANSWER)]
    keep, _ = _near(pairs, kinds=["plan_creation", "plan_modification"])
    assert keep == [0, 1]
    keep, _ = _near(pairs)
    assert keep == [0]


def test_minhash_threshold_is_respected():
    edited = (REQUEST.replace("34-year-old woman, 168 cm, 61 kg", "29-year-old man, 181 cm, 77 kg"), ANSWER)
    a, b = dedup.shingles(REQUEST, 2), dedup.shingles(edited[0], 2)
    jaccard = len(a & b) / len(a | b)  # the answers are identical: the request decides
    assert 0.3 < jaccard < 0.8
    assert _near([(REQUEST, ANSWER), edited], jaccard=jaccard - 0.15)[0] == [0]
    assert _near([(REQUEST, ANSWER), edited], jaccard=jaccard + 0.15)[0] == [0, 1]


def test_exact_mode_keeps_near_duplicates():
    pairs = [(REQUEST, ANSWER), (REQUEST + "!", ANSWER), (REQUEST, ANSWER)]
    keep, dropped = dedup.deduplicate(pairs, ["plan_creation"] * 3, "exact", jaccard=0.8, cosine=0.95, num_perm=64,
                                      shingle_size=2)
    assert keep == [0, 1] and dropped == {"exact_duplicate": 1}


def test_embedding_mode_compares_only_rows_sharing_a_block(monkeypatch):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 32))
    near = base[:5] + 0.01 * rng.standard_normal((5, 32))  # five rows nearly parallel to earlier ones
    vectors = np.vstack([base, near])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"example {i}" for i in range(len(vectors))]

    def fake_embed(batch):
        return vectors[[int(t.split()[-1]) for t in batch]]

    monkeypatch.setattr(dedup, "simhash_blocks", _counting_blocks(dedup.simhash_blocks))
    keep, dropped = dedup.deduplicate([(t, "") for t in texts], ["k"] * len(texts), "embedding", jaccard=0.8,
                                      cosine=0.95, num_perm=64, shingle_size=2, embed=fake_embed)
    assert keep == list(range(40)) and dropped == {"embedding_duplicate": 5}
    assert _counting_blocks.pairs < len(texts) * (len(texts) - 1) // 2 / 4  # far fewer than all pairs


def _counting_blocks(real):
    """Wrap simhash_blocks; record how many candidate pairs its buckets allow."""
    def blocks(vectors, seed, **kw):
        keys = real(vectors, seed, **kw)
        pairs = set()
        for band in range(keys.shape[1]):
            by_key: dict[int, list[int]] = {}
            for i, k in enumerate(keys[:, band]):
                by_key.setdefault(int(k), []).append(i)
            pairs |= {(a, b) for rows in by_key.values() for a in rows for b in rows if a < b}
        _counting_blocks.pairs = len(pairs)
        return keys

    return blocks
