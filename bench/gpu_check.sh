#!/usr/bin/env bash
# One prepared check for a GPU machine that is only sometimes at hand: install the bundle, then the most
# valuable figures first, each step under its own `timeout`, 8 minutes in all (of a 10-minute call).
#
#   bash bench/gpu_check.sh [--dry-run] [--no-install] [--bundle DIR] [--stage DIR]
#   bash bench/gpu_check.sh --claim [--resume DIR] [--dry-run] [--no-install] [-- key=value ...]
#
# Steps, in order, most valuable first: stage + install the bundle (bench/gpu_bundle.py's call
# folders), versions; the training benchmark at 224 px, ResNet-50, bf16, channels_last, batch 128:
# the reference (a plain supervised ResNet-50 step) and the MoCo-v2 step on fixed tensors in one
# process, then MoCo-v2 fed by FFCV and by DALI `mixed` (samples/s and data stall), then the MoCo
# step without BN groups (the one-pass shuffle-BN's ceiling); prep of 256 px photos comes first
# where a loader needs it; then the loader benchmark (Composer-style epochs: samples/s and the
# epoch-start cost), `pytest -m gpu`, and `fasthpt demo --scale gpu` for whatever is left of the
# 8 minutes (its first runs time the claim preset's set-up and steps against its plan). Writes
# under $OUT (default out/gpu-check): gpu_check.jsonl (one line per step: status, exit code,
# seconds, limit, command), gpu_check.log (everything printed), loaders.jsonl, train.jsonl,
# gpu_tests.xml.
#
# Device calls. Plan B (the default): carry .gpu-bundle/call-1 (Composer, FFCV for cp312 and
# friends, ~13 MiB with the tree) and run this script once: DALI rows and tests are skipped, with
# the reason. Plan A adds DALI for CUDA 13 (256 MiB, 5 parts of 60 MiB): one call per part
# folder, back to back on the warm machine, each running this same script, which stages what the
# call carried and stops until call-1 arrives; the manifest's plan_a lists the carry of each call.
#
# --claim: the paper's claim instead (configs/demo-gpu.yaml, plan B's bundle: FFCV -> CUDA): install,
# versions, `fasthpt demo --scale gpu --budget-s` with the rest of the 8 minutes (the demo fits its
# scratch grid to 80% of it by its plan and prints the plan first), then `pack`: the report,
# results.json and figure, and the finished runs with their stored evaluations as claim-runs.tar.N
# parts (15 MiB each, at most 3), all in $OUT. The next call goes on from them: copy the parts into
# .claim-runs/ (ignored), carry it with .gpu-bundle/call-1 and run `--claim --resume .claim-runs`: the
# demo reads the finished runs back and trains the next budgets. `-- ARGS`: more `fasthpt demo`
# arguments (key=value preset overrides, --parallel N).
#
# --no-install runs the steps on the environment as it is (DALI's steps where it imports).
# --dry-run (the test suite runs it, tests/bench/test_gpu_check.py): every step's command printed
# and its wiring checked on the CPU (fasthpt command lines parsed by bench/parse_only.py, the gpu
# tests collected, the bundle's checksums verified where one is built), nothing CUDA executed; with
# --claim, the expected seconds of each step and of the call (the demo's --plan: fasthpt/experiment/
# gpu_cost.py, from the rates measured on the H200).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
INSTALL=1
BUNDLE=.gpu-bundle
STAGE=/tmp/fasthpt-bundle
CLAIM=0
RESUME=""
CLAIM_ARGS=()
while (($#)); do
  case $1 in
    --dry-run) DRY=1 ;;
    --no-install) INSTALL=0 ;;
    --bundle) BUNDLE=$2; shift ;;
    --stage) STAGE=$2; shift ;;
    --claim) CLAIM=1 ;;
    --resume) RESUME=$2; shift ;;
    --) shift; CLAIM_ARGS=("$@"); break ;;
    *) echo "gpu_check.sh: error: unknown argument $1 (valid: --dry-run, --no-install, --bundle DIR, --stage DIR," \
         "--claim, --resume DIR, -- key=value ...)" >&2; exit 2 ;;
  esac
  shift
