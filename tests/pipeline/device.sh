#!/usr/bin/env bash
# tests/pipeline/device.sh: --device auto|cpu|cuda (common/device.h) on quantize, eval, generate.
#   device.sh E8Q MPIEXEC CASE
# cpu: what must hold on any machine. On one without a usable CUDA device: --device auto says so
#      in one line (rank 0 only, also on 2 ranks) and gives the bits of --device cpu; --device
#      cuda is fatal at once naming the rank and CUDA's reason (quantize creates nothing); a
#      wrong value is refused naming the option. On a GPU machine: auto picks the device.
# gpu: the CUDA path (exit 77, skipped, without a device): eval of a 2-bit artifact with its
#      quantized linears on the GPU equals the CPU's mean NLL within 1e-4 (relative), on 1 and
#      2 ranks (NCCL opened when each rank has its own GPU, else the ranks share one and keep
#      MPI: NCCL refuses two ranks on one GPU) and layer-pipelined, and so does eval of the dense model (blocks and
#      head on the device); quantize --device cuda (Hessian products,
#      their Cholesky, LDLQ and the validation evaluation on the device) gives the same bytes on 1 and 2 ranks, records
#      the device, and is the CPU artifact within the stated tolerances: the Hessians and LDLQ's
#      feedback products differ from the CPU's only in the order of float64 additions, so at
#      least 99% of the codes are equal
#      (rounding ties can flip, and a flip changes the feedback of the row's later columns) and
#      the recorded NLL is within 1e-3 (relative) of the CPU run's. With block and end-to-end
#      fine-tuning on the device (--ft all, one epoch each): 1 and 2 GPU ranks give the same bytes
#      (each sequence's gradient from fixed-order kernels, exact sums through NCCL), and the
#      recorded NLL is within 1e-2 (relative) of the CPU's fine-tuned run (float32 gradients
#      summed in other orders).
set -u
E8Q=$1; MPIEXEC=$2; CASE=$3
SHARED=${E8Q_SHARED:?}
MODEL=$SHARED/models/stories260K-hf
TEXT=$SHARED/text/tinystories_valid_head.txt
TMP=${E8Q_TEST_TMP:-/tmp}/device-$CASE-$$
rm -rf "$TMP"; mkdir -p "$TMP"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
fail() { echo "FAIL [device $CASE]: $*" >&2; exit 1; }
q() { # q NP OUT [extra options...]
  local np=$1 out=$2; shift 2
  timeout -k 5 120 "$MPIEXEC" -np "$np" "$E8Q" quantize --model "$MODEL" --calib "$TEXT" --calib-skip 1000 --devset 16 \
    --ctx 64 --tune-iters 1 --seed 3 --ft "${FT:-none}" --ft-epochs 1 --bits 2 --out "$out" "$@"
}
ev() { # ev NP [extra options...]: the eval JSON line of $TMP/a.e8q on the first 20 lines
  local np=$1; shift
  timeout -k 5 120 "$MPIEXEC" -np "$np" "$E8Q" eval --artifact "$TMP/a.e8q" --text "$TEXT" --per-line 20 "$@" 2> "$TMP/ev.err" | tail -1
}
js() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
q 1 "$TMP/a.e8q" --device cpu > "$TMP/q.log" 2>&1 || { cat "$TMP/q.log"; fail "quantize --device cpu failed"; }
grep -q "quantize: device cpu (--device cpu), 1 rank" "$TMP/q.log" || { cat "$TMP/q.log"; fail "quantize did not print its device"; }
auto=$(ev 1 --device auto) || { cat "$TMP/ev.err"; fail "eval --device auto failed"; }
have_gpu=1
grep -q "eval: device cpu (--device auto: no CUDA device: " "$TMP/ev.err" && have_gpu=0

