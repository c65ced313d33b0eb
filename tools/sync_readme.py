#!/usr/bin/env python3
"""Write README.md from nbs/index.ipynb (the README's source), or check that it is in step.

    python tools/sync_readme.py           # rewrite README.md (and readme_files/ for pictures)
    python tools/sync_readme.py --check   # exit 1, naming what differs, when README.md is stale

`nbdev_readme` does this job with Quarto, which is not available everywhere; this script needs only
the standard library. Markdown cells are copied verbatim. Code cells become ```python blocks (nbdev
directive lines such as `#| export` removed) followed by their outputs: stdout and text/plain in a
plain fenced block, text/markdown verbatim, PNG pictures as files in readme_files/. Cells marked
`#| hide` or `#| include: false` are left out; `#| echo: false` keeps only the outputs and
`#| output: false` only the code. A notebook with an error output is refused.
"""

import argparse
import base64
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTE = '<!-- Generated from nbs/index.ipynb by tools/sync_readme.py: edit the notebook, not this file. -->'
_directive = re.compile(r'^\s*#\s*\|\s*(?P<key>[\w-]+)\s*:?\s*(?P<value>.*?)\s*$')


def _text(x):
    return ''.join(x) if isinstance(x, list) else (x or '')


def split_directives(source):
    "(directives dict, code without its directive lines) of a code cell's source."
    directives, code = {}, []
    for line in source.splitlines():
        m = _directive.match(line)
        if m:
            directives[m['key'].lower()] = m['value'].lower()
        else:
            code.append(line)
    return directives, '\n'.join(code).strip('\n')


def _is_false(v):
    return v in ('false', 'no', '0')


def _fence(text, lang=''):
    text = text.rstrip('\n')
    ticks = '```' if '```' not in text else '````'
    return f'{ticks}{lang}\n{text}\n{ticks}'


def render(nb_path, image_dir='readme_files'):
    """Markdown of the notebook at `nb_path` and the pictures it references, as
    (text, {relative image path: png bytes})."""
    nb_path = Path(nb_path)
    try:
        nb = json.loads(nb_path.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f'{nb_path}: cannot read the notebook: {e}')
    blocks, images = [], {}
    for i, cell in enumerate(nb.get('cells', [])):
        source = _text(cell.get('source'))
        if cell.get('cell_type') == 'markdown':
            if source.strip():
                blocks.append(source.strip('\n'))
            continue
        if cell.get('cell_type') != 'code':
            continue
        directives, code = split_directives(source)
        if 'hide' in directives or _is_false(directives.get('include', '')):
            continue
        if code and not _is_false(directives.get('echo', '')):
            blocks.append(_fence(code, 'python'))
        if _is_false(directives.get('output', '')):
            continue
        for j, out in enumerate(cell.get('outputs', [])):
            kind = out.get('output_type')
            if kind == 'error':
                raise SystemExit(
                    f'{nb_path}: cell {i} has an error output ({out.get("ename")}: {out.get("evalue")}); '
                    'fix the notebook before syncing the README'
                )
            if kind == 'stream':
                if out.get('name') == 'stdout' and _text(out.get('text')).strip():
                    blocks.append(_fence(_text(out['text'])))
                continue
            data = out.get('data', {})
            if 'image/png' in data:
                name = f'{image_dir}/cell-{i}-output-{j}.png'
                images[name] = base64.b64decode(_text(data['image/png']))
                blocks.append(f'![]({name})')
            elif 'text/markdown' in data:
                blocks.append(_text(data['text/markdown']).strip('\n'))
            elif 'text/plain' in data:
                blocks.append(_fence(_text(data['text/plain'])))
            elif 'text/html' in data:
                blocks.append(_text(data['text/html']).strip('\n'))
    if blocks:
        blocks.insert(1, NOTE)
    return '\n\n'.join(blocks) + '\n', images


def differences(repo=REPO):
    "What differs between the repo's README.md (and readme_files/) and a fresh render of nbs/index.ipynb."
    repo = Path(repo)
    text, images = render(repo / 'nbs' / 'index.ipynb')
    readme = repo / 'README.md'
    problems = []
    if not readme.exists():
        problems.append('README.md is missing')
    elif readme.read_text(encoding='utf-8') != text:
        import difflib

        diff = difflib.unified_diff(
            readme.read_text(encoding='utf-8').splitlines(),
            text.splitlines(),
            'README.md',
            'from nbs/index.ipynb',
            lineterm='',
            n=1,
        )
        problems.append('README.md differs from nbs/index.ipynb:\n' + '\n'.join(list(diff)[:40]))
    for name, data in images.items():
        p = repo / name
        if not p.exists() or p.read_bytes() != data:
            problems.append(f'{name} is missing or out of date')
    image_dir = repo / 'readme_files'
    if image_dir.exists():
        for p in image_dir.glob('*.png'):
            if f'readme_files/{p.name}' not in images:
                problems.append(f'readme_files/{p.name} is not used by the README')
    return problems


def write(repo=REPO):
    "Rewrite README.md and readme_files/ from nbs/index.ipynb."
    repo = Path(repo)
    text, images = render(repo / 'nbs' / 'index.ipynb')
    (repo / 'README.md').write_text(text, encoding='utf-8')
    image_dir = repo / 'readme_files'
    if image_dir.exists():
        for p in image_dir.glob('*.png'):
            if f'readme_files/{p.name}' not in images:
                p.unlink()
    for name, data in images.items():
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_bytes(data)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true', help='only check; exit 1 when README.md is stale')
    parser.add_argument('--repo', default=str(REPO), help="repository root (default: this script's repo)")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences(args.repo)
        if problems:
            print('\n'.join(problems) + '\n\nRun `python tools/sync_readme.py` and commit README.md.', file=sys.stderr)
            return 1
        print('README.md is in step with nbs/index.ipynb')
        return 0
    write(args.repo)
    print(f'wrote {Path(args.repo) / "README.md"} from nbs/index.ipynb')
    return 0


if __name__ == '__main__':
    sys.exit(main())
