"""Re-runs never misreport, and evaluations are complete or absent (issue 19, items 2 and 3).

An ablation or comparison run again into the same folder reuses a finished cell only for the settings it was run with,
refuses one recorded with other settings (one line, nothing written), and evaluates only the domains a finished cell
lacks. An evaluation replaces the previous one of its folder only once all its files are written, and an evaluation on
another dataset lands in a folder of its own.
"""

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from sevdino.ablation import RESULT_FILE, ablation_cells, run_grid
from sevdino.core import ConfigError
from sevdino.evaluate import evaluate_run
from sevdino.synthetic import make_dataset
from sevdino.train import TrainConfig

TINY = ['--steps', '2', '--batch-size', '4', '--image-size', '28x84', '--weights', 'none', '--precision', 'fp32']
TINY += ['--warmup-steps', '0', '--seeds', '0', '--axis', 'head_input=both', '--quiet']


def sevdino(*args):
    "Run `sevdino.cli.main` in this process; returns (exit code, stdout + stderr)."
    from sevdino.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([str(a) for a in args])
    return code, out.getvalue()


def files_of(folder) -> dict:
    "{path: bytes} of every file under `folder`: to show that nothing changed."
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data') / 'hdmap'
    return make_dataset('hdmap-sim', root, seed=0, domains=('A', 'B'), n_train=8, n_test_good=2, n_test_faulty=4)


@pytest.fixture(scope='module')
def ablation(data, tmp_path_factory):
    "A finished tiny ablation (its base cell only, one seed, evaluated on A) made by the command."
    out = tmp_path_factory.mktemp('ablation') / 'abl'
    code, text = sevdino('ablate', '--data', data, '--domain', 'A', '--out', out, *TINY, '--eval-domains', 'A')
    assert code == 0, text
    return out


# ---------------------------------------------------------------- re-runs


def stand_ins(trained, evaluated):
    "Training and evaluation as far as `run_cell` can tell (a run folder with config and weights; one metric)."

    def train(config, resume=False, progress=False):
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'config.json').write_text(json.dumps(config.to_dict()))
        (out / 'model.safetensors').write_bytes(b'weights')
        trained.append(out.parent.name)

    def evaluate(run, data, domain=None, progress=False):
        evaluated.append((Path(run).parent.name, domain))
        return {'image_auroc': 0.5 if domain == 'A' else 0.75}

    return dict(train=train, evaluate=evaluate, progress=False)


def test_a_grid_rerun_with_other_settings_is_refused_and_writes_nothing(tmp_path):
    base = TrainConfig(data='d', domain='A', steps=2, image_size=(28, 84), weights='none', aug_ratio=0.5)
    cells = ablation_cells(base, {'head_input': ('both', 'bottleneck')})
    trained, evaluated = [], []
    run_grid(base, cells, tmp_path / 'grid', eval_domains=['A'], **stand_ins(trained, evaluated))
    assert trained == ['base', 'head_input=bottleneck'] and len(evaluated) == 2
    before = files_of(tmp_path / 'grid')
    for changed, words in [
        (base.replace(steps=3), 'steps 2 -> 3'),
        (
            base.replace(aug_ratio=0.3, families=('hline',)),
            'aug_ratio 0.5 -> 0.3, families hline+curve+cutpaste -> hline',
        ),
        (base.replace(data='other'), 'data d -> other'),
    ]:
        with pytest.raises(ConfigError) as error:
            run_grid(changed, cells, tmp_path / 'grid', eval_domains=['A'], **stand_ins(trained, evaluated))
        run = tmp_path / 'grid' / 'runs' / 'base' / 'seed-0'
        assert str(error.value) == (
            f'ablation cell base: {run} was run with other settings ({words}); '
            'choose another --out, or rerun with the same settings'
        )
        assert files_of(tmp_path / 'grid') == before  # plan.json, results.csv, result.json: all as they were
    assert len(trained) == 2 and len(evaluated) == 2
    # the same settings, the folder moved, another checkpoint interval: reused, nothing trains or evaluates
    moved = shutil.copytree(tmp_path / 'grid', tmp_path / 'moved')
    again = run_grid(
        base.replace(checkpoint_every=7), cells, moved, eval_domains=['A'], **stand_ins(trained, evaluated)
    )
    assert len(trained) == 2 and len(evaluated) == 2 and list(again.image_auroc) == [0.5, 0.5]


