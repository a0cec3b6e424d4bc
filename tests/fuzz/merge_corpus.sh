#!/bin/sh
# Merges what the fuzz targets grew in the build tree (BUILD/tests/corpus-T)
# into the committed seeds (tests/fuzz/corpus/T), minimized: libFuzzer's
# -set_cover_merge=1 keeps a small set of inputs that reach all they reach.
#
# The seeds written by hand (named for what they are: a regression, an
# example of a form) stay as they are. Those an earlier merge added, named by
# libFuzzer with the SHA-1 of their content, are merged again along with the
# grown corpus, so the set stays small instead of adding up run after run.
#
#   sh tests/fuzz/merge_corpus.sh build-fuzz command data header pgpmime
set -eu

count() { find "$1" -type f | wc -l; }

build=$1
shift
for target in "$@"; do
    seeds=tests/fuzz/corpus/$target
    grown=$build/tests/corpus-$target
    fuzzer=$build/tests/fuzz_$target
    [ -x "$fuzzer" ] || { echo "no $fuzzer: build it first" >&2; exit 1; }
    mkdir -p "$grown"
    earlier=$(mktemp -d)
    for f in "$seeds"/*; do
        if basename "$f" | grep -Eq '^[0-9a-f]{40}$'; then mv "$f" "$earlier/"; fi
    done
    before=$(count "$earlier")
    if ! "$fuzzer" -set_cover_merge=1 -max_len=4096 "$seeds" "$earlier" "$grown" \
        >"$build/merge-$target.log" 2>&1; then
        tail -20 "$build/merge-$target.log" >&2
        find "$earlier" -type f -exec mv {} "$seeds/" \;  # as they were
        rmdir "$earlier"
        exit 1
    fi
    rm -rf "$earlier"
    echo "$target: $(count "$seeds") seeds ($before merged before, $(count "$grown") grown)"
done
