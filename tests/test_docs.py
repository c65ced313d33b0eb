"""The docs build, checked without Quarto.

`nbdev_docs` needs Quarto, which is not installed everywhere (not on the development machine). This
check runs the part of the docs build that nbdev does itself, `nbdev_proc_nbs` (it processes the
notebooks into `_proc/`: front matter, `show_doc` cells for every exported name, hidden cells
removed), on a temporary copy of the repo; renders each processed notebook to HTML with nbconvert as
a stand-in for Quarto; checks that every exported public function and class has a docstring that its
page shows; and opens the index page and a module page in headless Chromium for a screenshot.

Screenshots go to `$SEVDINO_DOCS_SCREENSHOTS` (default: a pytest temporary folder). Without Chromium
the screenshot test skips, unless `SEVDINO_REQUIRE_CHROMIUM=1` (set by `.ci/run`), where it fails.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import yaml

import hygiene

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / 'sevdino'
CHROMIUM_NAMES = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')
CHROMIUM_FLAGS = (
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--hide-scrollbars',
)

# `nbdev_proc_nbs` exactly, except that it must not try to download Quarto (it does when Quarto is
# missing, before processing anything); the processing itself never calls Quarto.
_PROC_NBS = """
import sys
import nbdev.quarto
nbdev.quarto._ensure_quarto = lambda: None
sys.argv = ['nbdev_proc_nbs'] + sys.argv[1:]
nbdev.quarto.nbdev_proc_nbs()
"""


def html_name(nb_rel):
    "The page nbdev gives the notebook at `nb_rel` (relative to nbs/): number prefix dropped, lower case."
    nb_rel = Path(nb_rel)
    return nb_rel.with_name(re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb_rel.name.lower())).with_suffix('.html').as_posix()


_directive = re.compile(r'^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')


def quarto_stand_in(nb):
    """Apply to a processed notebook what Quarto would: the front matter becomes the title and summary,
    `#|` directive lines disappear, `echo: false` hides the code, `output: false` the outputs and
    `include: false` the cell."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type == 'raw' and cell.source.startswith('---'):
            meta = yaml.safe_load(cell.source.strip().strip('-')) or {}
            title = f'# {meta.get("title", "")}\n\n' if meta.get('title') else ''
            cells.append(
                nbformat.v4.new_markdown_cell(title + (f'> {meta["description"]}' if meta.get('description') else ''))
            )
            continue
        if cell.cell_type == 'code':
            lines = cell.source.splitlines()
            directives = {m[1].lower(): m[2].lower() for m in map(_directive.match, lines) if m}
            if directives.get('include') == 'false':
                continue
            cell.source = '\n'.join(l for l in lines if not _directive.match(l))
            if directives.get('echo') == 'false':
                cell.metadata.setdefault('tags', []).append('remove_input')
            if directives.get('output') == 'false':
                cell.outputs = []
        cells.append(cell)
    nb.cells = cells
    return nb


def render_page(proc_nb, out_html):
    "Render the processed notebook `proc_nb` to the HTML file `out_html` with nbconvert."
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    c.HTMLExporter.exclude_input_prompt = True
    c.HTMLExporter.exclude_output_prompt = True
    nb = quarto_stand_in(nbformat.read(proc_nb, as_version=4))
    body, _ = HTMLExporter(config=c).from_notebook_node(nb, resources={'metadata': {'name': Path(proc_nb).stem}})
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(body, encoding='utf-8')


class _PageText(HTMLParser):
    "The visible text of a page and the text of its headings."

    def __init__(self):
        super().__init__()
        self.text, self.headings, self._skip, self._heading = [], [], 0, None

    def handle_starttag(self, tag, attrs):
        if tag in ('script', 'style'):
            self._skip += 1
        if re.fullmatch(r'h[1-6]', tag):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ('script', 'style'):
            self._skip -= 1
        if re.fullmatch(r'h[1-6]', tag) and self._heading is not None:
            self.headings.append(' '.join(''.join(self._heading).split()).rstrip('¶').strip())
            self._heading = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self._heading is not None:
            self._heading.append(data)


def page_text(html):
    p = _PageText()
    p.feed(html)
    return unescape(' '.join(p.text)), p.headings


def _words(s):
    return re.findall(r'\w+', re.sub(r'\]\([^)]*\)', ']', s).lower())


