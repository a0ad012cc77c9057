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
for name in train export score models; do
    if [ -e "$site/$name" ]; then echo "bare install: the wheel put '$name' at the top of site-packages" >&2; exit 1; fi
done
cd "$work"  # outside the checkout: only the installed wheel can be imported
"$work/venv/bin/mri-score" "$repo/examples/" --out preds.parquet --overwrite
for command in mri44 mri-train onnx-export mri-score mri-report mri-weights; do
    "$work/venv/bin/$command" --help > /dev/null
done
"$work/venv/bin/python" -m mri44.stages.train --help > /dev/null
(cd "$repo" && "$work/venv/bin/python" -m train --help > /dev/null)  # README's spelling, from the checkout
"$work/venv/bin/python" -c 'import mri44; m = mri44.load_model("int8"); print("bare install: API ok,", len(m.classes), "classes")'
echo "bare install: README's first command and every --help ran without extras"
