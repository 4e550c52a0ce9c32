-- FitSense relational schema. Portable: runs unchanged on SQLite (with PRAGMA foreign_keys=ON)
-- and PostgreSQL. Dates are DATE ('YYYY-MM-DD'), booleans are INTEGER 0/1 with a CHECK,
-- decimals are REAL. Tables are listed parents first (the loader inserts in this order).
-- Statements are separated by semicolons; comments never contain one.

CREATE TABLE users (
    user_id      INTEGER PRIMARY KEY,
    created_on   DATE NOT NULL
);

CREATE TABLE profiles (
    user_id          INTEGER PRIMARY KEY REFERENCES users (user_id),
    birth_date       DATE NOT NULL,
    sex              TEXT NOT NULL CHECK (sex IN ('female', 'male')),
    height_cm        REAL NOT NULL CHECK (height_cm BETWEEN 120 AND 230),
    weight_kg        REAL NOT NULL CHECK (weight_kg BETWEEN 30 AND 300),
    activity_level   TEXT NOT NULL CHECK (activity_level IN ('sedentary', 'light', 'moderate', 'active', 'very_active')),
    experience       TEXT NOT NULL CHECK (experience IN ('beginner', 'intermediate', 'advanced')),
    days_available   INTEGER NOT NULL CHECK (days_available BETWEEN 1 AND 7),
    session_minutes  INTEGER NOT NULL CHECK (session_minutes BETWEEN 10 AND 180)
);

CREATE TABLE goals (
    goal_id    INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (user_id),
    goal       TEXT NOT NULL CHECK (goal IN ('fat_loss', 'muscle_gain', 'strength', 'endurance', 'general_health')),
    priority   INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 5),
    UNIQUE (user_id, priority),
    UNIQUE (user_id, goal)
);

CREATE TABLE medical_conditions (
    condition_id   INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users (user_id),
    condition      TEXT NOT NULL CHECK (condition IN ('hypertension', 'type2_diabetes', 'asthma', 'osteoarthritis',
                                                     'osteoporosis', 'coronary_artery_disease', 'pregnancy')),
    severity       TEXT NOT NULL CHECK (severity IN ('mild', 'moderate', 'severe')),
    diagnosed_on   DATE NOT NULL,
    UNIQUE (user_id, condition)
);

CREATE TABLE injuries (
    injury_id     INTEGER PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users (user_id),
    site          TEXT NOT NULL CHECK (site IN ('knee', 'lower_back', 'shoulder', 'wrist', 'ankle', 'hip', 'elbow')),
    status        TEXT NOT NULL CHECK (status IN ('active', 'recovering', 'resolved')),
    occurred_on   DATE NOT NULL
);

CREATE TABLE medications (
    medication_id   INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users (user_id),
    name            TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 80),
    for_condition   TEXT
);

CREATE TABLE equipment (
    equipment_id   INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    tier           TEXT NOT NULL CHECK (tier IN ('bodyweight', 'home', 'full_gym'))
);

CREATE TABLE user_equipment (
    user_id        INTEGER NOT NULL REFERENCES users (user_id),
    equipment_id   INTEGER NOT NULL REFERENCES equipment (equipment_id),
    PRIMARY KEY (user_id, equipment_id)
);

CREATE TABLE exercises (
    exercise_id      INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    primary_muscle   TEXT NOT NULL,
    pattern          TEXT NOT NULL,
    is_compound      INTEGER NOT NULL CHECK (is_compound IN (0, 1))
);

CREATE TABLE exercise_equipment (
    exercise_id    INTEGER NOT NULL REFERENCES exercises (exercise_id),
    equipment_id   INTEGER NOT NULL REFERENCES equipment (equipment_id),
    PRIMARY KEY (exercise_id, equipment_id)
);

CREATE TABLE exercise_contraindications (
    exercise_id   INTEGER NOT NULL REFERENCES exercises (exercise_id),
    tag           TEXT NOT NULL,
    PRIMARY KEY (exercise_id, tag)
);

CREATE TABLE workout_plans (
    plan_id      INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (user_id),
    name         TEXT NOT NULL,
    created_on   DATE NOT NULL,
    is_current   INTEGER NOT NULL CHECK (is_current IN (0, 1))
);

CREATE TABLE plan_days (
    plan_day_id   INTEGER PRIMARY KEY,
    plan_id       INTEGER NOT NULL REFERENCES workout_plans (plan_id),
    day_number    INTEGER NOT NULL CHECK (day_number BETWEEN 1 AND 7),
    name          TEXT NOT NULL,
    UNIQUE (plan_id, day_number)
);

CREATE TABLE plan_exercises (
    plan_exercise_id   INTEGER PRIMARY KEY,
    plan_day_id        INTEGER NOT NULL REFERENCES plan_days (plan_day_id),
    exercise_id        INTEGER NOT NULL REFERENCES exercises (exercise_id),
    position           INTEGER NOT NULL CHECK (position BETWEEN 1 AND 12),
    UNIQUE (plan_day_id, position)
);

CREATE TABLE plan_sets (
    plan_set_id        INTEGER PRIMARY KEY,
    plan_exercise_id   INTEGER NOT NULL REFERENCES plan_exercises (plan_exercise_id),
    set_number         INTEGER NOT NULL CHECK (set_number BETWEEN 1 AND 10),
    target_reps        INTEGER NOT NULL CHECK (target_reps BETWEEN 1 AND 50),
    target_rir         INTEGER NOT NULL CHECK (target_rir BETWEEN 0 AND 5),
    rest_s             INTEGER NOT NULL CHECK (rest_s BETWEEN 0 AND 600),
    UNIQUE (plan_exercise_id, set_number)
);

CREATE TABLE workouts (
    workout_id     INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users (user_id),
    plan_day_id    INTEGER REFERENCES plan_days (plan_day_id),
    performed_on   DATE NOT NULL,
    duration_min   INTEGER NOT NULL CHECK (duration_min BETWEEN 1 AND 300)
);

CREATE TABLE workout_exercises (
    workout_exercise_id   INTEGER PRIMARY KEY,
    workout_id            INTEGER NOT NULL REFERENCES workouts (workout_id),
    exercise_id           INTEGER NOT NULL REFERENCES exercises (exercise_id),
    position              INTEGER NOT NULL CHECK (position BETWEEN 1 AND 12),
    UNIQUE (workout_id, position)
);

CREATE TABLE workout_sets (
    workout_set_id        INTEGER PRIMARY KEY,
    workout_exercise_id   INTEGER NOT NULL REFERENCES workout_exercises (workout_exercise_id),
    set_number            INTEGER NOT NULL CHECK (set_number BETWEEN 1 AND 10),
    reps                  INTEGER NOT NULL CHECK (reps BETWEEN 0 AND 100),
    weight_kg             REAL NOT NULL CHECK (weight_kg >= 0 AND weight_kg <= 500),
    rir                   INTEGER NOT NULL CHECK (rir BETWEEN 0 AND 10),
    UNIQUE (workout_exercise_id, set_number)
);

CREATE TABLE daily_logs (
    user_id          INTEGER NOT NULL REFERENCES users (user_id),
    log_date         DATE NOT NULL,
    calories         INTEGER NOT NULL CHECK (calories BETWEEN 500 AND 8000),
    sleep_hours      REAL NOT NULL CHECK (sleep_hours BETWEEN 0 AND 16),
    body_weight_kg   REAL NOT NULL CHECK (body_weight_kg BETWEEN 30 AND 300),
    PRIMARY KEY (user_id, log_date)
);
