"""The exercise catalogue: the only exercise names a plan may use.

Shared by the synthetic data (the `exercises` table), the offline teacher
(which exercises it may pick), and the constraint checker (catalogue names
only, equipment, contraindications).

Contraindication tags are injury sites (``knee``, ``lower_back``, ...) and
condition codes (``osteoporosis``, ...). An exercise is avoided for a user
when any of its tags matches one of the user's active injuries or conditions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

EQUIPMENT = (
    "bodyweight",
    "dumbbells",
    "resistance_bands",
    "pullup_bar",
    "kettlebell",
    "bench",
    "barbell",
    "squat_rack",
    "cable_machine",
    "leg_press",
    "stationary_bike",
)

# Equipment tiers used as slice tags and by the synthetic generator.
EQUIPMENT_TIERS: dict[str, tuple[str, ...]] = {
    "bodyweight": ("bodyweight",),
    "home": ("bodyweight", "dumbbells", "resistance_bands", "pullup_bar", "kettlebell"),
    "full_gym": EQUIPMENT,
}

INJURY_SITES = ("knee", "lower_back", "shoulder", "wrist", "ankle", "hip", "elbow")

# Medical conditions with the contraindication tags and RIR floor they imply.
CONDITIONS: dict[str, dict] = {
    "hypertension": {"rir_floor": 3, "tags": ("heavy_valsalva",)},
    "type2_diabetes": {"rir_floor": 2, "tags": ()},
    "asthma": {"rir_floor": 2, "tags": ()},
    "osteoarthritis": {"rir_floor": 2, "tags": ("high_impact",)},
    "osteoporosis": {"rir_floor": 3, "tags": ("spinal_flexion", "high_impact", "heavy_valsalva")},
    "coronary_artery_disease": {"rir_floor": 4, "tags": ("heavy_valsalva", "high_impact")},
    "pregnancy": {"rir_floor": 3, "tags": ("supine_after_first_trimester", "high_impact", "heavy_valsalva")},
}

MUSCLES = ("chest", "back", "shoulders", "quads", "hamstrings", "glutes", "biceps", "triceps", "core", "calves", "full_body", "cardio")


@dataclass(frozen=True)
class Exercise:
    name: str
    primary_muscle: str
    pattern: str  # squat, hinge, push_h, push_v, pull_h, pull_v, lunge, isolation, core, carry, conditioning
    equipment: tuple[str, ...]  # all are required
    contraindications: tuple[str, ...] = ()
    compound: bool = True


def _ex(name, muscle, pattern, equipment, contra=(), compound=True) -> Exercise:
    return Exercise(name, muscle, pattern, tuple(equipment), tuple(contra), compound)


CATALOGUE: tuple[Exercise, ...] = (
    # squat / knee dominant
    _ex("Barbell Back Squat", "quads", "squat", ["barbell", "squat_rack"], ["knee", "lower_back", "heavy_valsalva"]),
    _ex("Goblet Squat", "quads", "squat", ["dumbbells"], ["knee"]),
    _ex("Bodyweight Squat", "quads", "squat", ["bodyweight"], ["knee"]),
    _ex("Leg Press", "quads", "squat", ["leg_press"], ["knee"]),
    _ex("Box Squat to Bench", "quads", "squat", ["bench"], []),
    _ex("Split Squat", "quads", "lunge", ["bodyweight"], ["knee", "ankle"]),
    _ex("Dumbbell Reverse Lunge", "glutes", "lunge", ["dumbbells"], ["knee", "ankle"]),
    _ex("Step-Up", "quads", "lunge", ["bench"], ["knee", "ankle"]),
    _ex("Jump Squat", "quads", "conditioning", ["bodyweight"], ["knee", "ankle", "high_impact"]),
    # hinge / posterior chain
    _ex("Barbell Deadlift", "hamstrings", "hinge", ["barbell"], ["lower_back", "heavy_valsalva", "spinal_flexion"]),
    _ex("Romanian Deadlift", "hamstrings", "hinge", ["barbell"], ["lower_back"]),
    _ex("Dumbbell Romanian Deadlift", "hamstrings", "hinge", ["dumbbells"], ["lower_back"]),
    _ex("Kettlebell Swing", "glutes", "hinge", ["kettlebell"], ["lower_back", "high_impact"]),
    _ex("Glute Bridge", "glutes", "hinge", ["bodyweight"], ["supine_after_first_trimester"], compound=False),
    _ex("Hip Thrust", "glutes", "hinge", ["bench"], ["supine_after_first_trimester"]),
    _ex("Banded Good Morning", "hamstrings", "hinge", ["resistance_bands"], ["lower_back"]),
    _ex("Cable Pull-Through", "glutes", "hinge", ["cable_machine"], []),
    # horizontal push
    _ex("Barbell Bench Press", "chest", "push_h", ["barbell", "bench"], ["shoulder", "heavy_valsalva", "supine_after_first_trimester"]),
    _ex("Dumbbell Bench Press", "chest", "push_h", ["dumbbells", "bench"], ["shoulder", "supine_after_first_trimester"]),
    _ex("Push-Up", "chest", "push_h", ["bodyweight"], ["wrist", "shoulder"]),
    _ex("Incline Push-Up", "chest", "push_h", ["bench"], ["wrist"]),
    _ex("Banded Chest Press", "chest", "push_h", ["resistance_bands"], []),
    _ex("Cable Chest Fly", "chest", "isolation", ["cable_machine"], ["shoulder"], compound=False),
    # vertical push
    _ex("Barbell Overhead Press", "shoulders", "push_v", ["barbell"], ["shoulder", "lower_back", "heavy_valsalva"]),
    _ex("Seated Dumbbell Shoulder Press", "shoulders", "push_v", ["dumbbells", "bench"], ["shoulder"]),
    _ex("Pike Push-Up", "shoulders", "push_v", ["bodyweight"], ["shoulder", "wrist"]),
    _ex("Dumbbell Lateral Raise", "shoulders", "isolation", ["dumbbells"], ["shoulder"], compound=False),
    _ex("Band Pull-Apart", "shoulders", "isolation", ["resistance_bands"], [], compound=False),
    # horizontal pull
    _ex("Barbell Bent-Over Row", "back", "pull_h", ["barbell"], ["lower_back"]),
    _ex("One-Arm Dumbbell Row", "back", "pull_h", ["dumbbells", "bench"], []),
    _ex("Seated Cable Row", "back", "pull_h", ["cable_machine"], []),
    _ex("Banded Row", "back", "pull_h", ["resistance_bands"], []),
    _ex("Inverted Row", "back", "pull_h", ["pullup_bar"], ["shoulder"]),
    # vertical pull
    _ex("Pull-Up", "back", "pull_v", ["pullup_bar"], ["shoulder", "elbow"]),
    _ex("Lat Pulldown", "back", "pull_v", ["cable_machine"], []),
    _ex("Banded Lat Pulldown", "back", "pull_v", ["resistance_bands"], []),
    # arms
    _ex("Dumbbell Biceps Curl", "biceps", "isolation", ["dumbbells"], ["elbow"], compound=False),
    _ex("Band Biceps Curl", "biceps", "isolation", ["resistance_bands"], [], compound=False),
    _ex("Cable Triceps Pushdown", "triceps", "isolation", ["cable_machine"], ["elbow"], compound=False),
    _ex("Bench Dip", "triceps", "isolation", ["bench"], ["shoulder", "wrist", "elbow"], compound=False),
    _ex("Overhead Band Triceps Extension", "triceps", "isolation", ["resistance_bands"], ["elbow"], compound=False),
    # core
    _ex("Plank", "core", "core", ["bodyweight"], ["wrist"], compound=False),
    _ex("Side Plank", "core", "core", ["bodyweight"], ["shoulder"], compound=False),
    _ex("Dead Bug", "core", "core", ["bodyweight"], ["supine_after_first_trimester"], compound=False),
    _ex("Bird Dog", "core", "core", ["bodyweight"], [], compound=False),
    _ex("Crunch", "core", "core", ["bodyweight"], ["spinal_flexion", "supine_after_first_trimester"], compound=False),
    _ex("Pallof Press", "core", "core", ["resistance_bands"], [], compound=False),
    _ex("Farmer's Carry", "full_body", "carry", ["dumbbells"], ["lower_back"]),
    # calves
    _ex("Standing Calf Raise", "calves", "isolation", ["bodyweight"], ["ankle"], compound=False),
    # conditioning
    _ex("Stationary Bike Intervals", "cardio", "conditioning", ["stationary_bike"], [], compound=False),
    _ex("Brisk Walk", "cardio", "conditioning", ["bodyweight"], [], compound=False),
    _ex("Burpee", "full_body", "conditioning", ["bodyweight"], ["high_impact", "wrist", "knee", "shoulder"]),
)

BY_NAME: dict[str, Exercise] = {e.name: e for e in CATALOGUE}
assert len(BY_NAME) == len(CATALOGUE), "duplicate exercise names in the catalogue"


def contraindication_tags(injuries: list[str], conditions: list[str]) -> set[str]:
    """Tags that an exercise must not carry for a user with these injuries and conditions."""
    tags = set(injuries)
    for condition in conditions:
        tags.update(CONDITIONS.get(condition, {}).get("tags", ()))
    return tags


def exercises_to_avoid(injuries: list[str], conditions: list[str]) -> list[str]:
    """Catalogue names contraindicated by these injuries and conditions, sorted."""
    return list(_avoided(frozenset(injuries), frozenset(conditions)))


def usable_exercises(equipment: list[str], avoid: list[str]) -> list[Exercise]:
    """Catalogue exercises whose equipment is all available and that are not avoided."""
    return list(_usable(frozenset(equipment), frozenset(avoid)))


# Both are asked the same few thousand questions hundreds of thousands of times at scale (every query,
# every offline answer): answered once each.
@lru_cache(maxsize=1 << 16)
def _avoided(injuries: frozenset[str], conditions: frozenset[str]) -> tuple[str, ...]:
    tags = contraindication_tags(list(injuries), list(conditions))
    return tuple(sorted(e.name for e in CATALOGUE if tags.intersection(e.contraindications)))


@lru_cache(maxsize=1 << 16)
def _usable(equipment: frozenset[str], avoid: frozenset[str]) -> tuple[Exercise, ...]:
    have = equipment | {"bodyweight"}
    return tuple(e for e in CATALOGUE if set(e.equipment) <= have and e.name not in avoid)
