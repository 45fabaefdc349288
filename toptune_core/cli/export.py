"""Command-line command ``export``: one zip with everything needed to classify photos elsewhere.

``python -m toptune_core export --run RUN_ID OUT.zip`` writes the run's model
as ONNX (backbone graph and top classifier, or the fine-tuned network), its
class names, preprocessing settings and familiarity data, a README and a
``predict.py`` that needs only ``onnxruntime``, ``numpy`` and ``pillow``
(``toptune_core.portable.export``); a top-tuned run's zip also holds its offline page (``offline/``).

``python -m toptune_core bench field --run RUN_ID PHOTOS...`` (``cli.bench``) times that page in headless chromium
at 1, 2 and 8 views and measures its files (``toptune_core.bench.field``).
"""

from __future__ import annotations

import argparse

from toptune_core.cli.common import add_command, run_store
from toptune_core.config import Settings


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from toptune_core.portable.export import export_run

    import zipfile

    from toptune_core.portable.offline import WEB, ort_available

    path = export_run(args.run, args.out, store=run_store(settings), settings=settings)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): unzip it and run `python predict.py PHOTO...` "
          "(needs onnxruntime, numpy and pillow)")
    with zipfile.ZipFile(path) as z:
        has_page = any(name.startswith("offline/") for name in z.namelist())
    if has_page:
        print("offline/ is the offline diagnosis page: serve that folder over HTTPS (or from localhost) and open "
              "index.html (README, 'In the field')")
    elif not ort_available():
        print(f"no offline page in the zip: onnxruntime-web is not installed (run `npm ci` in {WEB})")
    return 0


#: The commands ``add_parsers`` adds (``cli.main`` builds only the parser of the command it runs).
COMMANDS = ("export",)


def add_parsers(sub) -> None:
    p = add_command(sub, "export", cmd_export, "write a run's model as one zip that classifies photos with "
                                               "onnxruntime, numpy and pillow only")
    p.add_argument("--run", required=True, help="run id (see: python -m toptune_core runs)")
    p.add_argument("out", help="the zip file to write, e.g. model.zip")