case $CASE in
cpu)
  cpu=$(ev 1 --device cpu) || { cat "$TMP/ev.err"; fail "eval --device cpu failed"; }
  [ "$(js "$cpu" device)" = cpu ] || fail "eval --device cpu: device $(js "$cpu" device)"
  if [ $have_gpu = 1 ]; then
    case "$(js "$auto" device)" in cuda:*) ;; *) fail "a CUDA device is usable but --device auto chose $(js "$auto" device)";; esac
    echo "PASS [device cpu] (a CUDA device is present: auto chose $(js "$auto" device); the gpu case checks it)"
    exit 0
  fi
  [ "$(js "$auto" device)" = cpu ] || fail "--device auto without a GPU: device $(js "$auto" device)"
  [ "$(js "$auto" sum_nll)" = "$(js "$cpu" sum_nll)" ] || fail "--device auto and cpu differ: $(js "$auto" sum_nll) vs $(js "$cpu" sum_nll)"
  # on 2 ranks the fallback is said once, by rank 0
  ev 2 --device auto > /dev/null || { cat "$TMP/ev.err"; fail "2-rank eval --device auto failed"; }
  n=$(grep -c "device cpu (--device auto" "$TMP/ev.err")
  [ "$n" = 1 ] || { cat "$TMP/ev.err"; fail "2 ranks: the fallback line was printed $n times"; }
  # --device cuda without a device: fatal at once, naming the rank and the reason
  for cmd in eval generate; do
    if [ $cmd = eval ]; then args=(--artifact "$TMP/a.e8q" --text "$TEXT" --per-line 2); else args=(--artifact "$TMP/a.e8q" --tokens 2); fi
    timeout -k 5 60 "$MPIEXEC" -np 1 "$E8Q" $cmd "${args[@]}" --device cuda > "$TMP/c.out" 2> "$TMP/c.err" && fail "$cmd --device cuda succeeded without a GPU"
    grep -q "$cmd --device cuda: rank 0 (node rank 0) sees no usable CUDA device (" "$TMP/c.err" || { cat "$TMP/c.err"; fail "$cmd --device cuda: unclear error"; }
    [ ! -s "$TMP/c.out" ] || fail "$cmd --device cuda printed results before failing"
  done
  q 1 "$TMP/c.e8q" --device cuda > "$TMP/c.log" 2>&1 && fail "quantize --device cuda succeeded without a GPU"
  grep -q "quantize --device cuda: rank 0 (node rank 0) sees no usable CUDA device" "$TMP/c.log" || { cat "$TMP/c.log"; fail "quantize --device cuda: unclear error"; }
  [ ! -e "$TMP/c.e8q.run" ] && [ ! -e "$TMP/c.e8q" ] || fail "quantize --device cuda created files before failing"
  # a wrong value is refused naming the option
  "$E8Q" eval --artifact "$TMP/a.e8q" --text "$TEXT" --device gpu > /dev/null 2> "$TMP/w.err" && fail "--device gpu accepted"
  grep -q "\-\-device 'gpu': use auto" "$TMP/w.err" || { cat "$TMP/w.err"; fail "--device gpu: unclear error"; }
  ;;
gpu)
  [ $have_gpu = 1 ] || { echo "SKIP [device gpu]: no usable CUDA device ($(grep -o 'no CUDA device: [^)]*' "$TMP/ev.err"))"; exit 77; }
  cpu=$(ev 1 --device cpu) || { cat "$TMP/ev.err"; fail "eval --device cpu failed"; }
  close() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(abs(a-b) > 1e-4*abs(b))" "$1" "$2"; }
  for run in "1" "2" "2 --pipeline 2"; do
    # shellcheck disable=SC2086
    g=$(ev $run --device cuda) || { cat "$TMP/ev.err"; fail "eval --device cuda on $run failed"; }
    case "$(js "$g" device)" in cuda:*) ;; *) fail "eval --device cuda ($run): device $(js "$g" device)";; esac
    close "$(js "$g" mean_nll)" "$(js "$cpu" mean_nll)" || fail "eval on the GPU ($run): NLL $(js "$g" mean_nll) vs CPU $(js "$cpu" mean_nll)"
    echo "eval ($run ranks): GPU $(js "$g" mean_nll) CPU $(js "$cpu" mean_nll)"
  done
  # the dense model: its blocks (dense weights uploaded once into the workspace's cache, for every
  # line) and its final norm and head on the device, the CPU's NLL within 1e-4
  for dev in cpu cuda; do
    timeout -k 5 120 "$MPIEXEC" -np 1 "$E8Q" eval --model "$MODEL" --text "$TEXT" --per-line 20 --device $dev \
      2> "$TMP/ev.err" | tail -1 > "$TMP/dense.$dev" || { cat "$TMP/ev.err"; fail "eval --model --device $dev failed"; }
  done
  dg=$(cat "$TMP/dense.cuda"); dc=$(cat "$TMP/dense.cpu")
  close "$(js "$dg" mean_nll)" "$(js "$dc" mean_nll)" || fail "dense eval on the GPU: NLL $(js "$dg" mean_nll) vs CPU $(js "$dc" mean_nll)"
  echo "eval --model: GPU $(js "$dg" mean_nll) CPU $(js "$dc" mean_nll)"
  q 2 "$TMP/g.e8q" --device cuda --eval-text "$TEXT" > "$TMP/g.log" 2>&1 || { cat "$TMP/g.log"; fail "quantize --device cuda failed"; }
  q 1 "$TMP/g1.e8q" --device cuda --eval-text "$TEXT" > "$TMP/g1.log" 2>&1 || { cat "$TMP/g1.log"; fail "1-rank quantize --device cuda failed"; }
  cmp "$TMP/g.e8q" "$TMP/g1.e8q" || fail "quantize --device cuda: 1 and 2 ranks differ"
  q 2 "$TMP/c.e8q" --device cpu --eval-text "$TEXT" > "$TMP/c.log" 2>&1 || { cat "$TMP/c.log"; fail "quantize --device cpu failed"; }
  python3 - "$TMP/g.e8q" "$TMP/c.e8q" <<'PY' || fail "quantize --device cuda: not the CPU artifact within the tolerances"
