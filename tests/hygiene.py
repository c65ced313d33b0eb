"""Notebook hygiene checkers, usable on any nbdev project directory (the repo, or a mutated copy).

Each checker returns a list of problems (empty when all is well) and never modifies the project it
checks. The export and clean checks work on a temporary copy and run nbdev's own commands there, so
what they compare with is exactly what `nbdev_export` and `nbdev_clean` would write; the output check
(`output_problems`), the chapter-order checks (`chapter_order_problems` on the notebooks,
`module_order_problems` on the generated modules) and the reference check (`outside_reference_problems`:
nothing points outside the repository) only read files.
"""

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tokenize
from pathlib import Path

FIX_EXPORT = 'run `nbdev_export && nbdev_clean` (make export) and commit'
FIX_CLEAN = 'run `nbdev_clean` (or `nbdev_clean --fname <notebook>`; make export does both) and commit'
_SKIP_DIRS = ('__pycache__', '.ipynb_checkpoints', '_proc', '_docs', '.quarto')


def nbdev_command(name):
    "Path of the nbdev console script `name` installed next to the running Python."
    exe = Path(sys.executable).parent / name
    if not exe.exists():
        raise FileNotFoundError(f'{exe} not found: install the dev extras (`pip install -e ".[dev]"`)')
    return str(exe)


def _env():
    "Environment for nbdev subprocesses: `IN_TEST` (set by nbdev_test) turns `nbdev_export` into a no-op."
    env = dict(os.environ)
    env.pop('IN_TEST', None)
    return env


def _run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(
            f'`{" ".join(map(str, cmd))}` failed in {cwd} (exit {res.returncode}):\n{res.stdout}\n{res.stderr}'
        )
    return res


def _config(repo):
    "The `[DEFAULT]` section of `repo/settings.ini` as a dict."
    import configparser

    cp = configparser.ConfigParser(interpolation=None)
    cp.read(Path(repo) / 'settings.ini')
    return dict(cp['DEFAULT'])


def project_paths(repo):
    "(nbs_path, lib_path) of the nbdev project at `repo`, from its settings.ini."
    repo = Path(repo)
    if not (repo / 'settings.ini').exists():
        raise FileNotFoundError(f'{repo}/settings.ini not found: not an nbdev project')
    cfg = _config(repo)
    return repo / cfg.get('nbs_path', 'nbs'), repo / cfg.get('lib_path', cfg.get('lib_name', ''))


def notebooks(nbs):
    "Notebooks nbdev works on: `*.ipynb` under `nbs`, skipping files and folders starting with `_` or `.`."
    nbs = Path(nbs)
    return sorted(
        p for p in nbs.rglob('*.ipynb') if not any(part.startswith(('_', '.')) for part in p.relative_to(nbs).parts)
    )


def _py_files(lib):
    lib = Path(lib)
    return {
        p.relative_to(lib).as_posix(): p
        for p in lib.rglob('*.py')
        if not any(part in _SKIP_DIRS or part.startswith('.') for part in p.relative_to(lib).parts)
    }


def copy_project(repo, dest, lib_py=True):
    """Copy what nbdev needs (settings.ini, pyproject.toml, the notebooks folder, the library folder)
    from `repo` into `dest`. With `lib_py=False` only the library's top `__init__.py` is copied (the one
    hand-kept file), so that an export shows which modules the notebooks really produce."""
    repo, dest = Path(repo), Path(dest)
    nbs, lib = project_paths(repo)
    for name in ('settings.ini', 'pyproject.toml'):
        if (repo / name).exists():
            shutil.copy2(repo / name, dest / name)
    shutil.copytree(nbs, dest / nbs.relative_to(repo), ignore=shutil.ignore_patterns(*_SKIP_DIRS))
    if lib_py:
        shutil.copytree(lib, dest / lib.relative_to(repo), ignore=shutil.ignore_patterns(*_SKIP_DIRS))
    else:
        (dest / lib.relative_to(repo)).mkdir(parents=True)
        if (lib / '__init__.py').exists():
            shutil.copy2(lib / '__init__.py', dest / lib.relative_to(repo) / '__init__.py')
    return dest


