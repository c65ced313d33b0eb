"""`sevdino/` is a fresh export of `nbs/`, every notebook is clean (what `nbdev_clean` writes), every
executed cell that must show something (a figure, a print, a displayed value) kept its output, a chapter
(and its module) imports only earlier chapters, and no text points to a file outside the repository.

The checkers live in `hygiene.py`; the last tests prove that they catch what they are for by
breaking a small temporary project in each way and asserting the report names the broken file.
"""

import json
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

import hygiene

REPO = Path(__file__).resolve().parents[1]


def test_sevdino_matches_a_fresh_export_of_the_notebooks():
    problems = hygiene.export_problems(REPO)
    assert not problems, hygiene.report(problems, 'sevdino/ is out of step with nbs/')


def test_every_notebook_is_clean():
    problems = hygiene.clean_problems(REPO)
    assert not problems, hygiene.report(problems, 'notebooks that nbdev_clean would change')


# --- the checkers can fail ------------------------------------------------------------------------


def _tiny_notebook():
    "A two-function notebook exporting `sevdino.tiny`."
    nb = nbformat.v4.new_notebook()
    nb.metadata = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
    nb.cells = [
        nbformat.v4.new_markdown_cell('# Tiny\n\n> A notebook for the hygiene checks'),
        nbformat.v4.new_code_cell('#| default_exp tiny'),
        nbformat.v4.new_code_cell('#| export\ndef double(x):\n    "Twice `x`."\n    return 2 * x'),
        nbformat.v4.new_code_cell('assert double(2) == 4'),
        nbformat.v4.new_code_cell('#| export\ndef halve(x):\n    "Half of `x`."\n    return x / 2'),
    ]
    return nb


@pytest.fixture(scope='module')
def tiny_template(tmp_path_factory):
    "A consistent nbdev project (the repo's settings.ini, one notebook), exported and cleaned."
    root = tmp_path_factory.mktemp('tiny')
    shutil.copy2(REPO / 'settings.ini', root / 'settings.ini')
    (root / 'nbs').mkdir()
    nbformat.write(_tiny_notebook(), root / 'nbs' / '00_tiny.ipynb')
    for cmd in ('nbdev_export', 'nbdev_clean'):
        subprocess.run([hygiene.nbdev_command(cmd)], cwd=root, env=hygiene._env(), check=True, capture_output=True)
    assert (root / 'sevdino' / 'tiny.py').exists()
    assert hygiene.export_problems(root) == [], 'the fixture itself should be in step'
    assert hygiene.clean_problems(root) == [], 'the fixture itself should be clean'
    return root


@pytest.fixture
def tiny_project(tiny_template, tmp_path):
    "A fresh copy of the consistent tiny project, for one test to break."
    return Path(shutil.copytree(tiny_template, tmp_path / 'tiny'))


def _edit_notebook(path, change):
    nb = json.loads(path.read_text(encoding='utf-8'))
    change(nb)
    path.write_text(json.dumps(nb, indent=1), encoding='utf-8')


def test_export_check_catches_a_hand_edited_module(tiny_project):
    py = tiny_project / 'sevdino' / 'tiny.py'
    py.write_text(py.read_text().replace('return 2 * x', 'return 3 * x'))
    problems = hygiene.export_problems(tiny_project)
    assert len(problems) == 1 and problems[0].startswith('sevdino/tiny.py: differs'), problems
    assert 'nbdev_export && nbdev_clean' in problems[0]


def test_export_check_catches_a_module_no_notebook_produces(tiny_project):
    (tiny_project / 'sevdino' / 'orphan.py').write_text('x = 1\n')
    problems = hygiene.export_problems(tiny_project)
    assert any(p.startswith('sevdino/orphan.py: no notebook produces it') for p in problems), problems


def test_export_check_catches_a_deleted_exported_cell(tiny_project):
    def drop_halve(nb):
        nb['cells'] = [c for c in nb['cells'] if 'def halve' not in ''.join(c['source'])]

    _edit_notebook(tiny_project / 'nbs' / '00_tiny.ipynb', drop_halve)
    names = [p.split(':')[0] for p in hygiene.export_problems(tiny_project)]
    assert names == ['sevdino/_modidx.py', 'sevdino/tiny.py'], names


def test_export_check_catches_a_missing_module(tiny_project):
    (tiny_project / 'sevdino' / 'tiny.py').unlink()
    problems = hygiene.export_problems(tiny_project)
    assert any(p.startswith('sevdino/tiny.py: missing') for p in problems), problems


