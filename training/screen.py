"""The red-flag safety screen: does a request need a clinician referral before any plan?

Run before generation; when it fires, guided decoding uses the referral branch
of the plan grammar. Two parts, OR'd:

- a scikit-learn text classifier (TF-IDF word and character n-grams, logistic
  regression) trained on the training split's user messages with the teacher's
  referral decisions as labels; its threshold is the highest one that keeps
  recall 1.0 on the validation split (the lowest validation positive's score);
- ``RED_FLAG_RULES``, a short readable list of symptom patterns a coach must
  never train through, so a phrasing the classifier never saw still refers.

``train_screen`` is called by the training stage, which saves the screen beside
the adapter (``training/screen/``: ``classifier.joblib`` + ``screen.json``), logs it
to MLflow, and the registry ships it with the model version.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from fitsense.records import DistillRecord
from fitsense.runs import atomic_dir

SCREEN_FILE, CLASSIFIER_FILE = "screen.json", "classifier.joblib"
# Symptoms that need a medical assessment before training (the ACSM pre-participation red flags, in words).
RED_FLAG_RULES: dict[str, str] = {
    "chest pain or pressure": r"\bchest (pain|pressure|tightness)|\bpain in (my|the) chest",
    "fainting": r"\bfaint(ed|ing)?\b|\bpass(ed)? out\b|\bblack(ed)? out\b|\blost consciousness",
    "breathless at rest": r"short(ness)? of breath|breathless|can'?t (catch my )?breathe?",
    "irregular heartbeat": r"\bheart (races|racing|pounds|flutters)|palpitation|irregular(ly)? (heart|beat)",
    "dizziness": r"\bdizz(y|iness)\b|\blight-?headed",
    "calf pain and swelling (clot)": r"\bcalf\b.*\bswell|\bswell\w*\b.*\bcalf\b",
    "hot swollen joint": r"\bsudden\b.*\bswelling\b|\bswelling\b.*\bhot\b",
}
_RULES = {name: re.compile(pattern, re.I) for name, pattern in RED_FLAG_RULES.items()}


def user_text(messages) -> str:
    """The user turns of a conversation (what the screen reads)."""
    return "\n".join((m["content"] if isinstance(m, dict) else m.content) for m in messages
                     if (m["role"] if isinstance(m, dict) else m.role) == "user")


def matched_rules(text: str) -> list[str]:
    return [name for name, rule in _RULES.items() if rule.search(text)]


def teacher_referral(record: DistillRecord) -> bool:
    """The teacher's referral decision in a dataset example (its answer's safety block)."""
    answer = json.loads(record.messages[-1].content)
    return bool(answer.get("safety", {}).get("referral_required"))


@dataclass
class ScreenVerdict:
    refer: bool
    score: float | None  # the classifier's probability; None without a classifier
    rules: list[str] = field(default_factory=list)


@dataclass
class SafetyScreen:
    classifier: object | None  # a fitted sklearn Pipeline, or None (rules only: no positive in training)
    threshold: float = 0.5
    metrics: dict = field(default_factory=dict)

    def screen(self, texts: list[str]) -> list[ScreenVerdict]:
        scores = self.classifier.predict_proba(texts)[:, 1].tolist() if self.classifier is not None and texts \
            else [None] * len(texts)
        verdicts = []
        for text, score in zip(texts, scores):
            rules = matched_rules(text)
            verdicts.append(ScreenVerdict(refer=bool(rules) or (score is not None and score >= self.threshold),
                                          score=score, rules=rules))
        return verdicts

    def refer(self, texts: list[str]) -> list[bool]:
        return [v.refer for v in self.screen(texts)]

    def save(self, out_dir: Path) -> Path:
        import joblib

        with atomic_dir(out_dir) as tmp:
            if self.classifier is not None:
                joblib.dump(self.classifier, tmp / CLASSIFIER_FILE)
            (tmp / SCREEN_FILE).write_text(json.dumps(
                {"threshold": self.threshold, "rules": RED_FLAG_RULES, "metrics": self.metrics}, indent=2))
        return out_dir


def load_screen(screen_dir: str | Path | None) -> SafetyScreen:
    """The saved screen; with no folder (a run trained before the screen existed), the rules alone."""
    if screen_dir is None or not (Path(screen_dir) / SCREEN_FILE).exists():
        return SafetyScreen(classifier=None, metrics={"note": "rules only: no trained screen"})
    import joblib

    screen_dir = Path(screen_dir)
    info = json.loads((screen_dir / SCREEN_FILE).read_text())
    classifier = joblib.load(screen_dir / CLASSIFIER_FILE) if (screen_dir / CLASSIFIER_FILE).exists() else None
    return SafetyScreen(classifier=classifier, threshold=float(info["threshold"]), metrics=info.get("metrics", {}))


def _classifier(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.feature_extraction.text import TfidfVectorizer

    features = FeatureUnion([
        ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2)),
    ])
    return make_pipeline(features, LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000,
                                                      random_state=seed))


def recall_threshold(scores: list[float], labels: list[bool], default: float = 0.5) -> float:
    """A threshold with recall 1.0 and the best precision on these scores, with a margin.

    Every threshold at or below the lowest positive's score keeps recall 1.0; the one halfway between
    it and the highest negative score below it flags the fewest negatives while leaving the most room
    for an unseen positive. ``default`` when there is no positive.
    """
    positives = [s for s, y in zip(scores, labels) if y]
    if not positives:
        return default
    lowest = min(positives)
    below = [s for s, y in zip(scores, labels) if not y and s < lowest]
    return (lowest + max(below)) / 2 if below else lowest / 2


def screen_metrics(screen: SafetyScreen, records: list[DistillRecord]) -> dict:
    """Recall and precision of the screen's referral decision against the teacher's, with n."""
    from sklearn.metrics import precision_score, recall_score

    if not records:
        return {"n": 0}
    labels = [teacher_referral(r) for r in records]
    predicted = screen.refer([user_text(r.messages) for r in records])
    return {"n": len(records), "positives": sum(labels), "flagged": sum(predicted),
            "recall": float(recall_score(labels, predicted, zero_division=float("nan"))) if any(labels) else None,
            "precision": float(precision_score(labels, predicted, zero_division=float("nan")))
            if any(predicted) else None}


def train_screen(train: list[DistillRecord], val: list[DistillRecord], seed: int) -> SafetyScreen:
    """Fit the classifier on ``train``, pick its threshold on ``val`` (recall 1.0), report both splits."""
    texts = [user_text(r.messages) for r in train]
    labels = [teacher_referral(r) for r in train]
    classifier = None
    threshold = 0.5
    if len(set(labels)) == 2:
        classifier = _classifier(seed).fit(texts, labels)
        tuning = val if any(teacher_referral(r) for r in val) else train
        scores = classifier.predict_proba([user_text(r.messages) for r in tuning])[:, 1].tolist()
        threshold = recall_threshold(scores, [teacher_referral(r) for r in tuning])
    screen = SafetyScreen(classifier=classifier, threshold=threshold)
    screen.metrics = {"train": screen_metrics(screen, train), "val": screen_metrics(screen, val),
                      "threshold_split": "val" if any(teacher_referral(r) for r in val) else "train"}
    return screen