def export_problems(repo):
    """Export the notebooks of `repo` into a temporary copy with `nbdev_export` and compare every
    generated `.py` file (and `_modidx.py`) with `repo`'s library folder. Returns a list of problems:
    files out of date, files no notebook produces, files the notebooks produce but that are missing."""
    repo = Path(repo).resolve()
    _, lib = project_paths(repo)
    with tempfile.TemporaryDirectory(prefix='sevdino_export_') as tmp:
        copy_project(repo, tmp, lib_py=False)
        _run([nbdev_command('nbdev_export')], cwd=tmp)
        fresh = _py_files(Path(tmp) / lib.relative_to(repo))
        committed = _py_files(lib)
        rel = lib.relative_to(repo).as_posix()
        problems = []
        for name in sorted(set(fresh) | set(committed)):
            if name not in committed:
                problems.append(f'{rel}/{name}: missing (the notebooks export it); {FIX_EXPORT}')
            elif name not in fresh:
                problems.append(
                    f'{rel}/{name}: no notebook produces it (stale or hand-written); '
                    f'delete it or restore its notebook, then {FIX_EXPORT}'
                )
            elif fresh[name].read_text(encoding='utf-8') != committed[name].read_text(encoding='utf-8'):
                problems.append(
                    f'{rel}/{name}: differs from a fresh export of the notebooks '
                    f'(hand-edited, or a notebook changed without export); {FIX_EXPORT}'
                )
    return problems


def clean_problems(repo):
    """Run `nbdev_clean` on a temporary copy of `repo`'s notebooks and compare each with the original.
    Returns a list of problems naming each notebook that cleaning would change (or could not read)."""
    repo = Path(repo).resolve()
    nbs, _ = project_paths(repo)
    with tempfile.TemporaryDirectory(prefix='sevdino_clean_') as tmp:
        copy_project(repo, tmp, lib_py=False)
        tmp_nbs = Path(tmp) / nbs.relative_to(repo)
        res = _run([nbdev_command('nbdev_clean'), '--fname', str(tmp_nbs)], cwd=tmp)
        problems = []
        if 'Failed to clean notebook' in res.stderr:
            problems.append(
                f'nbdev_clean could not process a notebook (is it valid JSON/nbformat?):\n{res.stderr.strip()}'
            )
        for nb in notebooks(nbs):
            rel = nb.relative_to(repo).as_posix()
            cleaned = (tmp_nbs / nb.relative_to(nbs)).read_text(encoding='utf-8')
            if cleaned != nb.read_text(encoding='utf-8'):
                problems.append(
                    f'{rel}: not clean (nbdev_clean would change it: execution counts, cell '
                    f'metadata or formatting); run `nbdev_clean --fname {rel}` and commit'
                )
    return problems


def report(problems, what):
    "One failure message listing `problems`."
    return f'{what}: {len(problems)} problem(s)\n  - ' + '\n  - '.join(problems)


# --- executed notebooks keep their outputs ----------------------------------------------------------

# Matplotlib calls that open a figure; at the end of the cell the inline backend shows every open one.
_FIGURE_CALLS = frozenset(
    {
        'figure',
        'subplots',
        'subplot',
        'subplot_mosaic',
        'imshow',
        'matshow',
        'plot',
        'scatter',
        'hist',
        'hist2d',
        'bar',
        'barh',
        'boxplot',
        'violinplot',
        'errorbar',
        'fill_between',
        'step',
        'stem',
        'pie',
        'contour',
        'contourf',
        'pcolormesh',
        'hexbin',
        'semilogx',
        'semilogy',
        'loglog',
    }
)
_PYPLOT_NAMES = ('plt', 'pyplot')
_DIRECTIVE_LINE = re.compile(r'\s*#\s*\|')


def _directives(source):
    "The nbdev directive lines at the top of a cell (as nbdev reads them), lower-cased without `#|`."
    found = []
    for line in source.splitlines():
        if _DIRECTIVE_LINE.match(line):
            found.append(_DIRECTIVE_LINE.sub('', line, count=1).strip().lower())
        elif line.strip() and not line.lstrip().startswith('%%'):
            break
    return found


def _has_directive(source, name, value=None):
    for d in _directives(source):
        key, _, rest = d.partition(':')
        if key.strip() == name and (value is None or rest.strip().rstrip(':').strip() == value):
            return True
    return False


_NOT_PYTHON_LINE = re.compile(r'\s*(%|!(?!=)|#\s*\|)')


def _python_lines(source):
    "`source` without directive lines, line magics and shell escapes, which `ast` cannot parse."
    return '\n'.join(l for l in source.splitlines() if not _NOT_PYTHON_LINE.match(l))


