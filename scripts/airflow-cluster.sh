#!/usr/bin/env bash
# A real distributed Airflow 3 on one machine, from the project's own install (README "Running on a cluster"):
#   PostgreSQL (Airflow metadata, Celery results, MLflow store), Redis (Celery broker), the Airflow
#   api-server, scheduler, dag-processor and triggerer, two Celery workers (worker-cpu serves `default`,
#   worker-gpu serves `gpu` and `default`), an `mlflow server`, the local teacher endpoint, and one
#   shared artifacts directory.
#
#   scripts/airflow-cluster.sh up                 start everything (a fresh cluster in $FITSENSE_CLUSTER_DIR)
#   scripts/airflow-cluster.sh trigger [opts]     run the DAG through the REST API and report
#       --run-id ID   reuse a pipeline run (default: cluster); its completed stages are skipped
#       --set key=value        a params.yaml override on top of the tiny configuration
#       --kill-worker-during-shard NAME   kill worker NAME while it runs a teacher shard
#       --report FILE          also write the report as JSON
#   scripts/airflow-cluster.sh status | kill-worker NAME | down
#
# Every long-running process starts with setsid in its own session; `down` stops each session
# (Airflow task processes get their own process groups, but stay in their worker's session).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DIR=${FITSENSE_CLUSTER_DIR:-$REPO/.cluster}
BASE=${FITSENSE_CLUSTER_PORT_BASE:-47300}  # unusual loopback ports: BASE+32 .. BASE+95
PG_PORT=$((BASE + 32)) MLFLOW_PORT=$((BASE + 50)) TEACHER_PORT=$((BASE + 65))
REDIS_PORT=$((BASE + 79)) API_PORT=$((BASE + 80)) LOG_PORT=$((BASE + 93))
USERS=${FITSENSE_CLUSTER_USERS:-40} QUERIES=${FITSENSE_CLUSTER_QUERIES:-60}
TEACHER_LATENCY_MS=${FITSENSE_CLUSTER_TEACHER_LATENCY_MS:-400}
TINY_MODEL=${FITSENSE_TEST_CACHE:-$REPO/.cache/test}/tiny-llama

die() { echo "airflow-cluster: $*" >&2; exit 1; }
note() { echo "airflow-cluster: $*"; }

marked_pids() {  # processes started by this cluster (they carry its FITSENSE_CLUSTER_ID)
  grep -lsxFz "FITSENSE_CLUSTER_ID=$DIR" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 || true
}

# Live processes only: a zombie (exited, not yet reaped by init) counts as stopped.
session_pids() { ps -e -o pid=,sid=,stat= | awk -v s="$1" '$2 == s && $3 !~ /^Z/ {print $1}'; }

session_of() { cat "$DIR/pids/$1" 2>/dev/null; }

alive_sessions() {  # the NAMEs whose sessions still have a process (one ps for all of them)
  local table name sid
  table=$(ps -e -o sid=,stat= | awk '$2 !~ /^Z/ {print $1}')
  for name in "$@"; do
    sid=$(session_of "$name") || continue
    grep -qx "$sid" <<<"$table" && echo "$name"
  done
  return 0
}

signal_sessions() {  # signal_sessions SIGNAL NAME...: every process in each NAME's session
  local name pids
  for name in "${@:2}"; do
    pids=$(session_pids "$(session_of "$name")")
    [ -n "$pids" ] && kill "-$1" $pids 2>/dev/null || true
  done
}

stop_sessions() {  # stop_sessions SIGNAL NAME...: signal, wait up to 15 s, then SIGKILL what is left
  local sig=$1 name deadline=$((SECONDS + 15)); shift
  signal_sessions "$sig" "$@"
  while [ -n "$(alive_sessions "$@")" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
  local stuck
  stuck=$(alive_sessions "$@")
  if [ -n "$stuck" ]; then
    note "still running 15 s after SIG$sig, killed:" $stuck
    signal_sessions KILL $stuck
    deadline=$((SECONDS + 10))  # a killed process can take a moment to go
    while [ -n "$(alive_sessions $stuck)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
  fi
  for name in "$@"; do [ -n "$(alive_sessions "$name")" ] || rm -f "$DIR/pids/$name"; done
  return 0
}

start() {  # start NAME CMD...: run CMD in a new session, log to logs/NAME.log, record the session ID
  local name=$1; shift
  # FITSENSE_CLUSTER_ID marks the processes (and their children), so `down` can check none is left.
  FITSENSE_CLUSTER_ID=$DIR setsid "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo "$!" >"$DIR/pids/$name"
  echo "$name" >>"$DIR/pids/order"
}

wait_for() {  # wait_for NAME SECONDS CMD...: until CMD succeeds, or die pointing at NAME's log
  local name=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 2))); do
    "$@" >/dev/null 2>&1 && return 0
    [ -f "$DIR/pids/$name" ] && [ -z "$(session_pids "$(cat "$DIR/pids/$name")")" ] && break
    sleep 0.5
  done
  die "$name did not come up (see $DIR/logs/$name.log)"
}

