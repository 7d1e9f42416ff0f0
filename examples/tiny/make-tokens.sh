#!/bin/sh
# The tiny example's token file: the English text of the licences every
# Debian system ships (/usr/share/common-licenses, ~250 KB), one byte per
# token. Used by examples/quickstart.sh, the trainer image and the local
# cluster's end-to-end test, so all three train on the same tokens.
#
#   examples/tiny/make-tokens.sh path/to/hetermoe-trainer out/tokens.bin
set -eu
TRAINER=$1
OUT=$2
L=/usr/share/common-licenses
CORPUS="$OUT.txt"
cat $L/GPL-3 $L/GPL-2 $L/LGPL-2.1 $L/LGPL-3 $L/Apache-2.0 $L/Artistic $L/MPL-2.0 $L/GFDL-1.3 > "$CORPUS"
"$TRAINER" prepare-data --input "$CORPUS" --output "$OUT"
rm -f "$CORPUS"