import json, struct, subprocess, sys
def member(a, name): return subprocess.check_output(["tar", "-xOf", a, name])
def codes(a):  # every codes tensor of model.safetensors, as bytes by name
    b = member(a, "model.safetensors"); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items() if k.endswith("codes")}
g, c = codes(sys.argv[1]), codes(sys.argv[2])
assert g.keys() == c.keys() and g, (sorted(g)[:3], sorted(c)[:3])
same = sum(sum(x == y for x, y in zip(memoryview(g[k]).cast("H"), memoryview(c[k]).cast("H"))) for k in g)
total = sum(len(g[k]) // 2 for k in g)
print(f"codes equal to the CPU run's: {same}/{total} ({100 * same / total:.3f}%)")
assert same >= 0.99 * total
m = [json.loads(member(a, "manifest.json")) for a in sys.argv[1:]]
ge, ce = (x["evaluation"] for x in m)
assert ge["device"].startswith("cuda:") and ce["device"] == "cpu", (ge["device"], ce["device"])
print(f"recorded NLL: GPU {ge['mean_nll']} CPU {ce['mean_nll']}")
assert abs(ge["mean_nll"] - ce["mean_nll"]) <= 1e-3 * abs(ce["mean_nll"]), (ge["mean_nll"], ce["mean_nll"])
PY
  for np in 1 2; do
    FT=all q $np "$TMP/f$np.e8q" --device cuda --e2e-epochs 1 --eval-text "$TEXT" > "$TMP/f.log" 2>&1 || { cat "$TMP/f.log"; fail "quantize --device cuda --ft all on $np ranks failed"; }
  done
  cmp "$TMP/f1.e8q" "$TMP/f2.e8q" || fail "quantize --device cuda --ft all: 1 and 2 ranks differ"
  FT=all q 2 "$TMP/fc.e8q" --device cpu --e2e-epochs 1 --eval-text "$TEXT" > "$TMP/fc.log" 2>&1 || { cat "$TMP/fc.log"; fail "quantize --device cpu --ft all failed"; }
  python3 - "$TMP/f2.e8q" "$TMP/fc.e8q" <<'PY' || fail "fine-tuning on the GPU: NLL not the CPU's within 1e-2"
import json, subprocess, sys
g, c = (json.loads(subprocess.check_output(["tar", "-xOf", a, "manifest.json"]))["evaluation"] for a in sys.argv[1:])
print(f"fine-tuned, recorded NLL: GPU {g['mean_nll']} CPU {c['mean_nll']}")
assert abs(g["mean_nll"] - c["mean_nll"]) <= 1e-2 * abs(c["mean_nll"]), (g["mean_nll"], c["mean_nll"])
PY
  ;;
*) fail "unknown case" ;;
esac
echo "PASS [device $CASE]"
rm -rf "$TMP"