def _ends_with_semicolon(code):
    "Whether the last token is `;`, which makes IPython display nothing."
    last = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type not in (
                tokenize.COMMENT,
                tokenize.NL,
                tokenize.NEWLINE,
                tokenize.INDENT,
                tokenize.DEDENT,
                tokenize.ENDMARKER,
            ):
                last = tok
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.string == ';'


def _calls_run_by_the_cell(tree):
    "Call nodes the cell itself runs: those in function, lambda and class bodies only run when called."
    todo, calls = [tree], []
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Call):
            calls.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return calls


def _call_name(call):
    "('plt', 'show') for `plt.show(...)`, (None, 'display') for `display(...)`, ('', 'm') for `f().m()`."
    f = call.func
    if isinstance(f, ast.Name):
        return None, f.id
    if isinstance(f, ast.Attribute):
        return (f.value.id if isinstance(f.value, ast.Name) else ''), f.attr
    return '', ''


def _drawing(calls, helpers):
    """'shows' when `calls` surely display something (`display(...)`, `plt.show()`, a helper that does),
    'opens' when they open a figure the inline backend will show (pyplot figure calls, helpers that
    do) and no `plt.close(...)` discards it first, else None."""
    names = [_call_name(c) for c in calls]
    if any(
        n == (None, 'display')
        or (n[0] in _PYPLOT_NAMES and n[1] == 'show')
        or (n[0] is None and helpers.get(n[1]) == 'shows')
        for n in names
    ):
        return 'shows'
    opens = any(
        (n[0] in _PYPLOT_NAMES and n[1] in _FIGURE_CALLS) or (n[0] is None and helpers.get(n[1]) == 'opens')
        for n in names
    )
    closes = any(n[0] in _PYPLOT_NAMES and n[1] == 'close' for n in names)
    return 'opens' if opens and not closes else None


def _parse_cell(source):
    "The cell's Python code and its `ast` tree, or None for empty cells, cell magics and non-Python code."
    if not source.strip() or source.lstrip().startswith('%%'):
        return None
    code = _python_lines(source)
    try:
        return code, ast.parse(code)
    except SyntaxError:
        return None


def drawing_helpers(sources, helpers=None):
    """Functions defined at the top level of the code cells `sources` (one notebook, in order) that draw
    when called: name -> 'shows' or 'opens' (see `_drawing`). A cell calling one draws a figure."""
    helpers = dict(helpers or {})
    for source in sources:
        parsed = _parse_cell(source)
        if parsed is None:
            continue
        for node in parsed[1].body:
            if isinstance(node, ast.FunctionDef):
                calls = [c for stmt in node.body for c in _calls_run_by_the_cell(stmt)]
                kind = _drawing(calls, helpers)
                if kind:
                    helpers[node.name] = kind
    return helpers


def output_expected(source, helpers=None):
    """Why running the code cell `source` must show an output, or None when it need not.

    Decided from the source alone, always on the safe side (a cell is flagged only when running it
    certainly shows something):
    - 'it ends with an expression': the last top-level statement is an expression that IPython
      displays. Calls are not counted (`df.head()` displays, `test_eq(a, b)` returns None, and which
      one a call is cannot be told from the source), nor `await`/`yield`, string constants (notes),
      `None` and `...`, nor anything when the cell ends with `;`.
    - 'it prints': a top-level statement is a `print(...)` call (without `file=`); prints inside
      loops and branches are not counted (they may not run). Likewise 'it shows documentation' for
      a top-level `show_doc(...)`.
    - 'it draws a figure': the cell itself (not a function it only defines) calls `display(...)` or
      `plt.show()`, or a pyplot call that opens a figure (`plt.subplots`, `plt.figure`, `plt.imshow`,
      `plt.plot`, ...) without `plt.close(...)`, which discards the figure before the inline backend
      shows it (the save-to-file pattern); or it calls one of `helpers` (from `drawing_helpers`: the
      notebook's own functions that draw). Drawing on existing axes (`ax.plot`) or through imported
      functions is not counted.
    Cells that are empty, cell magics (`%%capture`, `%%time`: the magic decides what shows) and code
    `ast` cannot parse (other IPython syntax) need no output.
    """
    parsed = _parse_cell(source)
    if parsed is None or not parsed[1].body:
        return None
    code, tree = parsed
    last = tree.body[-1]
    if isinstance(last, ast.Expr) and not _ends_with_semicolon(code):
        v = last.value
        quiet = isinstance(v, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)) or (
            isinstance(v, ast.Constant) and (isinstance(v.value, str) or v.value is None or v.value is Ellipsis)
        )
        if not quiet:
            return 'it ends with an expression'
    top_calls = [s.value for s in tree.body if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)]
    if any(_call_name(c) == (None, 'print') and not any(k.arg == 'file' for k in c.keywords) for c in top_calls):
        return 'it prints'
    if any(_call_name(c) == (None, 'show_doc') for c in top_calls):
        return 'it shows documentation'
    if _drawing(_calls_run_by_the_cell(tree), helpers or {}):
        return 'it draws a figure'
    return None


