#!/bin/sh
# The tiny example's data: the English text of the licences every Debian
# system ships (/usr/share/common-licenses), one document per licence. A
# 1024-piece SentencePiece tokenizer is trained on seven of them (written
# next to the token file as tokenizer.model); those seven become the
# training tokens, each followed by an end-of-sequence id, and the eighth
# (MPL-2.0, held out) the validation tokens, valid.bin. Used by
# examples/quickstart.sh, the trainer image and the local cluster's
# end-to-end test, so all three train on the same tokens.
#
#   examples/tiny/make-tokens.sh path/to/hetermoe-trainer out/tokens.bin
set -eu
TRAINER=$1
OUT=$2
DIR=$(dirname "$OUT")
L=/usr/share/common-licenses
TEXTS="$L/GPL-3 $L/GPL-2 $L/LGPL-2.1 $L/LGPL-3 $L/Apache-2.0 $L/Artistic $L/GFDL-1.3"
# shellcheck disable=SC2086  # the file list splits on purpose
"$TRAINER" train-tokenizer --input $TEXTS --vocab-size 1024 --output "$DIR/tokenizer.model"
# shellcheck disable=SC2086
"$TRAINER" prepare-data --input $TEXTS --tokenizer "$DIR/tokenizer.model" --output "$OUT"
"$TRAINER" prepare-data --input $L/MPL-2.0 --tokenizer "$DIR/tokenizer.model" --output "$DIR/valid.bin"