@pytest.mark.parametrize('dirt', ['execution_count', 'cell_metadata', 'notebook_metadata'])
def test_clean_check_catches_a_dirty_notebook(tiny_project, dirt):
    def make_dirty(nb):
        code = [c for c in nb['cells'] if c['cell_type'] == 'code'][1]
        if dirt == 'execution_count':
            code['execution_count'] = 7
        elif dirt == 'cell_metadata':
            code['metadata'] = {'scrolled': True, 'tags': []}
        else:
            nb['metadata']['language_info'] = {'name': 'python', 'version': '3.11.2'}

    nb_path = tiny_project / 'nbs' / '00_tiny.ipynb'
    _edit_notebook(nb_path, make_dirty)
    assert hygiene.export_problems(tiny_project) == []  # the export does not care; the clean check must
    problems = hygiene.clean_problems(tiny_project)
    assert len(problems) == 1 and problems[0].startswith('nbs/00_tiny.ipynb: not clean'), problems
    assert 'nbdev_clean --fname nbs/00_tiny.ipynb' in problems[0]


# --- executed notebooks keep their outputs --------------------------------------------------------


def test_every_executed_cell_that_shows_something_has_its_output():
    problems = hygiene.output_problems(REPO)
    assert not problems, hygiene.report(problems, 'cells that must show an output but have none')


@pytest.mark.parametrize(
    'source, why',
    [
        ('x = 1\nx', 'it ends with an expression'),
        ('df.shape', 'it ends with an expression'),
        ('{k: v for k, v in d.items()}', 'it ends with an expression'),
        ('x  # the answer', 'it ends with an expression'),
        ('#| hide\n%time y = 2\nx', 'it ends with an expression'),
        ('print(x)\ntest_eq(x, 1)', 'it prints'),
        ('show_doc(f)', 'it shows documentation'),
        ('fig, ax = plt.subplots()\nax.plot([1, 2])', 'it draws a figure'),
        ('ax.plot([1, 2])\nplt.show()', 'it draws a figure'),
        ('for p in paths: display(Image(filename=p))', 'it draws a figure'),
        ('test_eq(a, b)', None),
        ('df.head()', None),
        ('x;', None),
        ('x = 1', None),
        ('"a note"', None),
        ('None', None),
        ('', None),
        ('#| export\ndef f(x): return x', None),
        ('def show(img):\n    plt.imshow(img)\n    plt.show()', None),
        ('fig, ax = plt.subplots()\nfig.savefig(path)\nplt.close(fig)', None),
        ('for p in paths: print(p)', None),
        ('print(x, file=sys.stderr)', None),
        ('ax.imshow(img)', None),
        ('%%capture\nx', None),
        ('x = !ls\nx', None),
    ],
)
def test_output_expected(source, why):
    assert hygiene.output_expected(source) == why


def test_a_notebook_helper_that_draws_makes_its_callers_draw():
    helpers = hygiene.drawing_helpers(
        [
            'import matplotlib.pyplot as plt',
            'def show(img):\n    plt.imshow(img)\n    plt.show()',
            'def panel(img):\n    fig, ax = plt.subplots()\n    ax.imshow(img)\n    return fig',
            'def saved(img, path):\n    fig = panel(img)\n    fig.savefig(path)\n    plt.close(fig)',
        ]
    )
    assert helpers == {'show': 'shows', 'panel': 'opens'}, helpers
    assert hygiene.output_expected('show(photo)', helpers) == 'it draws a figure'
    assert hygiene.output_expected('fig = panel(photo)', helpers) == 'it draws a figure'
    assert hygiene.output_expected('fig = panel(photo)\nfig.savefig(p)\nplt.close(fig)', helpers) is None
    assert hygiene.output_expected('saved(photo, p)', helpers) is None


def _project_with(tmp_path, notebook):
    "An nbdev project in `tmp_path` (the repo's settings.ini) whose only notebook is `notebook`."
    shutil.copy2(REPO / 'settings.ini', tmp_path / 'settings.ini')
    (tmp_path / 'nbs').mkdir()
    if isinstance(notebook, Path):
        shutil.copy2(notebook, tmp_path / 'nbs' / notebook.name)
    else:
        nbformat.write(notebook, tmp_path / 'nbs' / '00_tiny.ipynb')
    return tmp_path


def test_output_check_catches_a_bare_name_without_output_but_not_a_test(tmp_path):
    nb = _tiny_notebook()
    nb.cells += [
        nbformat.v4.new_code_cell('from fastcore.test import test_eq'),
        nbformat.v4.new_code_cell('x = double(2)\nx'),  # cell 7: displays 4
        nbformat.v4.new_code_cell('test_eq(double(2), 4)'),  # returns None
        nbformat.v4.new_code_cell('#| eval: false\nx'),  # never run by the docs
        nbformat.v4.new_code_cell('#| slow\nx'),
    ]  # may be left unexecuted
    problems = hygiene.output_problems(_project_with(tmp_path, nb))
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        'nbs/00_tiny.ipynb cell 7 (first line: `x = double(2)`) has no output (it ends with an expression)'
    ), problems
    assert 'jupyter nbconvert --to notebook --execute --inplace nbs/00_tiny.ipynb' in problems[0]
    assert 'nbdev_clean --fname nbs/00_tiny.ipynb' in problems[0]


