"""README.md is generated from nbs/index.ipynb, and nbs/sidebar.yml lists every notebook."""

import importlib.util
import json
from pathlib import Path

import nbformat
import yaml

import hygiene

REPO = Path(__file__).resolve().parents[1]


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync_readme = _load_tool('sync_readme')


def test_readme_is_in_step_with_index_notebook():
    problems = sync_readme.differences(REPO)
    assert not problems, (
        '\n'.join(problems)
        + '\n\nREADME.md is generated from nbs/index.ipynb: run `python tools/sync_readme.py` and commit it.'
    )


def test_readme_render_follows_the_directives(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell('# Title\n\n> Summary'),
        nbformat.v4.new_code_cell('#| hide\nimport secret_setup'),
        nbformat.v4.new_code_cell(
            '#| export\nx = 1 + 1\nx',
            outputs=[nbformat.v4.new_output('execute_result', data={'text/plain': '2'}, execution_count=None)],
        ),
        nbformat.v4.new_code_cell(
            "#| echo: false\nprint('only the output')",
            outputs=[nbformat.v4.new_output('stream', name='stdout', text='only the output\n')],
        ),
        nbformat.v4.new_code_cell(
            '#| output: false\nnoisy()', outputs=[nbformat.v4.new_output('stream', name='stdout', text='noise\n')]
        ),
    ]
    path = tmp_path / 'index.ipynb'
    nbformat.write(nb, path)
    text, images = sync_readme.render(path)
    assert text == (
        '# Title\n\n> Summary\n\n' + sync_readme.NOTE + '\n\n```python\nx = 1 + 1\nx\n```\n\n```\n2\n```\n\n'
        '```\nonly the output\n```\n\n```python\nnoisy()\n```\n'
    ), text
    assert images == {}


def test_readme_check_catches_a_deleted_output(tmp_path):
    "Deleting an output of a README cell (or any edit of index.ipynb) makes the README stale."
    (tmp_path / 'nbs').mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell('# T'),
        nbformat.v4.new_code_cell(
            '1 + 1', outputs=[nbformat.v4.new_output('execute_result', data={'text/plain': '2'}, execution_count=None)]
        ),
    ]
    nbformat.write(nb, tmp_path / 'nbs' / 'index.ipynb')
    sync_readme.write(tmp_path)
    assert sync_readme.differences(tmp_path) == []
    raw = json.loads((tmp_path / 'nbs' / 'index.ipynb').read_text())
    raw['cells'][1]['outputs'] = []
    (tmp_path / 'nbs' / 'index.ipynb').write_text(json.dumps(raw))
    problems = sync_readme.differences(tmp_path)
    assert len(problems) == 1 and problems[0].startswith('README.md differs'), problems
    assert sync_readme.main(['--check', '--repo', str(tmp_path)]) == 1


def _listed(contents):
    "Every file named in a sidebar `contents` list (sections included)."
    for item in contents:
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            if 'href' in item:
                yield item['href']
            yield from _listed(item.get('contents', []))


def test_sidebar_lists_every_notebook():
    nbs = REPO / 'nbs'
    how = 'run `python tools/sync_sidebar.py` (nbdev_sidebar --force) and commit nbs/sidebar.yml'
    assert (nbs / 'sidebar.yml').exists(), f'nbs/sidebar.yml is missing: {how}'
    sidebar = yaml.safe_load((nbs / 'sidebar.yml').read_text())
    listed = set(_listed(sidebar['website']['sidebar']['contents']))
    notebooks = {p.relative_to(nbs).as_posix() for p in hygiene.notebooks(nbs)}
    missing = sorted(notebooks - listed)
    assert not missing, f'notebooks not in nbs/sidebar.yml: {missing}; {how}'
    gone = sorted(p for p in listed if not (nbs / p).exists())
    assert not gone, f'nbs/sidebar.yml lists files that do not exist: {gone}; {how}'
