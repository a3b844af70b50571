#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each):
#   bash fuzz/run.sh [SECONDS]
# Needs a nightly toolchain (rustup toolchain install nightly) and cargo-fuzz
# (cargo install cargo-fuzz). Corpora grow in fuzz/corpus/<target>; a crash is saved in
# fuzz/artifacts/<target>/ and the script stops with its path: turn it into a regression test
# next to the code it broke, then fix the code.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
seed_corpus() {
  local t="$1"
  mkdir -p "corpus/$t"
  case "$t" in
    scanner_frames) printf '\x00\x02BL0001234567\x03\x02NOREAD\x03BL000123,1.250\r\n' > "corpus/$t/seed" ;;
    plc_registers) printf '\x00\x01\x00\x02\x00\x00\x00\x07\x01\x02' > "corpus/$t/seed" ;;
    platform_messages)
      cp ../deploy/rules.toml "corpus/$t/rules.toml"
      printf '{"schema":1,"waybill":"BL1","enterprise":"E1","consumer":"c","identity_verified":true,"value_minor":100,"currency":"CNY","gross_weight_g":10,"items":[]}' > "corpus/$t/decl"
      printf '{"schema":1,"instruction_id":"i","waybill":"BL1","action":"release"}' > "corpus/$t/instr" ;;
    config) cp ../deploy/bondline.toml "corpus/$t/bondline.toml" ;;
  esac
}
for t in scanner_frames plc_registers platform_messages config; do
  seed_corpus "$t"
  echo "== fuzzing $t for ${seconds}s"
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=4096
done
echo "no crashes"
