"""The safety screen run before generation: red-flag symptoms get a clinician referral, not a plan.

``RuleScreen`` is a short, readable list of red-flag patterns over the user's
own words (system messages are not screened). It is the fallback screen: when
a model version ships a trained screen beside its adapter (the guided-decoding
work trains a scikit-learn classifier there), ``load_screen`` should prefer it
and OR it with these rules; until then every version is screened by the rules.
"""

from __future__ import annotations

import re
from pathlib import Path

from fitsense.plan import CoachAnswer, SafetyBlock
from fitsense.registry.serving.protocol import ScreenDecision, ServeRequest

# name -> pattern; each is a symptom that needs a clinician before any training advice.
RED_FLAG_RULES: dict[str, re.Pattern] = {name: re.compile(pattern, re.I) for name, pattern in {
    "chest_pain": r"\bchest (pain|tightness|pressure)\b|\bpain in (my|the) chest\b",
    "fainting": r"\b(faint(ed|ing)?|pass(ed)? out|blacked out|black out|lost consciousness)\b",
    "breathless_at_rest": r"\bshort(ness)? of breath (even )?(at|while at|when at) rest\b|\bbreathless (at|while) rest",
    "irregular_heartbeat": r"\bheart (races|racing|flutters|pounds) irregular|\birregular (heart ?beat|pulse)|palpitations",
    "hot_swollen_joint": r"\bsudden(ly)? (severe )?swell(ing|en)\b|\bswollen,? hot\b|\bhot and (painful|swollen)\b",
    "calf_clot_signs": r"\b(pain|swelling)( and (pain|swelling))? in (one|my) calf\b|\bcalf (pain|swelling) that won",
}.items()}

REFERRAL_REASON = ("Your message describes a symptom ({flags}) that needs a clinician's assessment before any "
                   "training plan. Please see a doctor; stop strenuous exercise until you have.")


def user_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


class RuleScreen:
    name = "rules"

    def screen(self, request: ServeRequest) -> ScreenDecision:
        text = user_text(request.messages)
        fired = [name for name, pattern in RED_FLAG_RULES.items() if pattern.search(text)]
        if not fired:
            return ScreenDecision(refer=False)
        return ScreenDecision(refer=True, reason=REFERRAL_REASON.format(flags=", ".join(fired).replace("_", " ")),
                              flags=fired)


def referral_answer(decision: ScreenDecision) -> CoachAnswer:
    """The answer a referral gets: no training days, ``referral_required`` with the reason."""
    return CoachAnswer(plan_name="See a clinician first", days=[],
                       notes="No training plan until a clinician has assessed the symptom.",
                       safety=SafetyBlock(flags=list(decision.flags), referral_required=True, reason=decision.reason))


def load_screen(model_dir: Path, flavor: dict) -> RuleScreen:
    """The screen that ships with a model version (``model_dir``: its downloaded artifacts, ``flavor``: its
    python_function flavor, whose ``artifacts`` would name a trained screen); the rule list until one does."""
    return RuleScreen()