def test_output_check_catches_a_figure_whose_output_was_deleted(tmp_path):
    project = _project_with(tmp_path, REPO / 'nbs' / '01_synthetic.ipynb')
    nb_path = project / 'nbs' / '01_synthetic.ipynb'
    assert hygiene.output_problems(project) == [], 'the executed notebook itself should have all outputs'
    cells = json.loads(nb_path.read_text(encoding='utf-8'))['cells']
    drawn = [
        k
        for k, c in enumerate(cells, 1)
        if c['cell_type'] == 'code'
        and c['outputs']
        and any(o.get('data', {}).get('image/png') for o in c['outputs'])
        and 'plt.subplots(' in ''.join(c['source'])
    ]
    assert drawn, '01_synthetic should keep at least one figure drawn with plt.subplots'
    k = drawn[-1]

    def drop_output(nb):
        nb['cells'][k - 1]['outputs'] = []

    _edit_notebook(nb_path, drop_output)
    problems = hygiene.output_problems(project)
    assert len(problems) == 1 and problems[0].startswith(f'nbs/01_synthetic.ipynb cell {k} (first line: '), problems
    assert 'has no output (it draws a figure)' in problems[0]


# --- the docs build runs imports, not tests ----------------------------------------------------------


def test_no_cell_makes_the_docs_build_run_its_code():
    problems = hygiene.docs_execution_problems(REPO)
    assert not problems, hygiene.report(problems, 'cells whose code the docs build would run')


def test_docs_execution_check_catches_code_next_to_an_import(tiny_project):
    _add_cells(
        tiny_project / 'nbs' / '00_tiny.ipynb',
        'import math',  # imports only: fine
        '#| exec_doc\nimport math\nprint(math.pi)',  # asked for: fine
        '#| eval: false\nimport math\nprint(math.pi)',  # never run: fine
        'def f():\n    import math\n\n    return math.pi',  # nested import: the docs build runs the cell
        'import math\n\nprint(math.pi)',
        '#| slow\nfrom math import pi\nx = pi',
    )
    problems = hygiene.docs_execution_problems(tiny_project)
    n = len(json.loads((tiny_project / 'nbs' / '00_tiny.ipynb').read_text())['cells'])
    assert [p.split(' (first line')[0] for p in problems] == [
        f'nbs/00_tiny.ipynb cell {n - 2}',
        f'nbs/00_tiny.ipynb cell {n - 1}',
        f'nbs/00_tiny.ipynb cell {n}',
    ], problems
    assert 'line 3 of its code' in problems[1] and 'import-only cell' in problems[1]


# --- chapters import only earlier chapters --------------------------------------------------------


def test_chapters_import_only_earlier_chapters():
    problems = hygiene.chapter_order_problems(REPO)
    assert not problems, hygiene.report(problems, 'chapters that import a later chapter')


def test_modules_import_only_modules_of_earlier_chapters():
    problems = hygiene.module_order_problems(REPO)
    assert not problems, hygiene.report(problems, 'generated modules that import a later chapter')


def _later_notebook():
    "A notebook exporting `sevdino.later`, which may use `sevdino.tiny` (an earlier chapter)."
    nb = nbformat.v4.new_notebook()
    nb.metadata = _tiny_notebook().metadata
    nb.cells = [
        nbformat.v4.new_markdown_cell('# Later\n\n> A later chapter'),
        nbformat.v4.new_code_cell('#| default_exp later'),
        nbformat.v4.new_code_cell('#| export\nfrom sevdino.tiny import double'),
        nbformat.v4.new_code_cell('#| export\ndef quadruple(x):\n    "Four times `x`."\n    return double(double(x))'),
    ]
    return nb


def _add_cells(path, *sources):
    def add(nb):
        nb['cells'] += [dict(nbformat.v4.new_code_cell(source), id=f'added{i}') for i, source in enumerate(sources)]

    _edit_notebook(path, add)


