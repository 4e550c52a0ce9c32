"""The phrasing bank: how users say what they want, as data (templates), read by ``prompts``.

Every request a query makes is an *intent* (``red_flag.chest_pain``,
``change.fewer_days``, ``plan.create``, ...). Each intent has paraphrase
templates in two groups:

- ``seen``: used when the query stage renders a query (train, val and test);
- ``held_out``: never used by the query stage; the dataset stage re-renders
  the test queries with them into the unseen-phrasing ``challenge`` split.

A template id is ``<intent>.s<NN>`` (seen) or ``<intent>.h<NN>`` (held out).
Slots in braces are filled from the structured query: ``{days}``,
``{old_days}``, ``{minutes}``, ``{exercise}``, ``{site}``, ``{condition}``.
``canonical`` is the structured description a query records
(``Symptom.text``, ``QueryContext.modification``); the offline teacher reads
the structure, never these words.

The fact lines (profile, health, equipment, schedule, avoid list) have their
own templates per register (terse, plain, chatty); they state every number
exactly, in kg or lb and cm or ft-in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Intent:
    canonical: str
    seen: tuple[str, ...]
    held_out: tuple[str, ...]


# --------------------------------------------------------------------------- red-flag symptoms (referral)

RED_FLAG = {
    "red_flag.chest_pain": Intent(
        "chest pain when I exert myself, like on stairs",
        seen=(
            "New: chest pain when I exert myself, like on stairs. How should I train now?",
            "I get chest pain when I exert myself, for example on stairs. What should I do with training?",
            "My chest hurts when I push hard, even climbing stairs. Should I keep training?",
            "chest pain on exertion (stairs). how to train?",
            "Lately there's a tight pain in my chest whenever I walk up stairs quickly. Can you adjust my plan?",
            "Heads up: I've had chest pain during effort, like taking the stairs. What now?",
            "When I exercise hard my chest starts hurting. Stairs set it off too. Plan?",
            "Chest pain with exertion since last week, stairs bring it on. Can I still train?",
            "I notice pressure and pain in my chest when I climb stairs. How do I train now?",
            "Something new: pain in the chest whenever I exert myself. Please adjust things.",
            "Quick one - my chest aches when I go up stairs or work hard. Keep going?",
            "Honestly a bit worried, I get chest pains when exerting myself, stairs included. What should my training look like?",
        ),
        held_out=(
            "Climbing stairs gives me a squeezing feeling in my chest, and hard sets do too. Is my plan still ok?",
            "exertional chest pain recently (stairs, hills) - what do I do about workouts",
            "Whenever I get my heart rate up, my chest starts to hurt. Should I change my program?",
            "I've been having chest discomfort on effort, e.g. two flights of stairs. Advice on training?",
        ),
    ),
    "red_flag.fainting": Intent(
        "I fainted during my last workout",
        seen=(
            "New: I fainted during my last workout. How should I train now?",
            "I passed out in my last workout. What should I do now?",
            "I blacked out during my last session. Can you adjust my plan?",
            "fainted mid workout last time. what now?",
            "During my last training session I fainted for a few seconds. Should I keep going?",
            "Heads up: I lost consciousness briefly in my last workout. How do I train now?",
            "I collapsed and fainted during my last workout. Please advise.",
            "Last session I fainted between sets. What should my training look like now?",
            "Something happened: I fainted while working out last time. Can I carry on?",
            "I keeled over and passed out at the gym last workout. Plan?",
            "Quick one - I fainted during my most recent workout. How should I proceed?",
            "A bit scary, I fainted in the middle of my last workout. What do you suggest?",
        ),
        held_out=(
            "Everything went black and I woke up on the floor during my last session. Keep training?",
            "passed out at training yesterday. adjust plan?",
            "I lost consciousness for a moment during my last workout. What should I do with my program?",
            "My training partner says I fainted during our last session. Should my plan change?",
        ),
    ),
    "red_flag.breathless_at_rest": Intent(
        "I get short of breath even at rest",
        seen=(
            "New: I get short of breath even at rest. How should I train now?",
            "I'm short of breath even when resting. What should I do about training?",
            "Even sitting still I feel out of breath. Can you adjust my plan?",
            "breathless at rest lately. how to train?",
            "I've started getting breathless even when I'm not doing anything. Should I keep training?",
            "Heads up: I'm short of breath even at rest these days. What now?",
            "I can't catch my breath even when resting on the couch. Plan?",
            "Shortness of breath at rest, since a few days. Can I still work out?",
            "I struggle to breathe even at rest now. How do I train?",
            "Something new: I get winded even at rest. Please adjust things.",
            "Quick one - out of breath even while resting. Keep going with the plan?",
            "Honestly a bit worried, I'm breathless at rest. What should my training look like?",
        ),
        held_out=(
            "I'm gasping for air even lying in bed. Is training still ok?",
            "short of breath w/o exercise, just resting. what to do re workouts",
            "Breathing feels hard even when I sit quietly. Should my program change?",
            "My breathing is laboured even when I'm resting. Advice on my workouts?",
        ),
    ),
    "red_flag.knee_swelling": Intent(
        "sudden severe swelling in my knee, hot and painful",
        seen=(
            "New: sudden severe swelling in my knee, hot and painful. How should I train now?",
            "My knee suddenly swelled up badly and it's hot and painful. What should I do?",
            "Sudden big swelling in my knee, it's hot and hurts. Can you adjust my plan?",
            "knee suddenly very swollen, hot, painful. how to train?",
            "Overnight my knee swelled up a lot; it feels hot and really painful. Should I keep training?",
            "Heads up: severe sudden swelling in the knee, warm to touch and painful. What now?",
            "My knee has ballooned out of nowhere, it's hot and sore. Plan?",
            "Sudden severe knee swelling with heat and pain. Can I still train?",
            "The knee is suddenly swollen, red-hot and painful. How do I train now?",
            "Something new: my knee swelled up fast and is hot and painful. Please adjust things.",
            "Quick one - big hot painful swelling in my knee appeared suddenly. Keep going?",
            "Honestly a bit worried, my knee got severely swollen, hot and painful all of a sudden. What should my training look like?",
        ),
        held_out=(
            "One knee puffed up within hours and it's burning hot and very painful. Is my plan ok?",
            "knee swelled up suddenly (hot + painful) - what about workouts",
            "My knee is abruptly swollen, warm and painful to bend. Should I change my program?",
            "A painful, hot swelling came up fast in my knee. Advice on training?",
        ),
    ),
    "red_flag.palpitations": Intent(
        "my heart races irregularly and I feel dizzy while training",
        seen=(
            "New: my heart races irregularly and I feel dizzy while training. How should I train now?",
            "My heart races irregularly and I get dizzy while training. What should I do?",
            "During workouts my heartbeat goes irregular and fast and I feel dizzy. Can you adjust my plan?",
            "irregular racing heart + dizzy when training. how to train?",
            "When I train my heart starts racing out of rhythm and I get light-headed. Should I keep training?",
            "Heads up: irregular fast heartbeat and dizziness during training. What now?",
            "My heart flutters and races irregularly mid-workout and I feel dizzy. Plan?",
            "Irregular heart racing and dizziness while training, since last week. Can I still train?",
            "I get palpitations with an irregular rhythm and dizziness when training. How do I train now?",
            "Something new: my heart skips and races while I train and I feel dizzy. Please adjust things.",
            "Quick one - heart racing irregularly and dizzy spells while training. Keep going?",
            "Honestly a bit worried, my heart beats irregularly and fast and I feel dizzy training. What should my training look like?",
        ),
        held_out=(
            "In the middle of sets my pulse goes all over the place and the room spins. Is my plan still ok?",
            "heart pounding irregular + dizzy during workouts - what do I do",
            "My heartbeat feels erratic and I get light-headed when I exercise. Should my program change?",
            "I've noticed an uneven, racing heartbeat with dizziness during training. Advice?",
        ),
    ),
    "red_flag.calf_swelling": Intent(
        "pain and swelling in one calf that won't go away",
        seen=(
            "New: pain and swelling in one calf that won't go away. How should I train now?",
            "One of my calves is painful and swollen and it won't go away. What should I do?",
            "I have pain and swelling in one calf that doesn't go away. Can you adjust my plan?",
            "one calf swollen + painful, not going away. how to train?",
            "My left calf has been swollen and sore for days and it isn't improving. Should I keep training?",
            "Heads up: persistent pain and swelling in one calf. What now?",
            "One calf is swollen and aching and it just won't settle. Plan?",
            "Calf pain and swelling on one side that won't go away. Can I still train?",
            "There's a swollen, tender calf on one leg that keeps hurting. How do I train now?",
            "Something new: one calf is swollen and painful and stays that way. Please adjust things.",
            "Quick one - painful swollen calf (just one) that won't go down. Keep going?",
            "Honestly a bit worried, pain and swelling in one calf that won't go away. What should my training look like?",
        ),
        held_out=(
            "My right lower leg is puffy and hurts at the calf, and it has not eased for a week. Is my plan ok?",
            "swollen sore calf, one leg only, lasting days - what about workouts",
            "A single calf has stayed swollen and painful no matter what I do. Should I change my program?",
            "I've had ongoing swelling and tenderness in one calf. Advice on training?",
        ),
    ),
}

# --------------------------------------------------------------------------- benign symptoms (no referral)

BENIGN = {
    "benign.doms": Intent(
        "mild muscle soreness two days after leg day",
        seen=(
            "New: mild muscle soreness two days after leg day. How should I train now?",
            "I have mild muscle soreness two days after leg day. What should I do?",
            "My legs are a bit sore two days after leg day. Can you adjust my plan?",
            "bit sore 2 days after legs. how to train?",
            "Two days after leg day my muscles are still mildly sore. Should I keep training?",
            "Heads up: some light soreness two days post leg day. What now?",
            "Mild DOMS two days after leg day. Plan?",
            "Slightly sore muscles two days after training legs. Can I still train?",
            "My quads feel a little sore two days after leg day. How do I train now?",
            "Something small: mild soreness two days after leg day. Please adjust things if needed.",
            "Quick one - mildly sore two days after leg day. Keep going?",
            "Not a big deal I think, but my legs are mildly sore two days after leg day. What should my training look like?",
        ),
        held_out=(
            "Walking downstairs is a little achy since leg day two days ago. Is my plan still ok?",
            "mild leg soreness day 2 after squats - what do I do",
            "I'm somewhat stiff and sore in the legs two days after leg training. Should my program change?",
            "Light muscle ache lingering two days after my leg session. Advice?",
        ),
    ),
    "benign.tired": Intent(
        "I feel a bit tired after a poor night's sleep",
        seen=(
            "New: I feel a bit tired after a poor night's sleep. How should I train now?",
            "I'm a bit tired after a poor night's sleep. What should I do?",
            "Slept badly and feel a bit tired. Can you adjust my plan?",
            "tired after bad sleep. how to train?",
            "I didn't sleep well last night and I'm a little tired. Should I keep training?",
            "Heads up: feeling somewhat tired after poor sleep. What now?",
            "Poor night's sleep, feeling a bit drained. Plan?",
            "A bit tired today after sleeping badly. Can I still train?",
            "I'm slightly fatigued after a rough night of sleep. How do I train now?",
            "Something small: a bad night's sleep left me a bit tired. Please adjust things if needed.",
            "Quick one - tired-ish after poor sleep. Keep going?",
            "Not a big deal I think, but I'm a bit tired after a poor night's sleep. What should my training look like?",
        ),
        held_out=(
            "Only got about five hours of sleep, so I'm running a little low. Is my plan still ok?",
            "bit sleepy, rough night - what do I do",
            "I feel somewhat worn out because I slept poorly. Should my program change?",
            "Low energy today from a restless night. Advice?",
        ),
    ),
    "benign.stiffness": Intent(
        "slight morning stiffness that eases once I warm up",
        seen=(
            "New: slight morning stiffness that eases once I warm up. How should I train now?",
            "I have slight stiffness in the morning that goes away once I warm up. What should I do?",
            "A little stiff in the mornings, it eases after warming up. Can you adjust my plan?",
            "slight morning stiffness, gone after warm-up. how to train?",
            "In the morning I'm slightly stiff but it eases once I'm warmed up. Should I keep training?",
            "Heads up: mild stiffness in the mornings that warms out. What now?",
            "Bit of morning stiffness, fine after a warm-up. Plan?",
            "Slight stiffness when I wake up that eases with warming up. Can I still train?",
            "I'm a little stiff each morning until I warm up. How do I train now?",
            "Something small: slight morning stiffness that passes once I warm up. Please adjust things if needed.",
            "Quick one - stiff in the morning, ok after warming up. Keep going?",
            "Not a big deal I think, but I have slight morning stiffness that eases once I warm up. What should my training look like?",
        ),
        held_out=(
            "I creak a bit getting out of bed, but after a few minutes of moving it's gone. Is my plan still ok?",
            "mild am stiffness, loosens with warmup - what do I do",
            "Mornings I feel a little tight, which fades after I warm up. Should my program change?",
            "Some light stiffness on waking that clears up with movement. Advice?",
        ),
    ),
    "benign.blister": Intent(
        "a small blister on my palm from gripping",
        seen=(
            "New: a small blister on my palm from gripping. How should I train now?",
            "I have a small blister on my palm from gripping. What should I do?",
            "Got a little blister on my palm from holding the bar. Can you adjust my plan?",
            "small palm blister from grip. how to train?",
            "There's a small blister on my palm from all the gripping. Should I keep training?",
            "Heads up: a small blister on my hand from gripping. What now?",
            "Tiny blister on my palm from gripping weights. Plan?",
            "A small blister on the palm from gripping. Can I still train?",
            "Gripping gave me a small blister on my palm. How do I train now?",
            "Something small: a blister on my palm from grip work. Please adjust things if needed.",
            "Quick one - small blister on my palm from gripping. Keep going?",
            "Not a big deal I think, but I have a small blister on my palm from gripping. What should my training look like?",
        ),
        held_out=(
            "My hand rubbed raw in one spot and formed a little blister from holding dumbbells. Is my plan still ok?",
            "blister on hand from grip - what do I do",
            "A minor blister popped up on my palm where I hold the handles. Should my program change?",
            "Small friction blister on my palm. Advice?",
        ),
    ),
}

# --------------------------------------------------------------------------- other safety reports

SAFETY = {
    "safety.injury": Intent(
        "I injured my {site} this week",
        seen=(
            "New: I injured my {site} this week. Please adjust my plan.",
            "I hurt my {site} this week. Can you adjust my plan?",
            "{site} injury this week. adjust plan pls",
            "This week I injured my {site}. What should change in my training?",
            "Heads up: my {site} got injured a few days ago. Please update my plan.",
            "I tweaked my {site} this week, please work around it.",
            "Unfortunately I injured my {site} this week. How should my plan change?",
        ),
        held_out=(
            "Picked up a {site} injury over the last few days; rework the program around it?",
            "{site} is injured now (happened this week) - what do I change",
            "I've just damaged my {site}. Could you modify my training for that?",
        ),
    ),
    "safety.condition": Intent(
        "I was just diagnosed with {condition}",
        seen=(
            "New: I was just diagnosed with {condition}. Please adjust my plan.",
            "I've just been diagnosed with {condition}. Can you adjust my plan?",
            "new diagnosis: {condition}. adjust plan pls",
            "My doctor just diagnosed me with {condition}. What should change in my training?",
            "Heads up: I was diagnosed with {condition} this week. Please update my plan.",
            "Got a {condition} diagnosis recently, please take it into account.",
            "Turns out I have {condition} (just diagnosed). How should my plan change?",
        ),
        held_out=(
            "The clinic confirmed {condition} yesterday; rework the program for it?",
            "dx {condition} - what do I change",
            "I learned I have {condition}. Could you modify my training accordingly?",
        ),
    ),
}

# --------------------------------------------------------------------------- plan creation, changes, progress

PLAN = {
    "plan.create": Intent(
        "Please write my weekly plan.",
        seen=(
            "Please write my weekly plan.",
            "Can you make me a weekly training plan?",
            "weekly plan please",
            "I'd love a week-long workout plan that fits all this.",
            "Build me a training week, please.",
            "What should my training week look like?",
            "Could you put together my workout schedule for the week?",
        ),
        held_out=(
            "Design a program for me for a typical week.",
            "need a routine for the week",
            "Would you draft the weekly workouts for me?",
        ),
    ),
    "progress.adapt": Intent(
        "Please adapt my plan.",
        seen=(
            "Please adapt my plan.",
            "Can you adjust my plan based on this?",
            "adapt plan pls",
            "Given these numbers, how should I change my plan?",
            "Update my program from these results, please.",
            "What should I tweak in my plan based on this progress?",
            "Could you progress my plan using these trends?",
        ),
        held_out=(
            "Based on how the lifts are moving, revise my routine?",
            "tweak program from the log",
            "Would you rework my training given these logs?",
        ),
    ),
}

CHANGE = {
    "change.fewer_days": Intent(
        "I can only train {days} days a week now.",
        seen=(
            "I can only train {days} days a week now.",
            "From now on I only have {days} days a week for training.",
            "only {days} days/week now",
            "My schedule changed: {days} training days a week is all I can do.",
            "Please cut it down to {days} days a week.",
            "Can we make it {days} days a week? That's all I have now.",
            "Work got busy, so {days} sessions a week max.",
        ),
        held_out=(
            "I'm down to {days} workouts per week from here on.",
            "need it to be {days}x per week now",
            "Realistically I can manage {days} days weekly now.",
        ),
    ),
    "change.more_days": Intent(
        "I'd like to train {days} days a week instead of {old_days}.",
        seen=(
            "I'd like to train {days} days a week instead of {old_days}.",
            "Can we go from {old_days} to {days} days a week?",
            "{days} days/week instead of {old_days} please",
            "I have more time now: {days} training days a week rather than {old_days}.",
            "Please bump it up to {days} days a week (currently {old_days}).",
            "I want to add a day: {days} days a week instead of {old_days}.",
            "Let's make it {days} sessions a week, up from {old_days}.",
        ),
        held_out=(
            "I could fit in {days} workouts per week now, not just {old_days}.",
            "up to {days}x per week (was {old_days})",
            "Switch me from {old_days} to {days} weekly sessions, please.",
        ),
    ),
    "change.shorter": Intent(
        "My sessions must fit in {minutes} minutes from now on.",
        seen=(
            "My sessions must fit in {minutes} minutes from now on.",
            "I only have {minutes} minutes per session now.",
            "{minutes} min sessions max now",
            "Can you make each workout fit into {minutes} minutes?",
            "Time is tight: {minutes} minutes a session from now on.",
            "Please keep every session under {minutes} minutes.",
            "New constraint - sessions can be {minutes} minutes at most.",
        ),
        held_out=(
            "Each workout needs to be done within {minutes} minutes going forward.",
            "cap sessions at {minutes} mins",
            "I've got just {minutes} minutes per workout these days.",
        ),
    ),
    "change.home_only": Intent(
        "I'm training at home now with only dumbbells and resistance bands.",
        seen=(
            "I'm training at home now with only dumbbells and resistance bands.",
            "No more gym: just dumbbells and resistance bands at home.",
            "home only now, dumbbells + bands",
            "I cancelled my gym membership; I have dumbbells and resistance bands at home.",
            "Please switch me to home workouts with dumbbells and bands only.",
            "From now on it's home training with dumbbells and resistance bands.",
            "Can you redo it for home? I only have dumbbells and resistance bands.",
        ),
        held_out=(
            "The gym closed, so it's my living room with a pair of dumbbells and some bands.",
            "moving to home workouts - dumbbells and bands, that's it",
            "Could the plan work with just dumbbells and resistance bands at my place?",
        ),
    ),
    "change.bodyweight_only": Intent(
        "I'm travelling for a month: bodyweight only, no equipment.",
        seen=(
            "I'm travelling for a month: bodyweight only, no equipment.",
            "I'll be away for a month with no equipment, bodyweight only.",
            "travelling 1 month, bodyweight only",
            "For the next month I'm on the road and can only do bodyweight exercises.",
            "Please make it bodyweight only, I'm travelling for a month.",
            "No equipment for a month while I travel, just bodyweight.",
            "Can you switch to bodyweight work? I'm travelling for a month without gear.",
        ),
        held_out=(
            "Hotel rooms for the next four weeks, so no kit at all - just my own body weight.",
            "on a trip for a month, zero equipment",
            "While I'm abroad this month I'll only have bodyweight movements available.",
        ),
    ),
    "change.swap": Intent(
        "I don't like {exercise}; please swap it for something else.",
        seen=(
            "I don't like {exercise}; please swap it for something else.",
            "Can you replace {exercise} with something else?",
            "swap out {exercise} pls",
            "I really don't enjoy {exercise}. Could you swap it?",
            "Please take {exercise} out and give me an alternative.",
            "{exercise} isn't for me, can you change it?",
            "I'd rather not do {exercise} anymore; what else could I do instead?",
        ),
        held_out=(
            "Not a fan of {exercise} - substitute it with something comparable?",
            "drop {exercise}, give me another option",
            "Could {exercise} be exchanged for a different movement?",
        ),
    ),
}

INTENTS: dict[str, Intent] = {**RED_FLAG, **BENIGN, **SAFETY, **PLAN, **CHANGE}

# --------------------------------------------------------------------------- fact lines, per register

REGISTERS = ("terse", "plain", "chatty")
OPENERS = {"terse": ("",), "plain": ("",), "chatty": ("Hi coach!", "Hey there,", "Hello! Hoping you can help.",
                                                      "Hi! Long-time reader, first question.")}
CLOSERS = {"terse": ("",), "plain": ("", "Thanks."), "chatty": ("Thanks so much!", "Appreciate it!",
                                                                "Cheers, you're a star.", "Thank you!")}

PROFILE = {
    "terse": (
        "{age}{sex_letter}, {height}, {weight}, {activity}, {experience}. Goal: {goals}.",
        "Me: {age}y {sex}, {height}/{weight}, {experience}, {activity}. Goals: {goals}.",
    ),
    "plain": (
        "I'm {a_an} {age}-year-old {sex}, {height}, {weight}, {activity}, {experience}. Goal: {goals}.",
        "{age}-year-old {sex}, {weight} and {height}. I'm {activity} and {experience}. My goal is {goals}.",
    ),
    "chatty": (
        "A bit about me: I'm {age}, a {sex}, {height} tall and {weight}. I'd say I'm {activity} and {experience} "
        "at lifting. What I want most is {goals}.",
        "So I'm {a_an} {age}-year-old {sex} ({height}, {weight}), {activity} day to day and {experience} in the gym. "
        "Main goal: {goals}.",
    ),
}
HEALTH_NONE = {"terse": ("No conditions/injuries.",), "plain": ("No conditions or injuries.", "No health issues."),
               "chatty": ("Luckily no injuries or medical conditions.", "Healthy, no injuries to speak of.")}
HEALTH = {  # parts joined by a space: conditions, injuries, medications
    "terse": ("Conditions: {conditions}.", "Injuries: {injuries}.", "Meds: {medications}."),
    "plain": ("I have {conditions}.", "Injuries: {injuries}.", "I take {medications}."),
    "chatty": ("Medically, I have {conditions}.", "I'm also dealing with {injuries}.", "I'm on {medications}."),
}
EQUIPMENT_LINE = {
    "terse": ("Equipment: {kit}.", "Kit: {kit}."),
    "plain": ("Equipment: {kit}.", "I have {kit}."),
    "chatty": ("Equipment-wise I've got {kit}.", "For gear I have {kit}."),
}
SCHEDULE = {
    "terse": (
        "{days} days/week, {minutes} min/session, max {max_ex} exercises/day, all sets RIR {rir}+.",
        "Days: {days}/wk | Session: {minutes} min | Max exercises: {max_ex}/day | RIR floor: {rir}",
    ),
    "plain": (
        "I can train {days} days a week for {minutes} minutes, at most {max_ex} exercises a day; keep every set at "
        "RIR {rir} or more.",
        "Schedule: {days} days a week, {minutes}-minute sessions, no more than {max_ex} exercises per day, RIR {rir}+ "
        "on all sets.",
    ),
    "chatty": (
        "I've got {days} days a week and {minutes} minutes each time. Please keep it to {max_ex} exercises a day and "
        "leave at least {rir} reps in reserve (RIR {rir}+) on every set.",
        "Time-wise it's {days} days a week, {minutes} minutes a session, and no more than {max_ex} exercises a day, "
        "with every set at RIR {rir} or above.",
    ),
}
AVOID = {
    "terse": ("Avoid: {avoid}.", "No {avoid}."),
    "plain": ("Avoid: {avoid}.", "Please leave out {avoid}."),
    "chatty": ("I've been told to skip {avoid}.", "Please don't give me {avoid}."),
}
FULL_GYM = ("full gym", "a full gym", "a fully equipped gym")
TYPO_RATE = 0.08  # share of queries with one typo in a template word (never in a number or a name)