http_ok() { python -c "import httpx, sys; sys.exit(httpx.get(sys.argv[1], timeout=5).status_code >= 400)" "$1"; }

apt_install() {  # apt_install PACKAGE: quietly, as root; a one-line reason when it cannot
  [ "$(id -u)" = 0 ] || die "$1 is missing and this user is not root: install it (apt-get install $1) or run as root"
  command -v apt-get >/dev/null || die "$1 is missing and there is no apt-get to install it"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"; } >"$DIR/logs/apt-$1.log" 2>&1 \
    || die "$1 is missing and apt-get could not install it (no network?); see $DIR/logs/apt-$1.log"
}

pg_bin() {
  local d
  d=$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || true)" 2>/dev/null)" 2>/dev/null || true)
  [ -x "$d/initdb" ] || d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

check_system() {
  [ -x .venv/bin/python ] || die "no .venv: run bash scripts/setup.sh first"
  python -c "import airflow.providers.celery, redis, psycopg" 2>/dev/null \
    || die "the Celery provider, redis or psycopg is not installed: run bash scripts/setup.sh"
  command -v redis-server >/dev/null || apt_install redis-server
  PG_BIN=$(pg_bin) || { apt_install postgresql; PG_BIN=$(pg_bin) || die "PostgreSQL installed but no initdb found"; }
  AS_PG=()
  if [ "$(id -u)" = 0 ]; then  # PostgreSQL refuses to run as root
    id postgres >/dev/null 2>&1 || die "running as root but there is no postgres user to run PostgreSQL as"
    AS_PG=(runuser -u postgres --)
  fi
}

write_env() {
  local secret
  secret=$(python -c "import secrets; print(secrets.token_hex(32))")
  cat >"$DIR/env.sh" <<EOF
# Sourced by every process of the cluster (and by \`trigger\`): one configuration for all components.
export AIRFLOW_HOME=$DIR/airflow
export AIRFLOW__CORE__DAGS_FOLDER=$REPO/dags
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
export AIRFLOW__CORE__PARALLELISM=8
export AIRFLOW__CORE__HOSTNAME_CALLABLE=fitsense.app.cluster.worker_hostname
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=fitsense:admin
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$DIR/airflow/passwords.json
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$API_PORT/execution/
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg://fitsense@127.0.0.1:$PG_PORT/airflow
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=postgresql+psycopg://fitsense@127.0.0.1:$PG_PORT/airflow
export AIRFLOW__CELERY__BROKER_URL=redis://127.0.0.1:$REDIS_PORT/0
export AIRFLOW__CELERY__RESULT_BACKEND=db+postgresql+psycopg://fitsense@127.0.0.1:$PG_PORT/airflow
export AIRFLOW__CELERY__WORKER_CONCURRENCY=1
export AIRFLOW__CELERY__SYNC_PARALLELISM=1
export AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT=3600
export AIRFLOW__API__WORKERS=1
export AIRFLOW__API__SECRET_KEY=$secret
export AIRFLOW__API_AUTH__JWT_SECRET=$secret
export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$((LOG_PORT + 2))
# A worker that dies is noticed within ~30 s and its task retried elsewhere (the default waits 5 min).
export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=30
export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL=5
export FITSENSE_TRAINING_QUEUE=gpu
export OPENAI_API_KEY=local-teacher
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
# MLflow's telemetry thread edits os.environ while the HTTP client reads it (KeyError under a tracking server).
export MLFLOW_DISABLE_TELEMETRY=true
export PATH=$REPO/.venv/bin:\$PATH
EOF
}

