#!/usr/bin/env bash
# A fresh machine's view of the package: build the wheel, install it WITHOUT extras and WITHOUT editable mode in a
# new virtual environment, and run README's first command and every command's --help there. This catches an
# import that only the dev extras happened to bring (click did, once), and a model or asset missing from the wheel.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/dist" "$repo"
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work"/dist/mri44-*.whl
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for name in export score models; do
    if [ -e "$site/$name" ]; then echo "bare install: the wheel put '$name' at the top of site-packages" >&2; exit 1; fi
done
# The one other top-level name is `train`, and only its launcher (python -m train from any folder).
extra="$(cd "$site/train" && ls -A | grep -v -x -e __init__.py -e __main__.py -e __pycache__ || true)"
if [ -n "$extra" ]; then echo "bare install: top-level 'train' holds more than its launcher: $extra" >&2; exit 1; fi
empty="$work/empty"
mkdir "$empty" && cd "$empty"  # an empty folder outside the checkout: only the installed wheel can be imported
"$work/venv/bin/mri-score" "$repo/examples/" --out preds.parquet --overwrite
for command in mri44 mri-train onnx-export mri-score mri-report mri-weights; do
    "$work/venv/bin/$command" --help > /dev/null
done
# The three stages for real, as README spells them, on the bundled examples (a one-epoch all-data fit at 32 px).
"$work/venv/bin/python" -m train --data "$repo/examples" --out run --all-data --epochs 1 --image-size 32 --batch-size 8
"$work/venv/bin/onnx-export" run --out tiny.onnx --images "$repo/examples"
"$work/venv/bin/mri-score" "$repo/examples/" --model tiny.onnx --out tiny.parquet
(cd "$repo" && "$work/venv/bin/python" -m train --help > /dev/null)  # README's spelling, from the checkout
"$work/venv/bin/python" -c 'import mri44; m = mri44.load_model("int8"); print("bare install: API ok,", len(m.classes), "classes")'
echo "bare install: README's first command, the three stages and the API ran from an empty folder without extras"