def _first_code_line(source):
    lines = [l.strip() for l in source.splitlines() if l.strip() and not _DIRECTIVE_LINE.match(l)]
    first = lines[0] if lines else ''
    return first if len(first) <= 70 else first[:67] + '...'


def _source(cell):
    source = cell.get('source', '')
    return ''.join(source) if isinstance(source, list) else source


def output_problems(repo):
    """Code cells of `repo`'s notebooks that must show an output (see `output_expected`) but have none
    (the cell's output was deleted, or the notebook was saved unexecuted). Notebooks are committed
    executed because their outputs are the docs. Not checked: cells marked `#| eval: false` (the docs
    never run them), and cells marked `#| slow` (an executed notebook runs them too, but slow cells
    may be left unexecuted, so a slow cell without output is accepted). Cells are numbered from 1
    among all the notebook's cells (markdown included). Returns a list of problems."""
    repo = Path(repo).resolve()
    nbs, _ = project_paths(repo)
    problems = []
    for nb_path in notebooks(nbs):
        rel = nb_path.relative_to(repo).as_posix()
        fix = (
            f'execute the notebook (`jupyter nbconvert --to notebook --execute --inplace {rel}`) '
            f'then `nbdev_clean --fname {rel}`'
        )
        try:
            cells = json.loads(nb_path.read_text(encoding='utf-8'))['cells']
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f'{rel}: cannot read its cells ({type(e).__name__}: {e}); is it valid nbformat JSON?')
            continue
        sources = {k: _source(cell) for k, cell in enumerate(cells, 1) if cell.get('cell_type') == 'code'}
        helpers = drawing_helpers(sources.values())
        for k, source in sources.items():
            if cells[k - 1].get('outputs'):
                continue
            if _has_directive(source, 'eval', 'false') or _has_directive(source, 'slow'):
                continue
            why = output_expected(source, helpers)
            if why:
                problems.append(
                    f'{rel} cell {k} (first line: `{_first_code_line(source)}`) has no output ({why}): {fix}'
                )
    return problems


# --- the docs build runs no notebook code but imports and definitions ------------------------------

_DOCS_RUN_DIRECTIVES = ('export', 'exports', 'exporti', 'exec_doc')


def docs_execution_problems(repo):
    """Code cells that the docs build would run although they are neither exported nor marked
    `#| exec_doc`. `nbdev_proc_nbs` executes every cell that contains an import (so that `show_doc`
    can see the names), whatever else the cell does: a test or a training written in the same cell as
    its imports runs again at every docs build, and made it take longer than its time limit. Such a
    cell must hold imports only; the code that uses them goes in the next cell. Cells marked
    `#| eval: false` are never run and are not checked. Returns a list of problems."""
    repo = Path(repo).resolve()
    nbs, _ = project_paths(repo)
    problems = []
    for nb_path in notebooks(nbs):
        rel = nb_path.relative_to(repo).as_posix()
        try:
            cells = _cells(nb_path)
        except ValueError as e:
            problems.append(f'{rel}: cannot read its cells ({e}); is it valid nbformat JSON?')
            continue
        for k, cell in enumerate(cells, 1):
            source = _source(cell)
            if cell.get('cell_type') != 'code' or _has_directive(source, 'eval', 'false'):
                continue
            if any(_has_directive(source, name) for name in _DOCS_RUN_DIRECTIVES):
                continue
            parsed = _parse_cell(source)
            if parsed is None:
                continue
            tree = parsed[1]
            if not any(isinstance(node, (ast.Import, ast.ImportFrom)) for node in ast.walk(tree)):
                continue
            others = [node for node in tree.body if not isinstance(node, (ast.Import, ast.ImportFrom))]
            if others:
                problems.append(
                    f'{rel} cell {k} (first line: `{_first_code_line(source)}`) imports and also runs code '
                    f'(line {others[0].lineno} of its code), so the docs build runs that code too: move the '
                    "imports into an import-only cell (or the notebook's import cell)"
                )
    return problems