write_conf() {  # the tiny configuration, pointed at this cluster's services and shared directory
  cat >"$DIR/tiny-conf.json" <<EOF
{"run_id": "cluster", "teacher_shards": 2, "teacher_provider": "openai",
 "teacher_base_url": "http://127.0.0.1:$TEACHER_PORT/v1",
 "overrides": {"synthetic.n_users": $USERS, "queries.n_queries": $QUERIES,
   "run.artifacts_dir": "$DIR/artifacts", "teacher.cache_dir": "$DIR/teacher-cache", "teacher.concurrency": 1,
   "training.base_model": "$TINY_MODEL", "training.max_steps": 2, "training.batch_size": 2,
   "training.eval_steps": 1, "training.max_val_examples": 2, "training.max_length": 512,
   "evaluation.max_examples": 3, "evaluation.max_new_tokens": 8, "evaluation.batch_size": 3,
   "registry.tracking_uri": "http://127.0.0.1:$MLFLOW_PORT", "registry.artifact_location": "$DIR/mlartifacts"}}
EOF
}

up() {
  if [ -d "$DIR/pids" ] && [ -n "$(ls "$DIR/pids" 2>/dev/null)" ]; then
    die "a cluster is already up in $DIR: run scripts/airflow-cluster.sh down first"
  fi
  local t0=$SECONDS
  rm -rf "$DIR"
  mkdir -p "$DIR"/{logs,pids,airflow,artifacts,mlartifacts,redis}
  trap '[ $? = 0 ] || [ -z "$(ls "$DIR/pids")" ] || { echo "airflow-cluster: stopping what was started" >&2; down >/dev/null 2>&1; }' EXIT
  . .venv/bin/activate
  check_system
  write_env
  write_conf
  . "$DIR/env.sh"


  # The database lives in /tmp: the postgres user can reach it there, and its socket path stays short.
  PG_DIR=$(mktemp -d /tmp/fitsense-cluster-pg.XXXXXX)
  echo "$PG_DIR" >"$DIR/pg-dir"
  [ "$(id -u)" = 0 ] && chown postgres "$PG_DIR"
  "${AS_PG[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U fitsense >"$DIR/logs/initdb.log" 2>&1 \
    || die "initdb failed (see $DIR/logs/initdb.log)"
  start postgres "${AS_PG[@]}" "$PG_BIN/postgres" -D "$PG_DIR/data" -p "$PG_PORT" -k "$PG_DIR" \
    -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off
  start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR/redis" --save "" --appendonly no
  wait_for postgres 60 "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
  for db in airflow mlflow; do "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U fitsense "$db"; done
  wait_for redis 30 redis-cli -p "$REDIS_PORT" ping

  # The MLflow store migrates its schema while Airflow migrates its own.
  start mlflow mlflow server --backend-store-uri "postgresql+psycopg://fitsense@127.0.0.1:$PG_PORT/mlflow" \
    --default-artifact-root "file://$DIR/mlartifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
  airflow db migrate >"$DIR/logs/db-migrate.log" 2>&1 || die "airflow db migrate failed (see $DIR/logs/db-migrate.log)"
  airflow pools set fitsense_teacher 4 "concurrent teacher capture" >/dev/null 2>&1

  start api-server airflow api-server --host 127.0.0.1 --port "$API_PORT"
  start scheduler airflow scheduler
  start dag-processor airflow dag-processor
  start triggerer airflow triggerer
  FITSENSE_WORKER_NAME=worker-cpu AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$LOG_PORT \
    start worker-cpu airflow celery worker --queues default --concurrency 1 --celery-hostname "worker-cpu@%h"
  FITSENSE_WORKER_NAME=worker-gpu AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$((LOG_PORT + 1)) \
    start worker-gpu airflow celery worker --queues gpu,default --concurrency 1 --celery-hostname "worker-gpu@%h"

  # The local teacher endpoint answers the tiny configuration's queries, with latency per request.
  python -c "import sys; sys.path.insert(0, 'tests'); from tiny_model import build_tiny_model; build_tiny_model(sys.argv[1])" \
    "$TINY_MODEL" >"$DIR/logs/tiny-model.log" 2>&1 || die "could not build the tiny model (see $DIR/logs/tiny-model.log)"
  local fixture=(--set "run.artifacts_dir=$DIR/teacher-fixture" --set "synthetic.n_users=$USERS" --set "queries.n_queries=$QUERIES")
  fitsense run --run-id queries --to queries "${fixture[@]}" >"$DIR/logs/teacher-queries.log" 2>&1 \
    || die "could not build the teacher's queries (see $DIR/logs/teacher-queries.log)"
  start teacher fitsense teacher serve "${fixture[@]}" --queries "$DIR/teacher-fixture/queries/queries/queries.jsonl" \
    --port "$TEACHER_PORT" --latency-ms "$TEACHER_LATENCY_MS"

  wait_for api-server 180 http_ok "http://127.0.0.1:$API_PORT/api/v2/monitor/health"
  wait_for mlflow 180 http_ok "http://127.0.0.1:$MLFLOW_PORT/health"
  wait_for teacher 60 http_ok "http://127.0.0.1:$TEACHER_PORT/v1/models"
  note "up in $((SECONDS - t0)) s: Airflow http://127.0.0.1:$API_PORT (user fitsense, password in $DIR/airflow/passwords.json)," \
       "MLflow http://127.0.0.1:$MLFLOW_PORT, artifacts $DIR/artifacts, logs $DIR/logs"
}

