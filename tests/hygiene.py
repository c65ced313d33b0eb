"""Notebook hygiene checkers, usable on any nbdev project directory (the repo, or a mutated copy).

Each checker returns a list of problems (empty when all is well) and never modifies the project it
checks: it works on a temporary copy and runs nbdev's own commands there, so what it compares with
is exactly what `nbdev_export` and `nbdev_clean` would write.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FIX_EXPORT = 'run `nbdev_export && nbdev_clean` (make export) and commit'
FIX_CLEAN = 'run `nbdev_clean` (or `nbdev_clean --fname <notebook>`; make export does both) and commit'
_SKIP_DIRS = ('__pycache__', '.ipynb_checkpoints', '_proc', '_docs', '.quarto')


def nbdev_command(name):
    "Path of the nbdev console script `name` installed next to the running Python."
    exe = Path(sys.executable).parent / name
    if not exe.exists(): raise FileNotFoundError(f'{exe} not found: install the dev extras (`pip install -e ".[dev]"`)')
    return str(exe)


def _env():
    "Environment for nbdev subprocesses: `IN_TEST` (set by nbdev_test) turns `nbdev_export` into a no-op."
    env = dict(os.environ)
    env.pop('IN_TEST', None)
    return env


def _run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f'`{" ".join(map(str, cmd))}` failed in {cwd} (exit {res.returncode}):\n{res.stdout}\n{res.stderr}')
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
    if not (repo / 'settings.ini').exists(): raise FileNotFoundError(f'{repo}/settings.ini not found: not an nbdev project')
    cfg = _config(repo)
    return repo / cfg.get('nbs_path', 'nbs'), repo / cfg.get('lib_path', cfg.get('lib_name', ''))


def notebooks(nbs):
    "Notebooks nbdev works on: `*.ipynb` under `nbs`, skipping files and folders starting with `_` or `.`."
    nbs = Path(nbs)
    return sorted(p for p in nbs.rglob('*.ipynb')
                  if not any(part.startswith(('_', '.')) for part in p.relative_to(nbs).parts))


def _py_files(lib):
    lib = Path(lib)
    return {p.relative_to(lib).as_posix(): p for p in lib.rglob('*.py')
            if not any(part in _SKIP_DIRS or part.startswith('.') for part in p.relative_to(lib).parts)}


def copy_project(repo, dest, lib_py=True):
    """Copy what nbdev needs (settings.ini, pyproject.toml, the notebooks folder, the library folder)
    from `repo` into `dest`. With `lib_py=False` only the library's top `__init__.py` is copied (the one
    hand-kept file), so that an export shows which modules the notebooks really produce."""
    repo, dest = Path(repo), Path(dest)
    nbs, lib = project_paths(repo)
    for name in ('settings.ini', 'pyproject.toml'):
        if (repo / name).exists(): shutil.copy2(repo / name, dest / name)
    shutil.copytree(nbs, dest / nbs.relative_to(repo), ignore=shutil.ignore_patterns(*_SKIP_DIRS))
    if lib_py: shutil.copytree(lib, dest / lib.relative_to(repo), ignore=shutil.ignore_patterns(*_SKIP_DIRS))
    else:
        (dest / lib.relative_to(repo)).mkdir(parents=True)
        if (lib / '__init__.py').exists(): shutil.copy2(lib / '__init__.py', dest / lib.relative_to(repo) / '__init__.py')
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
                problems.append(f'{rel}/{name}: no notebook produces it (stale or hand-written); '
                                f'delete it or restore its notebook, then {FIX_EXPORT}')
            elif fresh[name].read_text(encoding='utf-8') != committed[name].read_text(encoding='utf-8'):
                problems.append(f'{rel}/{name}: differs from a fresh export of the notebooks '
                                f'(hand-edited, or a notebook changed without export); {FIX_EXPORT}')
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
            problems.append(f'nbdev_clean could not process a notebook (is it valid JSON/nbformat?):\n{res.stderr.strip()}')
        for nb in notebooks(nbs):
            rel = nb.relative_to(repo).as_posix()
            cleaned = (tmp_nbs / nb.relative_to(nbs)).read_text(encoding='utf-8')
            if cleaned != nb.read_text(encoding='utf-8'):
                problems.append(f'{rel}: not clean (nbdev_clean would change it: execution counts, cell '
                                f'metadata or formatting); run `nbdev_clean --fname {rel}` and commit')
    return problems


def report(problems, what):
    "One failure message listing `problems`."
    return f'{what}: {len(problems)} problem(s)\n  - ' + '\n  - '.join(problems)
