#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time each (default 60 s), seeding their corpora first:
#   bash fuzz/run.sh [SECONDS] [TARGET...]        (no TARGET: all of them)
# Needs a nightly toolchain (rustup toolchain install nightly), cargo-fuzz
# (cargo install cargo-fuzz) and python3 (seeds.py writes the structured seeds).
#
# Targets: scanner_frames, scanner_oracle (the frame decoder against its reference model in
# devices/src/test_support.rs: any disagreement is a crash), plc_registers, platform_messages, config (device frames, PLC
# registers, platform messages, configuration text); xray_registers (the X-ray verdict ring);
# evidence_images (image and snapshot intake: process() and the spool/upload name rules;
# inputs up to 64 KiB); camera_digest (a camera's digest challenge, answered as
# camera::fetch does).
#
# Corpora grow in fuzz/corpus/<target> (not committed: they are regenerated from the seeds
# and grow again on every run). A crash stops the script; libFuzzer saves the input as
# fuzz/artifacts/<target>/crash-<sha1> (or leak-, timeout-, oom-) and it is named below.
# Then:
#   1. reproduce:  cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/crash-...
#   2. minimise:   cargo +nightly fuzz tmin <target> artifacts/<target>/crash-...
#                  (writes artifacts/<target>/minimized-from-...)
#   3. look at it: cargo +nightly fuzz fmt <target> <minimised file>; xxd -p <minimised file>
#   4. add a regression #[test] next to the code that broke (not in fuzz/), with the
#      minimised input inline as bytes or hex, and see it fail;
#   5. fix the code, see the test pass, and run this script again for that target.
# Artifacts are not committed either: the regression test is the record of the crash.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
all=(scanner_frames scanner_oracle plc_registers platform_messages config xray_registers evidence_images camera_digest)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi
for t in "${targets[@]}"; do
  case " ${all[*]} " in
    *" $t "*) ;;
    *) echo "unknown target $t (one of: ${all[*]})" >&2; exit 2 ;;
  esac
done

seed_corpus() {
  local t="$1"
  mkdir -p "corpus/$t"
  case "$t" in
    scanner_frames|scanner_oracle) printf '\x00\x02BL0001234567\x03\x02NOREAD\x03BL000123,1.250\r\n' > "corpus/$t/seed" ;;
    plc_registers) printf '\x00\x01\x00\x02\x00\x00\x00\x07\x01\x02' > "corpus/$t/seed" ;;
    platform_messages)
      cp ../deploy/rules.toml "corpus/$t/rules.toml"
      printf '{"schema":1,"waybill":"BL1","enterprise":"E1","consumer":"c","identity_verified":true,"value_minor":100,"currency":"CNY","gross_weight_g":10,"items":[]}' > "corpus/$t/decl"
      printf '{"schema":1,"instruction_id":"i","waybill":"BL1","action":"release"}' > "corpus/$t/instr" ;;
    config) cp ../deploy/bondline.toml "corpus/$t/bondline.toml" ;;
    xray_registers | evidence_images | camera_digest) python3 seeds.py "$t" "corpus/$t" ;;
  esac
}

max_len() {
  case "$1" in
    evidence_images) echo 65536 ;; # images up to 64 KiB: the structure checks and decoders
    *) echo 4096 ;;
  esac
}

current=""
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -n "$current" ]; then
    echo "== $current failed (exit $rc); inputs saved in fuzz/artifacts/$current/:" >&2
    ls -t "artifacts/$current" 2>/dev/null | head -5 | sed 's/^/   /' >&2
    echo "   next: minimise, add a regression test, fix (see the top of fuzz/run.sh)" >&2
  fi
}
trap on_exit EXIT

for t in "${targets[@]}"; do
  seed_corpus "$t"
  current="$t"
  echo "== fuzzing $t for ${seconds}s"
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len="$(max_len "$t")"
done
current=""
echo "no crashes"