trigger() {
  [ -f "$DIR/env.sh" ] || die "no cluster in $DIR: run scripts/airflow-cluster.sh up first"
  . "$DIR/env.sh"
  local conf args=()
  conf=$(cat "$DIR/tiny-conf.json")
  while [ $# -gt 0 ]; do
    case $1 in
      --run-id) conf=$(python -c "import json,sys; c=json.loads(sys.argv[1]); c['run_id']=sys.argv[2]; print(json.dumps(c))" "$conf" "$2"); shift 2 ;;
      --set) conf=$(python -c "import json,sys,yaml; c=json.loads(sys.argv[1]); k,v=sys.argv[2].split('=',1); c['overrides'][k]=yaml.safe_load(v); print(json.dumps(c))" "$conf" "$2"); shift 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  python -m fitsense.app.cluster trigger --api "http://127.0.0.1:$API_PORT" \
    --passwords-file "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" --conf "$conf" \
    --kill-command "bash $(printf %q "$REPO/scripts/airflow-cluster.sh") kill-worker" "${args[@]}"
}

status() {
  [ -f "$DIR/pids/order" ] || { echo "no cluster running in $DIR"; return 0; }
  local name n
  while read -r name; do
    n=$( [ -f "$DIR/pids/$name" ] && session_pids "$(cat "$DIR/pids/$name")" | wc -l || echo 0)
    printf '%-14s %s processes\n' "$name" "$n"
  done <"$DIR/pids/order"
}

kill_worker() {  # like a worker machine dying: SIGKILL to its whole session, task processes included
  [ -f "$DIR/pids/$1" ] || die "no running worker named $1"
  stop_sessions KILL "$1"
}

down() {
  [ -f "$DIR/pids/order" ] || { note "nothing to stop in $DIR"; return 0; }
  local name left=""
  # Clients first, all at once; the databases last (SIGINT: PostgreSQL's fast shutdown).
  stop_sessions TERM $(grep -vxE "postgres|redis" "$DIR/pids/order")
  stop_sessions TERM redis
  stop_sessions INT postgres
  if [ ! -f "$DIR/pids/postgres" ] && [ -f "$DIR/pg-dir" ]; then
    rm -rf "$(cat "$DIR/pg-dir")" "$DIR/pg-dir"  # the databases go with the cluster
  fi
  for name in $(cat "$DIR/pids/order"); do [ -f "$DIR/pids/$name" ] && left="$left $name"; done
  [ -z "$left" ] || die "could not stop:$left (see scripts/airflow-cluster.sh status; run down again)"
  rm -f "$DIR/pids/order"
  left=$(marked_pids)  # e.g. a task process that left its worker's session
  if [ -n "$left" ]; then
    kill -KILL $left 2>/dev/null || true
    note "killed leftover processes:" $left
  fi
  note "down: every process of the cluster stopped (artifacts and logs kept in $DIR)"
}

case ${1:-} in
  up) up ;;
  trigger) shift; trigger "$@" ;;
  status) status ;;
  kill-worker) kill_worker "${2:?worker name}" ;;
  down) down ;;
  *) die "usage: $0 up | trigger [--run-id ID] [--set key=value] [--kill-worker-during-shard NAME] [--report FILE] | status | kill-worker NAME | down" ;;
esac