def public_names():
    """(module, name, docstring or None, page) for every function and class listed in `__all__` of a
    generated module. The page comes from `_modidx.py` (where nbdev's docs put the name), else from the
    module's source notebook."""
    modidx = {}
    exec((LIB / '_modidx.py').read_text(encoding='utf-8'), modidx)
    syms = {k: v for mod in modidx['d']['syms'].values() for k, v in mod.items()}
    found = []
    for py in sorted(LIB.rglob('*.py')):
        if py.name.startswith('_') or '__pycache__' in py.parts:
            continue
        tree = ast.parse(py.read_text(encoding='utf-8'))
        module = '.'.join(py.relative_to(REPO).with_suffix('').parts)
        exported = next(
            (
                ast.literal_eval(node.value)
                for node in tree.body
                if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in node.targets)
            ),
            [],
        )
        defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        source_nb = re.search(r'File to edit: \.\./(?:nbs/)?(\S+\.ipynb)', py.read_text(encoding='utf-8'))
        for name in exported:
            if name.startswith('_') or name not in defs:
                continue  # constants and aliases carry no docstring
            entry = syms.get(f'{module}.{name}')
            page = entry[0].split('#')[0] if entry else (html_name(source_nb[1]) if source_nb else None)
            found.append(
                SimpleNamespace(
                    module=module,
                    name=name,
                    doc=ast.get_docstring(defs[name]),
                    page=page,
                    file=py.relative_to(REPO).as_posix(),
                )
            )
    return found


def notebook_titled(title):
    "The notebook(s) whose title cell (`# title`) is `title`, for error messages."
    found = [
        nb.relative_to(REPO).as_posix()
        for nb in hygiene.notebooks(REPO / 'nbs')
        if any(
            c.cell_type == 'markdown' and c.source.lstrip().startswith(f'# {title}')
            for c in nbformat.read(nb, as_version=4).cells[:3]
        )
    ]
    return ' or '.join(found) if found else f'the notebook titled {title!r}'


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The docs of a temporary copy of the repo: `nbdev_proc_nbs` output and one HTML page per notebook."
    root = tmp_path_factory.mktemp('docs')
    project = root / 'project'
    project.mkdir()
    hygiene.copy_project(REPO, project)
    res = subprocess.run(
        [sys.executable, '-c', _PROC_NBS, '--n_workers', str(min(4, os.cpu_count() or 1))],
        cwd=project,
        env=hygiene._env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0:
        where = re.findall(r'Error in notebook: (.*?) in cell (\d+)', res.stderr)
        hint = (
            f'\nIt failed in {notebook_titled(where[-1][0])} (cell {where[-1][1]} counting the show_doc cells nbdev adds). Doc processing runs every '
            'cell that imports something (and the exported cells): keep imports in cells of their own, with '
            'no other code (DEVELOPERS.md).'
            if where
            else ''
        )
        pytest.fail(f'nbdev_proc_nbs failed (exit {res.returncode}):\n{res.stderr[-4000:]}{hint}', pytrace=False)
    proc = project / '_proc'
    nbs = REPO / 'nbs'
    pages = {}
    for nb in hygiene.notebooks(nbs):
        rel = nb.relative_to(nbs)
        if (proc / rel).exists():
            pages[html_name(rel)] = root / 'site' / html_name(rel)
            render_page(proc / rel, pages[html_name(rel)])
    return SimpleNamespace(root=root, proc=proc, nbs=nbs, pages=pages)


def test_nbdev_proc_nbs_processes_every_notebook(site):
    missing = [
        nb.relative_to(site.nbs).as_posix()
        for nb in hygiene.notebooks(site.nbs)
        if not (site.proc / nb.relative_to(site.nbs)).exists()
    ]
    assert not missing, f'nbdev_proc_nbs did not process {missing}'
    assert all(p.stat().st_size > 0 for p in site.pages.values())


def test_processed_notebooks_have_no_error_outputs(site):
    "A notebook committed with a traceback in an output would publish the traceback."
    bad = []
    for nb in hygiene.notebooks(site.proc):
        for i, cell in enumerate(nbformat.read(nb, as_version=4).cells):
            for out in cell.get('outputs', []):
                if out.get('output_type') == 'error':
                    bad.append(f'{nb.relative_to(site.proc)} cell {i}: {out.get("ename")}')
    assert not bad, (
        'error outputs in notebooks (re-execute them: '
        '`jupyter nbconvert --to notebook --execute --inplace nbs/NN_name.ipynb`, then `nbdev_clean`): '
        + '; '.join(bad)
    )


def test_every_public_function_and_class_has_a_docstring():
    names = public_names()
    assert names, 'no exported functions or classes found in sevdino/'
    bad = [f'{n.module}.{n.name} ({n.file})' for n in names if not (n.doc or '').strip()]
    assert not bad, f'exported without a docstring (add one in the notebook, then `make export`): {bad}'


def test_docs_show_every_public_name_with_its_docstring(site):
    problems, texts = [], {}
    for n in public_names():
        if n.page not in site.pages:
            problems.append(f'{n.module}.{n.name}: its page {n.page} was not rendered')
            continue
        if n.page not in texts:
            texts[n.page] = page_text(site.pages[n.page].read_text(encoding='utf-8'))
        text, headings = texts[n.page]
        if not any(h == n.name or h.startswith(n.name + ' ') or h.startswith(n.name + '(') for h in headings):
            problems.append(f'{n.module}.{n.name}: no show_doc heading on {n.page}')
        first_line = next((l for l in (n.doc or '').splitlines() if l.strip()), '')
        doc_words, page_words = ' '.join(_words(first_line)), ' '.join(_words(text))
        if doc_words and doc_words not in page_words:
            problems.append(f'{n.module}.{n.name}: its docstring ("{first_line.strip()}") is not shown on {n.page}')
    assert not problems, 'the docs do not show:\n  ' + '\n  '.join(problems)


def find_chromium():
    return next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)


