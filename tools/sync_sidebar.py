#!/usr/bin/env python3
"""Write nbs/sidebar.yml (the docs' table of contents) with nbdev's own generator, or check it.

    python tools/sync_sidebar.py           # rewrite nbs/sidebar.yml: run after adding or renaming a notebook
    python tools/sync_sidebar.py --check   # exit 1 when nbs/sidebar.yml is not what nbdev would write

It runs `nbdev_sidebar --force` on a temporary copy of settings.ini and nbs/ (so nothing else in the
tree changes) and copies the result. `nbdev_docs` regenerates the file too; committing it keeps
Quarto previews and the docs check in step with the notebooks.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def generate(repo=REPO):
    "The text of sidebar.yml that `nbdev_sidebar --force` writes for `repo`'s notebooks."
    repo = Path(repo)
    exe = Path(sys.executable).parent / 'nbdev_sidebar'
    if not exe.exists():
        raise SystemExit(f'{exe} not found: install the dev extras (`pip install -e ".[dev]"`)')
    with tempfile.TemporaryDirectory(prefix='sevdino_sidebar_') as tmp:
        shutil.copy2(repo / 'settings.ini', Path(tmp) / 'settings.ini')
        shutil.copytree(
            repo / 'nbs',
            Path(tmp) / 'nbs',
            ignore=shutil.ignore_patterns('.ipynb_checkpoints', '_proc', '_docs', '.quarto'),
        )
        (Path(tmp) / 'nbs' / 'sidebar.yml').unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}
        res = subprocess.run([str(exe), '--force'], cwd=tmp, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f'nbdev_sidebar failed:\n{res.stdout}\n{res.stderr}')
        return (Path(tmp) / 'nbs' / 'sidebar.yml').read_text(encoding='utf-8')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true', help='only check; exit 1 when nbs/sidebar.yml is stale')
    parser.add_argument('--repo', default=str(REPO), help="repository root (default: this script's repo)")
    args = parser.parse_args(argv)
    path = Path(args.repo) / 'nbs' / 'sidebar.yml'
    fresh = generate(args.repo)
    if args.check:
        if not path.exists() or path.read_text(encoding='utf-8') != fresh:
            print(
                f'{path} is not what nbdev_sidebar writes for the notebooks now:\n{fresh}\n'
                'Run `python tools/sync_sidebar.py` (or `nbdev_sidebar --force`) and commit nbs/sidebar.yml.',
                file=sys.stderr,
            )
            return 1
        print('nbs/sidebar.yml is in step with the notebooks')
        return 0
    path.write_text(fresh, encoding='utf-8')
    print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
