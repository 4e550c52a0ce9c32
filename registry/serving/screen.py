"""The safety screen run before generation: red-flag symptoms get a clinician referral, not a plan.

Each model version ships its screen (``fitsense.training.screen``: a trained
scikit-learn classifier OR'd with the red-flag rule list), logged as the
``screen`` artifact of the registered model; a version registered without one
is screened by the rules alone. ``VersionScreen`` puts it behind the serving
``Screen`` interface.
"""

from __future__ import annotations

from pathlib import Path

from fitsense.plan import CoachAnswer, SafetyBlock
from fitsense.registry.serving.protocol import ScreenDecision, ServeRequest
from fitsense.training.screen import SafetyScreen, user_text
from fitsense.training.screen import load_screen as load_safety_screen

REFERRAL_REASON = ("Your message describes a symptom ({flags}) that needs a clinician's assessment before any "
                   "training plan. Please see a doctor; stop strenuous exercise until you have.")


class VersionScreen:
    def __init__(self, safety: SafetyScreen):
        self.safety = safety

    def screen(self, request: ServeRequest) -> ScreenDecision:
        verdict = self.safety.screen([user_text(request.messages)])[0]
        if not verdict.refer:
            return ScreenDecision(refer=False)
        flags = verdict.rules or ["classifier"]
        return ScreenDecision(refer=True, reason=REFERRAL_REASON.format(flags=", ".join(flags)), flags=flags)


def referral_answer(decision: ScreenDecision) -> CoachAnswer:
    """The answer a referral gets: no training days, ``referral_required`` with the reason."""
    return CoachAnswer(plan_name="See a clinician first", days=[],
                       notes="No training plan until a clinician has assessed the symptom.",
                       safety=SafetyBlock(flags=list(decision.flags), referral_required=True, reason=decision.reason))


def load_screen(model_dir: Path, flavor: dict) -> VersionScreen:
    """The screen that ships with a model version (``model_dir``: its downloaded artifacts, ``flavor``: its
    python_function flavor, whose ``artifacts`` name the trained screen)."""
    path = (flavor.get("artifacts") or {}).get("screen", {}).get("path")
    return VersionScreen(load_safety_screen(model_dir / path if path else None))