# --- chapters import only earlier chapters -----------------------------------------------------------

_CHAPTER_NAME = re.compile(r'\d+_')


def _cells(nb_path):
    "The notebook's cells (a list of dicts); raises ValueError when it is not nbformat JSON."
    try:
        return json.loads(Path(nb_path).read_text(encoding='utf-8'))['cells']
    except (KeyError, TypeError) as e:
        raise ValueError(f'no cells ({type(e).__name__}: {e})') from e


def _default_exp(cells):
    "The module a notebook exports to (its `#| default_exp` directive), or None."
    for cell in cells:
        if cell.get('cell_type') != 'code':
            continue
        for d in _directives(_source(cell)):
            key, _, rest = d.partition(' ')
            if key == 'default_exp' and rest.strip():
                return rest.strip()
    return None


def is_chapter(nbs, nb_path):
    "Whether `nb_path` is a numbered chapter: `NN_name.ipynb` directly in `nbs` (index and tutorials are not)."
    return Path(nb_path).parent == Path(nbs) and bool(_CHAPTER_NAME.match(Path(nb_path).name))


def exported_modules(repo):
    """Module name (`data`, `sub.mod`: without the library's name) -> the notebook exporting it, a path
    relative to `repo`, from each notebook's `#| default_exp` cell."""
    repo = Path(repo).resolve()
    nbs, _ = project_paths(repo)
    found = {}
    for nb_path in notebooks(nbs):
        try:
            module = _default_exp(_cells(nb_path))
        except ValueError:
            continue
        if module:
            found[module] = nb_path.relative_to(repo).as_posix()
    return found