done
if ((!CLAIM)) && { [ -n "$RESUME" ] || ((${#CLAIM_ARGS[@]})); }; then
  echo "gpu_check.sh: error: --resume and -- key=value go with --claim" >&2; exit 2
fi
if [ -n "$RESUME" ] && ! compgen -G "$RESUME/claim-runs.tar.*" >/dev/null; then
  echo "gpu_check.sh: error: --resume $RESUME holds no claim-runs.tar.* parts (a --claim call's \$OUT)" >&2; exit 2
fi
if ((DRY)); then PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
else PYTHON=${PYTHON:-python3}; fi  # the GPU machine's python3 holds torch 2.11
OUT=${OUT:-out/gpu-check}
SCRATCH=${SCRATCH:-/tmp/fasthpt-check}
NPROC=$(nproc)
# 8 minutes of a 10-minute call: each step's limit in seconds; the demo takes what is left (a call
# with less time left can shrink the demo's share with GPU_CHECK_BUDGET_S)
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
FLOOR_S=${GPU_CHECK_FLOOR_S:-20}  # the least the demo (or the claim) gets when the budget is spent
# (H200, 2026-11-30: the cold imports took over 20 s; three loaders at 16 workers over 75 s, the torch
# baseline the slowest: its CPU row is bench/RESULTS.md's, the GPU check times the two GPU loaders)
declare -A LIMIT=([install]=60 [env]=30 [train_synthetic]=70 [prep]=40 [train_ffcv]=55 [train_dali]=50
                  [train_groups]=40 [loaders]=60 [gpu_tests]=50)
# --claim: install, env, claim (the rest), pack; what each is expected to take, from what was
# measured: install 13 s (the H200's 39 wheels, DALI's included; call-1 alone is fewer), the version
# probe at its limit (it ran past 20 s on the cold H200), pack a tar of ~35 MB; the claim's own
# figure comes from its plan
declare -A CLAIM_LIMIT=([install]=60 [env]=30 [pack]=20) EXPECT=([install]=13 [env]=30 [pack]=2)
CLAIM_OUT=$SCRATCH/claim
PACK_PARTS=3  # at most 8 files come back from a call: 5 are the log, the rows, report, results, figure
mkdir -p "$OUT"
JSONL=$OUT/gpu_check.jsonl
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
TEE=$!
finish() {  # exit once the log's last lines are on disk (before the call returns)
  exec >&- 2>&-
  wait "$TEE"
  exit "$1"
}
START=$SECONDS
FAILED=0
DALI_READY=0

# emit STEP STATUS RC SECONDS LIMIT DETAIL CMD...: one JSON line (DETAIL: JSON or text, may be empty)
emit() {
  "$PYTHON" - "$@" >>"$JSONL" <<'PY'
import json, sys
step, status, rc, secs, limit, detail, *cmd = sys.argv[1:]
row = {"step": step, "status": status, "rc": int(rc), "seconds": int(secs), "limit_s": int(limit), "cmd": cmd}
if detail:
    try:
        row["detail"] = json.loads(detail)
    except ValueError:
        row["detail"] = detail.strip().splitlines()[-1]
print(json.dumps(row))
PY
}

# run STEP KIND ARGS...: KIND fasthpt (ARGS: a fasthpt command line) or pytest (ARGS: pytest's).
# Real: the command under `timeout`. Dry: the fasthpt line parsed (bench/parse_only.py), the tests
# collected; nothing runs.
run() {
  local step=$1 limit=${LIMIT[$1]} kind=$2 t0=$SECONDS rc out="" status cmd
  shift 2
  case $kind in
    fasthpt) cmd=("$PYTHON" -m fasthpt.cli "$@") ;;
    pytest) cmd=("$PYTHON" -m pytest "$@") ;;
  esac
  echo "=== $step (limit ${limit}s): ${cmd[*]}"
  if ((DRY)); then
    case $kind in
      fasthpt) out=$("$PYTHON" bench/parse_only.py "$@" 2>&1); rc=$? ;;
      pytest) out=$("${cmd[@]}" --collect-only 2>&1); rc=$?
              local n; n=$(grep -c '::' <<<"$out")
              if ((rc == 0 && n > 0)); then out="{\"collected\": $n}"; elif ((rc == 0)); then rc=1; fi ;;
    esac
    echo "$out"
    status=$([ "$rc" = 0 ] && echo wired || echo not_wired)
  else
    timeout -k 10 "$limit" "${cmd[@]}"; rc=$?
    case $rc in 0) status=ok ;; 124 | 137) status=timed_out ;; *) status=failed ;; esac
    [ "$step" = demo ] && [ "$status" = timed_out ] && status=bounded  # it runs until the budget ends
    [ "$step" = claim ] && [ "$status" = timed_out ] && status=bounded  # its finished runs are packed
  fi
  [[ $status == ok || $status == wired || $status == bounded ]] || FAILED=1
  emit "$step" "$status" "$rc" $((SECONDS - t0)) "$limit" "$out" "${cmd[@]}"
}