def test_a_grid_rerun_with_another_domain_evaluates_only_that_domain(tmp_path):
    base = TrainConfig(data='d', domain='A', steps=2, image_size=(28, 84), weights='none')
    cells = ablation_cells(base, {'head_input': ('both', 'bottleneck')})
    trained, evaluated = [], []
    run_grid(base, cells, tmp_path / 'grid', eval_domains=['A'], **stand_ins(trained, evaluated))
    evaluated.clear()
    table = run_grid(base, cells, tmp_path / 'grid', eval_domains=['A', 'B'], **stand_ins(trained, evaluated))
    assert evaluated == [('base', 'B'), ('head_input=bottleneck', 'B')] and len(trained) == 2
    assert list(table.domain) == ['A', 'B', 'A', 'B'] and list(table.image_auroc) == [0.5, 0.75, 0.5, 0.75]
    rows = json.loads((tmp_path / 'grid' / 'runs' / 'base' / 'seed-0' / RESULT_FILE).read_text())['rows']
    assert [row['domain'] for row in rows] == ['A', 'B']
    assert json.loads((tmp_path / 'grid' / 'plan.json').read_text())['eval_domains'] == ['A', 'B']


def test_the_ablate_command_refuses_other_settings_and_adds_domains(ablation, data):
    before = files_of(ablation)
    code, text = sevdino('ablate', '--data', data, '--domain', 'A', '--out', ablation, *TINY[2:], '--steps', '3')
    run = ablation / 'runs' / 'base' / 'seed-0'
    assert code == 2 and 'Traceback' not in text, text
    assert (
        text.strip()
        .splitlines()[-1]
        .endswith(
            f'ablation cell base: {run} was run with other settings (steps 2 -> 3); '
            'choose another --out, or rerun with the same settings'
        )
    ), text
    assert files_of(ablation) == before

    own = (run / 'metrics.json').read_bytes()
    code, text = sevdino('ablate', '--data', data, '--domain', 'A', '--out', ablation, *TINY, '--eval-domains', 'A,B')
    assert code == 0, text
    assert (run / 'metrics.json').read_bytes() == own  # A was not evaluated again
    assert json.loads((run / 'domains' / 'B' / 'metrics.json').read_text())['domain'] == 'B'
    report = (ablation / 'ablation.md').read_text()
    assert '### Evaluated on A' in report and '### Evaluated on B' in report


# ---------------------------------------------------------------- evaluations


def failing_figures(*args, **kwargs):
    raise OSError('No space left on device')


def test_a_killed_evaluation_leaves_the_previous_one_whole(ablation, data, tmp_path, monkeypatch):
    run = shutil.copytree(ablation / 'runs' / 'base' / 'seed-0', tmp_path / 'run')
    assert (run / 'report.md').exists()
    before = files_of(run)
    monkeypatch.setattr('sevdino.evaluate.save_figures', failing_figures)
    with pytest.raises(OSError, match='No space left'):
        evaluate_run(run, data, progress=False)
    assert files_of(run) == before  # metrics, predictions, figures and report of the previous evaluation
    assert not [p for p in run.rglob('.evaluation-*')]  # no half-built folder left behind


def test_an_evaluation_on_another_dataset_keeps_the_first(ablation, data, tmp_path):
    run = shutil.copytree(ablation / 'runs' / 'base' / 'seed-0', tmp_path / 'run')
    own = files_of(run)
    other = shutil.copytree(data, tmp_path / 'elsewhere' / data.name)  # another dataset of the same folder name
    metrics = evaluate_run(run, other, progress=False)
    folder = Path(metrics['out']).parent
    assert folder.relative_to(run).parts[:1] == ('datasets',) and folder.name == 'A'
    assert {p: b for p, b in files_of(run).items() if p in own} == own  # the first evaluation is untouched
    report = (folder / 'report.md').read_text()
    assert f'Data: `{other}`, domain A, split test, {metrics["n_images"]} images.' in report
    assert f'Data: `{data}`, domain A, split test' in (run / 'report.md').read_text()
