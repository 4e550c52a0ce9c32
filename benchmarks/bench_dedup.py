"""MinHash LSH near-duplicate detection against the all-pairs TF-IDF reference it replaced.

Builds a sample (synthetic -> queries -> offline teacher, default 5000 queries) or reads an
existing run, then drops near duplicates two ways on the same exact-deduplicated candidates:

- reference: TF-IDF char n-grams (3-5), each row compared with every earlier kept row of its
  kind, dropped at cosine >= 0.95 (the dataset stage's method before MinHash; quadratic);
- MinHash: ``dataset.dedup=near`` as the stage runs it now (Data-Pipeline/dedup.py).

Prints each method's dropped count and seconds, and the precision and recall of MinHash's
dropped set against the reference's:

    python benchmarks/bench_dedup.py                       # 5000 queries, 2000 users
    python benchmarks/bench_dedup.py --run /tmp/art/s5k    # an existing run folder
    python benchmarks/bench_dedup.py --set dataset.near_dup_jaccard=0.85
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from fitsense.app.pipeline import run_stage
from fitsense.config import load_params
from fitsense.data import dataset, dedup
from fitsense.records import CoachingQuery, TeacherRecord
from fitsense.runs import RunContext, read_jsonl

REFERENCE_COSINE = 0.95


def reference_near_dups(texts: list[str], threshold: float = REFERENCE_COSINE, block: int = 1024) -> list[int]:
    """The replaced method: greedy over all pairs of L2-normalised TF-IDF rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectors = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True).fit_transform(texts)
    n = vectors.shape[0]
    kept = np.zeros(n, dtype=bool)
    dropped = []
    for start in range(0, n, block):
        sim = (vectors[start : start + block] @ vectors.T).toarray()
        for r in range(sim.shape[0]):
            i = start + r
            if (kept[:i] & (sim[r, :i] >= threshold)).any():
                dropped.append(i)
            else:
                kept[i] = True
    return dropped


def candidates(run_dir: Path, require_valid: bool) -> list[dataset.Candidate]:
    queries = read_jsonl(run_dir / "queries" / "queries.jsonl", CoachingQuery)
    records = {r.query_id: r for r in read_jsonl(run_dir / "teacher" / "records.jsonl", TeacherRecord)}
    out = []
    for q in sorted(queries, key=lambda q: q.query_id):
        answer, _ = dataset._validated(q, records.get(q.query_id), require_valid)
        if answer is not None:
            out.append(dataset.Candidate(q, records[q.query_id], answer))
    return out


def compare(cands: list[dataset.Candidate], cfg) -> dict:
    pairs = [(c.user_text, c.answer_text) for c in cands]
    kinds = [c.query.kind for c in cands]
    unique, _ = dedup.deduplicate(pairs, kinds, "exact", jaccard=cfg.near_dup_jaccard, cosine=cfg.near_dup_threshold,
                                  num_perm=cfg.minhash_perm, shingle_size=cfg.shingle_words)
    started = time.perf_counter()
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i in unique:
        by_kind[kinds[i]].append(i)
    reference = set()
    for idx in by_kind.values():
        texts = [dedup.normalise_text("\n".join(pairs[i])) for i in idx]
        reference.update(idx[j] for j in reference_near_dups(texts))
    reference_s = time.perf_counter() - started

    started = time.perf_counter()
    keep, _ = dedup.deduplicate(pairs, kinds, "near", jaccard=cfg.near_dup_jaccard, cosine=cfg.near_dup_threshold,
                                num_perm=cfg.minhash_perm, shingle_size=cfg.shingle_words)
    minhash_s = time.perf_counter() - started
    minhash = set(unique) - set(keep)
    agree = len(minhash & reference)
    return {
        "candidates": len(cands),
        "after_exact_dedup": len(unique),
        "params": {k: getattr(cfg, k) for k in ("near_dup_jaccard", "minhash_perm", "shingle_words")},
        "reference_tfidf_allpairs": {"cosine": REFERENCE_COSINE, "dropped": len(reference),
                                     "seconds": round(reference_s, 2)},
        "minhash_lsh": {"dropped": len(minhash), "seconds": round(minhash_s, 2)},
        "both_dropped": agree,
        "precision": round(agree / len(minhash), 3) if minhash else None,
        "recall": round(agree / len(reference), 3) if reference else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--run", default=None, help="an existing run folder with queries/ and teacher/")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override a param")
    args = parser.parse_args()
    params = load_params(args.params, args.overrides)
    if args.run:
        result = compare(candidates(Path(args.run), params.dataset.require_valid), params.dataset)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
            p = load_params(args.params, [*args.overrides, f"synthetic.n_users={args.users}",
                                          f"queries.n_queries={args.queries}", f"run.artifacts_dir={tmp}",
                                          f"teacher.cache_dir={tmp}/cache", "teacher.provider=offline"])
            ctx = RunContext.create(p, "bench-dedup")
            for stage in ("synthetic", "queries", "teacher"):
                run_stage(ctx, stage)
            result = compare(candidates(ctx.run_dir, p.dataset.require_valid), p.dataset)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