skip() {  # skip STEP REASON CMD...
  echo "=== $1: skipped: $2"
  emit "$1" skipped 0 0 0 "$2" "${@:3}"
}

left() { echo $((BUDGET_S - (SECONDS - START))); }

# within LIMIT T0 CMD...: CMD under `timeout` for what is left of LIMIT seconds counted from T0
within() {
  local limit=$1 t0=$2
  shift 2
  timeout -k 5 $((limit - (SECONDS - t0) > 1 ? limit - (SECONDS - t0) : 1)) "$@"
}

install() {
  local t0=$SECONDS st rc limit=${LIMIT[install]}
  if ((DRY)); then
    st=$("$PYTHON" bench/gpu_stage.py --bundle "$BUNDLE" --check-only); rc=$?
    echo "$st"
    emit install "$([ $rc = 0 ] && echo wired || echo not_wired)" $rc $((SECONDS - t0)) $limit "$st" \
      "$PYTHON" bench/gpu_stage.py --bundle "$BUNDLE" --stage "$STAGE" "&&" "$PYTHON" -m pip install --no-index --no-deps
    return $rc
  fi
  st=$(within $limit "$t0" "$PYTHON" bench/gpu_stage.py --bundle "$BUNDLE" --stage "$STAGE") || {
    emit install failed 1 $((SECONDS - t0)) $limit "staging failed (see the log)" bench/gpu_stage.py; finish 1; }
  echo "$st"
  field() { "$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1]).get(sys.argv[2], False))' "$st" "$1"; }
  if [ "$(field base_ready)" != True ]; then  # a plan-A part call: staged; call-1 comes in the last call
    emit install staged 0 $((SECONDS - t0)) $limit "$st" bench/gpu_stage.py
    finish 0
  fi
  [ "$(field dali_ready)" = True ] && DALI_READY=1
  local wheels=("$STAGE"/base/*.whl) pip=("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade)
  ((DALI_READY)) && wheels+=("$STAGE"/dali/*.whl)
  # Into the interpreter's own environment (the machine is bare at each start), so that the
  # `nvidia` package of DALI's wheels merges with torch's; a separate folder on PYTHONPATH if not.
  if ! within $limit "$t0" "${pip[@]}" "${wheels[@]}"; then
    within $limit "$t0" "${pip[@]}" --target "$STAGE/site" "${wheels[@]}" || {
      emit install failed 1 $((SECONDS - t0)) $limit "pip install failed (see the log)" "${pip[@]}"; finish 1; }
    export PYTHONPATH="$STAGE/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$PYTHON" -m pip check || true  # reported, not fatal: Composer's own pins (torch < 2.7.1, ...) fail it
  emit install ok 0 $((SECONDS - t0)) $limit "$st" "${pip[@]}" "${#wheels[@]} wheels"
}

# the versions that the figures belong to; runs in the dry run too (it asks CUDA nothing but
# whether it is there)
versions() {
  local t0=$SECONDS out rc
  echo "=== env (limit ${LIMIT[env]}s)"
  out=$(timeout "${LIMIT[env]}" "$PYTHON" - 2>&1 <<'PY'
import importlib, json, platform
import torch
row = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
for name in ("torchvision", "numpy", "composer", "ffcv", "nvidia.dali", "cv2", "numba"):
    try:
        row[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as exc:  # a missing or broken package is a finding here, not a stop
        row[name] = f"unavailable: {type(exc).__name__}: {exc}"
print(json.dumps(row))
PY
  ); rc=$?
  echo "$out"
  ((rc)) && FAILED=1
  emit env "$([ $rc = 0 ] && echo ok || echo failed)" $rc $((SECONDS - t0)) "${LIMIT[env]}" "$out" "$PYTHON" "(version probe)"
}

main() {
  emit start "$( ((DRY)) && echo dry_run || echo real)" 0 0 $BUDGET_S "{\"nproc\": $NPROC}" bench/gpu_check.sh
  if ((INSTALL)); then
    install || FAILED=1
  else
    "$PYTHON" -c "import nvidia.dali" 2>/dev/null && DALI_READY=1
    skip install "--no-install: the environment as it is" "$PYTHON"
  fi
  versions
  local data=$SCRATCH/natural nodali=()
  ((DRY || DALI_READY)) || nodali=(-k "not dali")
  local train=(bench train --arch resnet50 --res 224 --batch 128 --workers "$NPROC" --queue 65536
               --warmup 10 --batches 40 --algorithms channels_last --json "$OUT/train.jsonl")
  # the reference first: a supervised ResNet-50 step, then the MoCo-v2 step on fixed tensors, one process
  run train_synthetic fasthpt "${train[@]}" --data synthetic --reference train.precision=amp_bf16
  # 256 px photos stored as JPEG, views cropped to 224 (as bench/run_all.sh's loader rows)
  run prep fasthpt prep --dataset natural --num-images 3000 --image-size 256 --out "$SCRATCH" \
    --workers "$NPROC" --no-progress
  # one command per loader: a row that fails costs no other row its figure
  run train_ffcv fasthpt "${train[@]}" --data "$data" --backends ffcv train.precision=amp_bf16
  if ((DRY || DALI_READY)); then
    run train_dali fasthpt "${train[@]}" --data "$data" --backends dali train.precision=amp_bf16
  else
    skip train_dali "DALI is not in this bundle (plan B)" fasthpt "${train[@]}" --data "$data" --backends dali
  fi
  # one-pass shuffle-BN (2 BN groups of 64 on one GPU) against the same step without groups
  run train_groups fasthpt "${train[@]}" --data synthetic model.shuffle_bn=none train.precision=amp_bf16
  run loaders fasthpt bench loaders --data "$data" --backends ffcv,dali --res 224 --batch 256 \
    --workers "$NPROC" --device cuda --warmup 5 --batches 15 --repeats 3 --json "$OUT/loaders.jsonl"
  run gpu_tests pytest -q -p no:cacheprovider -m gpu --timeout 60 --junitxml "$OUT/gpu_tests.xml" \
    "${nodali[@]}" tests
  # the demo gets what is left of the budget (in the dry run: what is left if every step used its limit)
  local fixed=0 k
  for k in "${!LIMIT[@]}"; do fixed=$((fixed + LIMIT[$k])); done
  LIMIT[demo]=$(($(left) > FLOOR_S ? $(left) : FLOOR_S))
  ((DRY)) && LIMIT[demo]=$((BUDGET_S - fixed))
  run demo fasthpt demo --scale gpu --out "$SCRATCH/demo" --data "$SCRATCH/demo-data"
  emit end "$( ((FAILED)) && echo failed || echo ok)" $FAILED $((SECONDS - START)) $BUDGET_S "" bench/gpu_check.sh
  echo "gpu_check: $( ((FAILED)) && echo 'some steps failed' || echo 'every step passed') in $((SECONDS - START)) s; see $JSONL"
  return $FAILED
}

# the claim's expected seconds (its plan, fitted to CLAIM_FIT; a dry run plans a first call: a
# --resume's runs are not unpacked), printed, and the call's: every step's expected seconds and their
# sum against the budget; exit 3 when over it
claim_plan() {
  local plan rc
  plan=$("$PYTHON" -m fasthpt.cli demo --scale gpu --plan --json --budget-s "$CLAIM_FIT" --out "$CLAIM_OUT" \
    "${CLAIM_ARGS[@]}" 2>&1); rc=$?
  ((rc)) && { echo "$plan"; return $rc; }
  "$PYTHON" - "$plan" "${CLAIM_LIMIT[install]}:${EXPECT[install]}" "${CLAIM_LIMIT[env]}:${EXPECT[env]}" \
    "${LIMIT[claim]}:" "${CLAIM_LIMIT[pack]}:${EXPECT[pack]}" "$BUDGET_S" <<'PY'
import json, sys
plan, *steps, budget = sys.argv[1:]
plan = json.loads(plan.strip().splitlines()[-1])
rows = []
for name, spec in zip(("install", "env", "claim", "pack"), steps):
    limit, expect = spec.split(":")
    rows.append((name, int(limit), float(expect) if expect else plan["total_s"]))
for name, limit, expect in rows:
    print(f"expected {name:<8} {expect:6.0f} s (limit {limit} s)")
total = sum(e for _, _, e in rows)
print(f"expected total   {total:6.0f} s of {budget} s; the claim's phases: "
      + ", ".join(f"{k} {v:.0f} s" for k, v in plan["phases_s"].items()) + f"; up to {plan['high_s']:.0f} s")
caps = [c["scratch_cap"] for c in plan["calls"]]
print(f"this call: scratch up to {plan['scratch_cap']}; the preset (up to {plan['preset_scratch_cap']}) in "
      f"{len(caps)} call(s) of this budget, resumed with --resume: scratch up to {', '.join(map(str, caps))}")
print(json.dumps({**plan, "expected_s": {n: round(e, 1) for n, _, e in rows}, "expected_total_s": round(total, 1)}))
over = [n for n, limit, e in rows if e > limit] + (["total"] if total > int(budget) else [])
if over:
    print(f"over budget on paper: {', '.join(over)}", file=sys.stderr)
    sys.exit(3)
PY
}

# the claim's results and its finished runs (backbones, results, evaluations) into $OUT, the runs
# as tar parts a second call unpacks (--resume)
pack() {
  local t0=$SECONDS files=() rc=0 n
  echo "=== pack (limit ${CLAIM_LIMIT[pack]}s)"
  if ((DRY)); then
    emit pack wired 0 0 "${CLAIM_LIMIT[pack]}" "" tar split; return 0
  fi
  for f in report.md results.json convergence.png; do
    [ -f "$CLAIM_OUT/$f" ] && cp "$CLAIM_OUT/$f" "$OUT/claim-$f" && files+=("claim-$f")
  done
  (cd "$CLAIM_OUT" 2>/dev/null && compgen -G "runs/*/demo_result.json" >/dev/null) || {
    emit pack ok 0 $((SECONDS - t0)) "${CLAIM_LIMIT[pack]}" "no finished run to pack" "${files[@]}"; return 0; }
  (cd "$CLAIM_OUT" && tar -cf - runs/*/demo_result.json runs/*/backbone.pt $(ls -d evaluations 2>/dev/null)) |
    split -d -a 1 -b 15M - "$OUT/claim-runs.tar." || rc=1
  n=$(compgen -G "$OUT/claim-runs.tar.*" | wc -l)
  if ((n > PACK_PARTS)); then
    rm -f "$OUT"/claim-runs.tar.*  # only what this step wrote
    emit pack failed 1 $((SECONDS - t0)) "${CLAIM_LIMIT[pack]}" "the runs need $n parts of 15 MiB; $PACK_PARTS come back" tar
    FAILED=1; return 1
  fi
  ((rc)) && FAILED=1
  emit pack "$( ((rc)) && echo failed || echo ok)" $rc $((SECONDS - t0)) "${CLAIM_LIMIT[pack]}" \
    "{\"parts\": $n, \"files\": \"${files[*]}\"}" tar split
}

claim_main() {
  emit start "$( ((DRY)) && echo dry_run || echo real)" 0 0 $BUDGET_S "{\"nproc\": $NPROC, \"claim\": true}" \
    bench/gpu_check.sh --claim
  LIMIT[install]=${CLAIM_LIMIT[install]}
  LIMIT[env]=${CLAIM_LIMIT[env]}
  if ((INSTALL)); then install || FAILED=1; else skip install "--no-install: the environment as it is" "$PYTHON"; fi
  versions
  if [ -n "$RESUME" ] && ((!DRY)); then  # the finished runs of an earlier call, read back by the demo
    mkdir -p "$CLAIM_OUT" && cat "$RESUME"/claim-runs.tar.* | tar -xf - -C "$CLAIM_OUT" || FAILED=1
  fi
  LIMIT[claim]=$((BUDGET_S - CLAIM_LIMIT[install] - CLAIM_LIMIT[env] - CLAIM_LIMIT[pack]))
  ((DRY)) || LIMIT[claim]=$(( $(left) - CLAIM_LIMIT[pack] > FLOOR_S ? $(left) - CLAIM_LIMIT[pack] : FLOOR_S ))
  CLAIM_FIT=$((LIMIT[claim] * 4 / 5))  # the demo fits its scratch grid to 80% of its limit: the estimate's margin
  if ((DRY)); then  # the plan; a real call's demo prints it itself, on the GPU, and keeps it in results.json
    local t0=$SECONDS plan rc cmd=("$PYTHON" -m fasthpt.cli demo --scale gpu --budget-s "$CLAIM_FIT" --out "$CLAIM_OUT"
                                    --data "$SCRATCH/claim-data" "${CLAIM_ARGS[@]}")
    echo "=== claim (limit ${LIMIT[claim]}s): ${cmd[*]}"
    plan=$(claim_plan 2>&1); rc=$?
    echo "$plan"
    ((rc)) && FAILED=1
    local status=wired
    ((rc == 3)) && status=over_budget
    ((rc && rc != 3)) && status=not_wired
    emit claim $status $rc $((SECONDS - t0)) "${LIMIT[claim]}" "$(grep '^{' <<<"$plan" | tail -n 1)" "${cmd[@]}"
  else
    run claim fasthpt demo --scale gpu --budget-s "$CLAIM_FIT" --out "$CLAIM_OUT" --data "$SCRATCH/claim-data" \
      "${CLAIM_ARGS[@]}"
  fi
  pack
  emit end "$( ((FAILED)) && echo failed || echo ok)" $FAILED $((SECONDS - START)) $BUDGET_S "" bench/gpu_check.sh --claim
  echo "gpu_check --claim: $( ((FAILED)) && echo 'some steps failed' || echo 'every step passed') in" \
    "$((SECONDS - START)) s; see $JSONL"
  return $FAILED
}

if ((CLAIM)); then claim_main; else main; fi
finish $?
