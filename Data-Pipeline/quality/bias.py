"""Bias slicing: how each slice is represented per split, and how well the teacher serves it.

Representation comes from the split files. Teacher quality per slice comes
from the teacher records joined to their query's slice tags: validity rate
(status ok with a schema-valid answer), constraint adherence (valid and no
violations) and referral rate. A slice value is flagged when its share of a
split is below ``min_slice_share`` or when its validity / adherence is more
than ``max_quality_gap`` below the overall rate (with at least
``MIN_SUPPORT`` records, so one odd record does not raise a flag).
Representation flags look at the whole dataset and the train split.
"""

from __future__ import annotations

import pandas as pd

from fitsense.records import SLICE_TAGS

MIN_SUPPORT = 10
# Representation is flagged on the whole dataset and on train; val/test are small, so their shares
# are reported (and charted) but a missing value there is expected noise, not a gate input.
FLAGGED_SPLITS = ("all", "train")
QUALITY_METRICS = ("validity", "adherence")


def _quality_frame(teacher: pd.DataFrame, queries: pd.DataFrame) -> pd.DataFrame:
    cols = ["query_id", *[f"slice_{t}" for t in SLICE_TAGS]]
    frame = teacher.merge(queries[cols].drop_duplicates("query_id"), on="query_id", how="left")
    valid = (frame["status"] == "ok") & frame["schema_valid"].fillna(False).astype(bool)
    frame["validity"] = valid.astype(float)
    frame["adherence"] = (valid & (frame["n_violations"] == 0)).astype(float)
    frame["referral"] = frame["answer_referral"].astype(float)
    return frame


def slice_report(splits: pd.DataFrame, teacher: pd.DataFrame, queries: pd.DataFrame,
                 min_share: float, max_gap: float) -> dict:
    quality = _quality_frame(teacher, queries)
    overall = {m: float(quality[m].mean()) if len(quality) else 0.0 for m in (*QUALITY_METRICS, "referral")}
    split_sizes = splits["split"].value_counts().to_dict()
    tags: dict[str, dict] = {}
    flags: list[dict] = []
    for tag in SLICE_TAGS:
        col = f"slice_{tag}"
        values = sorted(set(splits[col].dropna().astype(str)) | set(quality[col].dropna().astype(str)))
        entries = {}
        for value in values:
            rep = {}
            for split in ("all", "train", "val", "test"):
                in_split = splits["split"].notna() if split == "all" else splits["split"] == split
                n_split = int(in_split.sum())
                n = int((in_split & (splits[col].astype(str) == value)).sum())
                rep[split] = {"rows": n, "share": round(n / n_split, 4) if n_split else 0.0}
            sub = quality[quality[col].astype(str) == value]
            q = {m: round(float(sub[m].mean()), 4) if len(sub) else None for m in (*QUALITY_METRICS, "referral")}
            entries[value] = {"representation": rep, "teacher_records": int(len(sub)), "teacher_quality": q}
            for split in FLAGGED_SPLITS:
                r = rep[split]
                if r["share"] < min_share:
                    flags.append({"tag": tag, "value": value, "split": split, "reason": "under_represented",
                                  "detail": f"{tag}={value} is {r['share']:.1%} of {split} ({r['rows']} rows), "
                                            f"below min_slice_share {min_share:.0%}"})
            if len(sub) >= MIN_SUPPORT:
                for m in QUALITY_METRICS:
                    gap = overall[m] - q[m]
                    if gap > max_gap:
                        flags.append({"tag": tag, "value": value, "metric": m, "reason": "quality_gap",
                                      "gap": round(gap, 4),
                                      "detail": f"teacher {m} for {tag}={value} is {q[m]:.1%} vs {overall[m]:.1%} "
                                                f"overall (gap {gap:.1%} > max_quality_gap {max_gap:.0%}, "
                                                f"{len(sub)} records)"})
        tags[tag] = entries
    return {"min_slice_share": min_share, "max_quality_gap": max_gap, "min_support": MIN_SUPPORT,
            "overall_teacher_quality": {k: round(v, 4) for k, v in overall.items()},
            "split_rows": {k: int(v) for k, v in split_sizes.items()}, "slices": tags, "flags": flags}