def screenshot(chromium, page, png, profile, size=(1200, 1600)):
    "Screenshot the local HTML file `page` into `png` with headless Chromium; returns Chromium's log."
    cmd = [
        chromium,
        *CHROMIUM_FLAGS,
        f'--user-data-dir={profile}',
        f'--screenshot={png}',
        f'--window-size={size[0]},{size[1]}',
        '--enable-logging=stderr',
        '--v=0',
        page.resolve().as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f'chromium failed on {page.name} (exit {res.returncode}):\n{res.stderr[-3000:]}'
    return res.stdout + res.stderr


def check_picture(png, size=(1200, 1600)):
    "Problems with the screenshot `png`: missing, tiny, wrong size or (nearly) one colour."
    from PIL import Image

    if not png.exists():
        return [f'{png} was not written']
    if png.stat().st_size < 5000:
        return [f'{png} is only {png.stat().st_size} bytes']
    with Image.open(png) as im:
        if im.size != size:
            return [f'{png} is {im.size}, expected {size}']
        gray = im.convert('L')
        colours = gray.getcolors(256)
        background = max(colours)[0]
        ink = 1 - background / (size[0] * size[1])
        if ink < 0.005:
            return [f'{png}: {ink:.2%} of the pixels differ from the background (blank page?)']
    return []


def test_pages_render_in_headless_chromium(site, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        msg = (
            f'headless Chromium not found (looked for {", ".join(CHROMIUM_NAMES)}); '
            'install it with `apt-get install -y chromium` to run the docs screenshot check'
        )
        if os.environ.get('SEVDINO_REQUIRE_CHROMIUM') == '1':
            pytest.fail(msg + ' (SEVDINO_REQUIRE_CHROMIUM=1)')
        pytest.skip(msg)
    shots = Path(os.environ.get('SEVDINO_DOCS_SCREENSHOTS') or tmp_path / 'screenshots')
    shots.mkdir(parents=True, exist_ok=True)
    documented = {n.page for n in public_names()}
    module_pages = [page for page in site.pages if page in documented]  # in notebook order
    assert 'index.html' in site.pages, 'nbs/index.ipynb was not rendered'
    assert module_pages, 'no module page was rendered'
    problems = []
    for page in ['index.html', module_pages[0]]:
        png = shots / (Path(page).stem + '.png')
        png.unlink(missing_ok=True)
        log = screenshot(chromium, site.pages[page], png, tmp_path / 'chromium-profile')
        js_errors = [l for l in log.splitlines() if 'Uncaught' in l]
        if js_errors:
            problems.append(f'{page}: JavaScript errors: {js_errors[:3]}')
        problems += check_picture(png)
    assert not problems, '\n'.join(problems)


def test_picture_check_rejects_blank_and_tiny_pages(tmp_path):
    from PIL import Image, ImageDraw

    blank = tmp_path / 'blank.png'
    Image.new('RGB', (1200, 1600), 'white').save(blank)
    assert check_picture(blank) != []
    assert check_picture(tmp_path / 'absent.png') == [f'{tmp_path / "absent.png"} was not written']
    page = Image.new('RGB', (1200, 1600), 'white')
    draw = ImageDraw.Draw(page)
    for y in range(40, 1500, 24):
        draw.text((40, y), 'sevdino ' * 20, fill='black')
    page.save(tmp_path / 'page.png')
    assert check_picture(tmp_path / 'page.png') == []


def test_quarto_stand_in_applies_front_matter_and_directives():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_raw_cell("---\ntitle: Data\ndescription: 'Reading images'\n---\n"),
        nbformat.v4.new_code_cell('#| echo: false\n#| output: asis\nshow_doc(f)'),
        nbformat.v4.new_code_cell('#| include: false\nsecret()'),
        nbformat.v4.new_code_cell('#| output: false\nnoisy()', outputs=[nbformat.v4.new_output('stream', text='x')]),
    ]
    cells = quarto_stand_in(nb).cells
    assert [c.cell_type for c in cells] == ['markdown', 'code', 'code']
    assert cells[0].source == '# Data\n\n> Reading images'
    assert cells[1].source == 'show_doc(f)' and cells[1].metadata.tags == ['remove_input']
    assert cells[2].source == 'noisy()' and cells[2].outputs == []
