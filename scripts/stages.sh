# Shell helpers shared by scripts/train_demo_model.sh and scripts/run_experiments.sh (sourced, not run).
# Both expect $OUT (the run root) to be set.

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# stage NAME DONE -- command...: skip when $OUT/DONE exists (the file each stage writes last, so a stage that
# died half-way is rerun, and resumes from its checkpoint); the command's output goes to $OUT/NAME.log.
stage() {
  local name=$1 done_file=$2
  shift 3
  if [ -f "$OUT/$done_file" ]; then
    log "$name: finished earlier ($OUT/$done_file), skipped"
    return 0
  fi
  log "$name: running (log: $OUT/$name.log)"
  if ! "$@" > "$OUT/$name.log" 2>&1; then
    tail -n 30 "$OUT/$name.log" >&2
    log "$name: failed; rerun the script to resume from its last checkpoint"
    exit 1
  fi
}

# SFT and GRPO resume through transformers: pass `last` when the stage left a checkpoint-N behind.
resume_flag() {
  if compgen -G "$OUT/$1/checkpoint-*" > /dev/null; then echo "--resume_from_checkpoint last"; fi
}

# refusable NAME PATTERN DONE_TEXT SMOKE_TEXT -- command...: run as `stage NAME NAME.done -- refusable ...` a step that
# rightly refuses a smoke model (too little to choose or fit on). It writes $OUT/NAME.done with DONE_TEXT when the
# command succeeds; in smoke mode only, a refusal whose message matches PATTERN in $OUT/NAME.log is recorded as
# "smoke: SMOKE_TEXT" and the chain goes on. Any other failure fails the stage.
refusable() {
  local name=$1 pattern=$2 done_text=$3 smoke_text=$4
  shift 5
  if "$@"; then
    echo "$done_text" > "$OUT/$name.done"
  elif [ "${SMOKE:-0}" = 1 ] && grep -q "$pattern" "$OUT/$name.log"; then
    echo "smoke: $smoke_text" > "$OUT/$name.done"
  else
    return 1
  fi
}