def _imported_modules(tree, lib_name, module=None):
    """(line, module) for each module of the library `lib_name` that the code `tree` imports, anywhere
    (in functions too): `from lib.X import ...`, `import lib.X`, `from lib import X`, and relative
    imports (`from .X import ...`) when `module` (the importing module, without `lib_name`) is known.
    Names given to `importlib` as strings (the plugin mechanism) are not imports."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(lib_name + '.'):
                    found.append((node.lineno, alias.name[len(lib_name) + 1 :]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = (module or '').split('.')[:-1]
                if node.level - 1 > len(package):
                    continue
                base = package[: len(package) - (node.level - 1)]
            elif node.module == lib_name or (node.module or '').startswith(lib_name + '.'):
                base = node.module.split('.')[1:]
            else:
                continue
            if node.module and node.level:
                base = base + node.module.split('.')
            if base:
                found.append((node.lineno, '.'.join(base)))
            else:  # `from lib import X` or `from . import X`: X may be a module
                found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def _later(nbs, importer, imported):
    "Whether the notebook `imported` is a chapter that sorts after the chapter `importer` (paths under nbs)."
    return is_chapter(nbs, importer) and is_chapter(nbs, imported) and Path(imported).name > Path(importer).name


def chapter_order_problems(repo):
    """Code cells of a numbered chapter (`nbs/NN_name.ipynb`) that import a module exported by a chapter
    sorting after it (by file name: 00_core < 00_data < 01_synthetic < ...): a chapter builds only on
    earlier chapters, so that the book reads in order. The module of a notebook is its `#| default_exp`;
    imports are `from lib.X import`, `from .X import`, `import lib.X` anywhere in a cell (inside
    functions too). index.ipynb and tutorials may import anything. Returns a list of problems."""
    repo = Path(repo).resolve()
    nbs, _ = project_paths(repo)
    lib_name = _config(repo).get('lib_name', '')
    modules = exported_modules(repo)
    problems = []
    for nb_path in notebooks(nbs):
        if not is_chapter(nbs, nb_path):
            continue
        rel = nb_path.relative_to(repo).as_posix()
        try:
            cells = _cells(nb_path)
        except ValueError as e:
            problems.append(f'{rel}: cannot read its cells ({e}); is it valid nbformat JSON?')
            continue
        own = _default_exp(cells)
        for k, cell in enumerate(cells, 1):
            if cell.get('cell_type') != 'code':
                continue
            parsed = _parse_cell(_source(cell))
            if parsed is None:
                continue
            for _, module in _imported_modules(parsed[1], lib_name, own):
                other = modules.get(module)
                if other and _later(nbs, nb_path, repo / other):
                    problems.append(
                        f'{rel} cell {k} imports {lib_name}.{module}, exported by the later chapter {other}: '
                        f'a chapter may use only earlier ones; move what it needs to an earlier chapter '
                        f'(or this code to a later one)'
                    )
    return problems


_GENERATED_FROM = re.compile(r'^# AUTOGENERATED! DO NOT EDIT! File to edit: (?P<nb>\S+?)\.?$', re.MULTILINE)


def module_order_problems(repo):
    """Generated modules (the library's `.py` files, read as nbdev wrote them) that import a module whose
    chapter sorts after their own: the library's import graph follows the chapters. A module's chapter is
    the notebook named in its `AUTOGENERATED ... File to edit:` header; every import statement counts,
    also inside functions, but names handed to `importlib` as strings (how `sevdino.core.load_models`
    finds model modules) do not. Files without the header (`__init__.py`, `_modidx.py`) are skipped."""
    repo = Path(repo).resolve()
    nbs, lib = project_paths(repo)
    lib_name = _config(repo).get('lib_name', '')
    chapter_of = {}
    for name, path in _py_files(lib).items():
        m = _GENERATED_FROM.search(path.read_text(encoding='utf-8'))
        if m:
            module = name[: -len('.py')].replace('/', '.')
            module = module[: -len('.__init__')] if module.endswith('.__init__') else module
            chapter_of[module] = (path, (path.parent / m['nb']).resolve())
    problems = []
    for module, (path, nb_path) in sorted(chapter_of.items()):
        rel = path.relative_to(repo).as_posix()
        try:
            tree = ast.parse(path.read_text(encoding='utf-8'))
        except SyntaxError as e:
            problems.append(f'{rel}: cannot be parsed ({e})')
            continue
        for line, other in _imported_modules(tree, lib_name, module):
            if other in chapter_of and _later(nbs, nb_path, chapter_of[other][1]):
                later_nb = chapter_of[other][1].relative_to(repo).as_posix()
                problems.append(
                    f'{rel} line {line} imports {lib_name}.{other}, exported by {later_nb}, a later chapter than '
                    f'its own {nb_path.relative_to(repo).as_posix()}: fix the import in the notebook, then '
                    f'{FIX_EXPORT}'
                )
    return problems


# --- no references to files outside the repository ----------------------------------------------------

# The user's documents that live next to the repository, not in it: a reader of the repository cannot
# open them, so the text says what they hold instead ("Dinomaly's paper and reference code").
OUTSIDE_DOCUMENTS = ('FACTS', 'DESIGN')
DOC_FILES = ('README.md', 'DEVELOPERS.md')
_OUTSIDE_NAME = re.compile(r'\b(?:' + '|'.join(OUTSIDE_DOCUMENTS) + r')(?:\.md)?\b')
_MD_FILE_NAME = re.compile(r'(?<![\w./-])[A-Z][A-Z0-9_-]*\.md\b')
_LINK = re.compile(r'\]\(\s*<?([^)\s>]+)>?[^)]*\)|\b(?:src|href)\s*=\s*["\']([^"\']+)["\']')
_UP_PATH = re.compile(r'(?<![\w/.~$:-])\.\.(?:/[^\s`\'"()\[\]<>,;|*]*)+')


def _escapes(folder, path):
    "Whether the relative `path`, read from `folder` (relative to the repo root, posix), leaves the root."
    joined = os.path.normpath(os.path.join(folder, path.split('#')[0].split('?')[0]))
    return joined == '..' or joined.startswith('../')


def _repo_file_names(repo):
    """Base names of the repository's files: git's (tracked, and new files it does not ignore) in a git
    work tree, else every file under `repo` but hidden and build folders."""
    res = subprocess.run(
        ['git', '-C', str(repo), 'ls-files', '--cached', '--others', '--exclude-standard'],
        capture_output=True,
        text=True,
    )
    if res.returncode == 0 and res.stdout.strip():
        return {Path(line).name for line in res.stdout.splitlines()}
    names = set()
    for _, dirnames, filenames in os.walk(repo):
        dirnames[:] = [d for d in dirnames if not d.startswith('.') and d not in _SKIP_DIRS]
        names.update(filenames)
    return names


def _excerpt(text, start, end, width=40):
    "The text around `text[start:end]` on its line, with `...` where it was cut."
    line_start = text.rfind('\n', 0, start) + 1
    line_end = text.find('\n', end)
    line_end = len(text) if line_end < 0 else line_end
    a, b = max(line_start, start - width), min(line_end, end + width)
    return ('...' if a > line_start else '') + text[a:b].strip() + ('...' if b < line_end else '')


def text_reference_problems(text, folder, file_names):
    """What in `text` (markdown, a comment, a docstring) refers to a file outside the repository: a list
    of (description, excerpt). `folder` is the text's folder relative to the repo root (posix, '.' at
    the root); `file_names` the base names of the repo's files. Caught:
    - a link (`[text](target)`, `src=`/`href=`) whose relative target, read from `folder` (as the docs
      render it), leaves the repository;
    - a bare relative path starting with `../` that leaves the repository when read from `folder` (where a
      notebook runs) or from the root (where commands run);
    - a mention of the user's documents kept outside (`OUTSIDE_DOCUMENTS`: FACTS.md, DESIGN.md, also
      without `.md`) or of another upper-case `NAME.md` that no file of the repository has."""
    found, spans = [], []

    def add(what, m):
        spans.append(m.span())
        found.append((what, _excerpt(text, *m.span())))

    for m in _LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if re.match(r'[a-zA-Z][\w+.-]*:|#|/', target):  # a URL, an anchor, a site path
            spans.append(m.span())
        elif _escapes(folder, target):
            add(f'link `{target}` leads outside the repository', m)
        else:
            spans.append(m.span())
    for m in _UP_PATH.finditer(text):
        path = m.group(0).rstrip('.:')
        if not any(a <= m.start() < b for a, b in spans) and (_escapes(folder, path) or _escapes('.', path)):
            add(f'path `{path}` points outside the repository', m)
    for m in _OUTSIDE_NAME.finditer(text):
        if not any(a <= m.start() < b for a, b in spans):
            add(f'`{m.group(0)}` is a document outside the repository', m)
    for m in _MD_FILE_NAME.finditer(text):
        if m.group(0) not in file_names and not any(a <= m.start() < b for a, b in spans):
            add(f'`{m.group(0)}` is not a file of the repository', m)
    return found


def _comments_and_docstrings(source):
    "(kind, text) of each comment and docstring of a code cell (directive lines and magics left out)."
    parts = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT and not _DIRECTIVE_LINE.match(tok.string):
                parts.append(('comment', tok.string))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        parts.extend(('comment', l) for l in source.splitlines() if l.lstrip().startswith('#'))
    parsed = _parse_cell(source)
    if parsed is not None:
        for node in ast.walk(parsed[1]):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    parts.append((f'docstring of {node.name}', doc))
    return parts


def outside_reference_problems(repo):
    """References to files outside the repository in the notebooks (markdown cells, comments and
    docstrings of code cells; outputs are not read) and in the top-level README.md and DEVELOPERS.md:
    relative links or paths that leave the repository root, and mentions of documents the repository
    does not hold (see `text_reference_problems`). Each problem names the file, the cell (numbered from
    1 among all cells) or line, and the text. Returns a list of problems."""
    repo = Path(repo).resolve()
    nbs, _ = project_paths(repo)
    names = _repo_file_names(repo)
    fix = 'say what it is in words (the repository must stand alone) or point to a file in it'
    problems = []
    for nb_path in notebooks(nbs):
        rel = nb_path.relative_to(repo).as_posix()
        folder = nb_path.parent.relative_to(repo).as_posix()
        try:
            cells = _cells(nb_path)
        except ValueError as e:
            problems.append(f'{rel}: cannot read its cells ({e}); is it valid nbformat JSON?')
            continue
        for k, cell in enumerate(cells, 1):
            source = _source(cell)
            if cell.get('cell_type') == 'markdown':
                parts = [('markdown', source)]
            elif cell.get('cell_type') == 'code':
                parts = _comments_and_docstrings(source)
            else:
                continue
            for kind, text in parts:
                for what, excerpt in text_reference_problems(text, folder, names):
                    problems.append(f'{rel} cell {k} ({kind}): {what}, in "{excerpt}": {fix}')
    for name in DOC_FILES:
        path = repo / name
        if not path.exists():
            continue
        for n, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
            for what, excerpt in text_reference_problems(line, '.', names):
                problems.append(f'{name} line {n}: {what}, in "{excerpt}": {fix}')
    return problems