def test_chapter_order_check_catches_an_import_of_a_later_chapter(tiny_project):
    nbs = tiny_project / 'nbs'
    nbformat.write(_later_notebook(), nbs / '01_later.ipynb')
    (nbs / 'tutorials').mkdir()
    for name in ('index.ipynb', 'tutorials/walk.ipynb'):  # not chapters: they may import anything
        nb = _tiny_notebook()
        nb.cells = [nbformat.v4.new_code_cell('from sevdino.later import quadruple')]
        nbformat.write(nb, nbs / name)
    assert hygiene.chapter_order_problems(tiny_project) == []
    _add_cells(
        nbs / '00_tiny.ipynb',
        'import importlib\nlater = importlib.import_module("sevdino.later")',  # by name: the plugin way
        'from fastcore.test import test_eq',
        'def check():\n    from sevdino.later import quadruple\n\n    test_eq(quadruple(1), 4)',  # cell 8
    )
    problems = hygiene.chapter_order_problems(tiny_project)
    assert problems == [
        'nbs/00_tiny.ipynb cell 8 imports sevdino.later, exported by the later chapter nbs/01_later.ipynb: '
        'a chapter may use only earlier ones; move what it needs to an earlier chapter (or this code to a later one)'
    ], problems


def test_module_order_check_catches_a_module_importing_a_later_chapter(tiny_project):
    nbs = tiny_project / 'nbs'
    nbformat.write(_later_notebook(), nbs / '01_later.ipynb')
    _add_cells(
        nbs / '00_tiny.ipynb', '#| export\ndef eight():\n    from .later import quadruple\n\n    return quadruple(2)'
    )
    hygiene._run([hygiene.nbdev_command('nbdev_export')], cwd=tiny_project)
    tiny_py = (tiny_project / 'sevdino' / 'tiny.py').read_text()
    line = tiny_py.splitlines().index('    from .later import quadruple') + 1
    problems = hygiene.module_order_problems(tiny_project)
    assert problems == [
        f'sevdino/tiny.py line {line} imports sevdino.later, exported by nbs/01_later.ipynb, a later chapter than '
        f'its own nbs/00_tiny.ipynb: fix the import in the notebook, then {hygiene.FIX_EXPORT}'
    ], problems
    assert len(hygiene.chapter_order_problems(tiny_project)) == 1  # the notebook check sees it too


# --- no references to files outside the repository ------------------------------------------------


def test_no_references_to_files_outside_the_repository():
    problems = hygiene.outside_reference_problems(REPO)
    assert not problems, hygiene.report(problems, 'references to files outside the repository')


def test_outside_reference_check_catches_links_paths_and_documents_outside(tiny_project):
    nb_path = tiny_project / 'nbs' / '00_tiny.ipynb'

    def add(nb):
        nb['cells'] += [
            nbformat.v4.new_markdown_cell(  # cell 6
                'Fine: [the guide](../DEVELOPERS.md), [a site](https://example.org/a/../b), `README.md`, '
                '[a page](/docs/x.html), [here](#why).\n\nNot fine: the numbers of [the facts](../../shared/FACTS.md).'
            ),
            nbformat.v4.new_code_cell(  # cell 7
                'def f():\n    "As the user\'s design (`../shared/seed`) says."\n'
                "    return '../a.png'  # a string, not a reference; but DESIGN.md is one"
            ),
            nbformat.v4.new_markdown_cell('A probe (FACTS section 4) and NOTES.md.'),  # cell 8
        ]

    _edit_notebook(nb_path, add)
    (tiny_project / 'README.md').write_text('# Tiny\n')
    (tiny_project / 'DEVELOPERS.md').write_text(
        '# Guide\n\nRead `../shared/DESIGN.md` first; see nbs/ and README.md.\n'
    )
    found = [p.split(': say what it is in words')[0] for p in hygiene.outside_reference_problems(tiny_project)]
    assert found == [
        'nbs/00_tiny.ipynb cell 6 (markdown): link `../../shared/FACTS.md` leads outside the repository, in '
        '"Not fine: the numbers of [the facts](../../shared/FACTS.md)."',
        'nbs/00_tiny.ipynb cell 7 (comment): `DESIGN.md` is a document outside the repository, in '
        '"# a string, not a reference; but DESIGN.md is one"',
        'nbs/00_tiny.ipynb cell 7 (docstring of f): path `../shared/seed` points outside the repository, in '
        '"As the user\'s design (`../shared/seed`) says."',
        'nbs/00_tiny.ipynb cell 8 (markdown): `FACTS` is a document outside the repository, in '
        '"A probe (FACTS section 4) and NOTES.md."',
        'nbs/00_tiny.ipynb cell 8 (markdown): `NOTES.md` is not a file of the repository, in '
        '"A probe (FACTS section 4) and NOTES.md."',
        'DEVELOPERS.md line 3: path `../shared/DESIGN.md` points outside the repository, in '
        '"Read `../shared/DESIGN.md` first; see nbs/ and README.md."',
    ], found
