"""Run folders own themselves, and every failure a user can cause is one line with exit code 2 (issue 19, items 1, 4
(the size bounds) and 5).

Each test asserts the message and that no user file changed. Tiny data, random encoder weights, 28 x 84 images,
a few steps; `sevdino.cli.main` runs in this process except where a second process is the point.
"""

import contextlib
import errno
import hashlib
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import sevdino.train as train
from sevdino.synthetic import make_dataset
from sevdino.train import TrainConfig, TrainingError, check_memory, fit, load_latest_checkpoint

ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def tiny(steps=2):
    return [
        '--steps',
        str(steps),
        '--batch-size',
        '4',
        '--image-size',
        '28x84',
        '--weights',
        'none',
        '--precision',
        'fp32',
        '--warmup-steps',
        '1',
        '--checkpoint-every',
        '2',
        '--quiet',
    ]


def sevdino(*args):
    "Run `sevdino.cli.main` in this process; returns (exit code, stdout + stderr)."
    from sevdino.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([str(a) for a in args])
    return code, out.getvalue()


def one_line_error(code, out, *words):
    "The command failed with exit code 2 and one line 'sevdino CMD: error: ...' holding every word."
    assert code == 2, out
    assert 'Traceback' not in out, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('sevdino ') and ': error: ' in lines[0], out
    for word in words:
        assert str(word) in lines[0], (word, lines[0])
    return lines[0]


def snapshot(folder) -> dict:
    "{relative path: (sha1, mtime_ns)} of every file below `folder` (folders as None): what 'nothing changed' compares."
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        if p.is_file()
        else None
        for p in sorted(folder.rglob('*'))
    }


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data') / 'hdmap'
    return make_dataset('hdmap-sim', root, seed=0, domains=('A',), n_train=8, n_test_good=2, n_test_faulty=4)


@pytest.fixture(scope='module')
def finished_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp('runs') / 'run'
    code, out = sevdino('train', '--data', data, '--domain', 'A', '--out', run, *tiny())
    assert code == 0, out
    return run


def train_args(data, out, *extra):
    return ['train', '--data', data, '--domain', 'A', '--out', out, *tiny(), *extra]


# ---------------------------------------------------------------- run folders own themselves


def test_out_with_the_users_files_is_refused_and_left_alone(data, tmp_path):
    mine = tmp_path / 'mine'
    mine.mkdir()
    for name in ('notes.txt', 'b.png', 'a.csv', 'log.csv'):
        (mine / name).write_text(f'my {name}\n')
    (mine / 'scans').mkdir()
    before = snapshot(mine)
    line = one_line_error(*sevdino(*train_args(data, mine)), mine, 'a.csv, b.png, notes.txt and 1 more', '--out')
    assert "not a sevdino run's" in line
    assert snapshot(mine) == before


def test_out_with_a_config_json_of_the_users_is_refused(data, tmp_path):
    mine = tmp_path / 'project'
    mine.mkdir()
    (mine / 'config.json').write_text('{"experiment": 3, "lr": "high"}')
    (mine / 'log.csv').write_text('epoch,loss\n1,0.5\n')
    before = snapshot(mine)
    one_line_error(*sevdino(*train_args(data, mine)), mine, "its config.json is not a sevdino run's", '--out')
    assert snapshot(mine) == before
    code, out = sevdino(*train_args(data, mine), '--resume')  # nor resumed
    one_line_error(code, out, 'config.json')
    assert snapshot(mine) == before


def test_an_empty_existing_folder_is_fine(data, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    code, out = sevdino(*train_args(data, empty))
    assert code == 0, out
    assert sorted(p.name for p in empty.iterdir()) == [
        'checkpoint',
        'config.json',
        'log.csv',
        'model.safetensors',
        'provenance.json',
        'threshold.json',
    ]


HOLD_LOCK = """
import sys, time
from sevdino.core import run_lock
with run_lock(sys.argv[1]):
    print('locked', flush=True)
    time.sleep(120)
"""


def test_a_second_trainer_on_the_same_folder_fails_at_once(data, finished_run, tmp_path):
    run = tmp_path / 'run'
    run.mkdir()  # a run that another process resumes
    config = json.loads((finished_run / 'config.json').read_text())
    (run / 'config.json').write_text(json.dumps({**config, 'out': str(run)}))
    holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        before = snapshot(run)
        for resume in ([], ['--resume']):
            code, out = sevdino(*train_args(data, run), *resume)
            one_line_error(
                code,
                out,
                f'{run} is being trained by another process (pid {holder.pid}); wait for it or choose another --out',
            )
            assert snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / '.lock').exists()  # a killed holder leaves its lock file; the lock itself went with the process
    code, out = sevdino(*train_args(data, run), '--resume')
    assert code == 0, out
    assert (run / 'model.safetensors').exists() and not (run / '.lock').exists()


def test_temporary_files_of_killed_writes_are_removed_on_resume(data, tmp_path):
    run = tmp_path / 'run'
    code, out = sevdino(*train_args(data, run))
    assert code == 0, out
    (run / 'model.safetensors').unlink()  # as if killed after the last checkpoint
    leftovers = [run / '.model.safetensors.0123abcd.tmp', run / 'checkpoint' / '.step-00000004.pt.89abcdef.tmp']
    for path in leftovers:
        path.write_bytes(b'\0' * 1_000_000)
    code, out = sevdino(*train_args(data, run), '--resume')
    assert code == 0, out
    assert not any(path.exists() for path in leftovers)
    assert (run / 'model.safetensors').exists()


# ---------------------------------------------------------------- what the operating system refuses


def test_out_that_is_a_file_is_named_and_left_alone(data, tmp_path):
    mine = tmp_path / 'results.txt'
    mine.write_text('my results\n')
    one_line_error(*sevdino(*train_args(data, mine)), f'{mine}: Not a directory')
    assert mine.read_text() == 'my results\n'


def test_read_only_folder_is_one_line(data, tmp_path, monkeypatch):
    real_mkdir = pathlib.Path.mkdir

    def read_only(self, *args, **kwargs):  # the tests may run as root, who can write anywhere: say it as the OS would
        if str(self).startswith(str(tmp_path / 'ro')):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, 'mkdir', read_only)
    run = tmp_path / 'ro' / 'x'
    one_line_error(*sevdino(*train_args(data, run)), f'sevdino train: error: {run}: Read-only file system')
    assert not run.exists()


def test_disk_full_names_the_file_and_keeps_nothing_half_written(data, tmp_path, monkeypatch):
    real_write_bytes = pathlib.Path.write_bytes

    def full(self, data):
        if self.name.startswith('.step-'):  # the checkpoint's temporary file: the disk fills up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, 'write_bytes', full)
    run = tmp_path / 'run'
    checkpoint = run / 'checkpoint' / 'step-00000002.pt'
    one_line_error(*sevdino(*train_args(data, run)), f'{checkpoint}: No space left on device')
    assert not (run / 'checkpoint').exists() or not list((run / 'checkpoint').iterdir())  # no temporary file left
    assert not (run / 'model.safetensors').exists()


def test_output_path_that_is_a_folder(finished_run, data, tmp_path):
    folder = tmp_path / 'predictions.csv'
    folder.mkdir()
    image = next((Path(data) / 'A' / 'test').rglob('*.tiff'))
    one_line_error(
        *sevdino('predict', '--run', finished_run, '--out', folder, image),
        f'{folder}: a folder; --out names the CSV file',
    )
    assert list(folder.iterdir()) == []


# ---------------------------------------------------------------- settings checked before anything is written


@pytest.mark.parametrize(
    'change, words',
    [
        (lambda c: c.update(steps='ten'), ["steps='ten': must be an integer"]),
        (lambda c: c.update(image_size=[28]), ['image_size=[28]: must be 2 values']),
        (lambda c: c.update(seed=2**70), ['seed=1180591620717411303424: must be in [0, 9223372036854775807]']),
        (lambda c: c.update(float_range=[0, float('inf')]), ['float_range=(0.0, inf)', 'finite']),
        (lambda c: c['settings'].update(aug_ratio='half'), ["aug_ratio='half': must be a number"]),
        (lambda c: c.update(batch_size=100_000), ['batch_size=100000', 'GiB of activations', 'this machine has']),
    ],
)
def test_bad_setting_in_a_config_file_is_one_line_and_nothing_is_written(finished_run, data, tmp_path, change, words):
    config = json.loads((finished_run / 'config.json').read_text())
    change(config)
    path = tmp_path / 'mine.json'
    path.write_text(json.dumps(config))
    before = snapshot(tmp_path)
    out = tmp_path / 'new-run'
    one_line_error(*sevdino('train', '--config', path, '--out', out, '--quiet'), *words)
    assert snapshot(tmp_path) == before and not out.exists()


def test_truncated_or_mistyped_config_json_of_a_run(finished_run, data, tmp_path):
    for name, text, words in [
        ('truncated', (finished_run / 'config.json').read_text()[:60], ['not a readable JSON file']),
        ('empty', '', ['not a readable JSON file']),
        ('mistyped', (finished_run / 'config.json').read_text().replace('"steps": 2', '"steps": "ten"'), ['steps']),
    ]:
        run = tmp_path / name
        run.mkdir()
        (run / 'config.json').write_text(text)
        (run / 'model.safetensors').write_bytes((finished_run / 'model.safetensors').read_bytes())
        before = snapshot(run)
        one_line_error(*sevdino('evaluate', '--run', run, '--data', data, '--quiet'), run / 'config.json', *words)
        one_line_error(*sevdino('train', '--config', run / 'config.json', '--out', tmp_path / f'{name}-new'), *words)
        code, out = sevdino(*train_args(data, run), '--resume')  # its own folder is refused as well, left alone
        one_line_error(code, out, 'config.json')
        assert snapshot(run) == before and not (tmp_path / f'{name}-new').exists()


@pytest.mark.parametrize('size, batch', [('14000x14000', '16'), ('224', '100000')], ids=['huge image', 'huge batch'])
def test_settings_far_beyond_the_machines_memory(data, tmp_path, size, batch):
    run = tmp_path / 'run'
    h, w = train.parse_image_size(size)
    code, out = sevdino(*train_args(data, run), '--image-size', size, '--batch-size', batch)
    one_line_error(
        code,
        out,
        f'config: image_size=({h}, {w}) with batch_size={batch}: about',
        'GiB of activations; this machine has',
    )
    assert not run.exists()


def test_what_fits_is_never_refused():
    for config in (
        TrainConfig(data='x', image_size=(84, 252), batch_size=16),  # the demo
        TrainConfig(data='x', image_size=(392, 392), batch_size=16, encoder='vit_base_patch14_dinov2'),  # the paper
        TrainConfig(data='x', image_size=(448, 448), batch_size=16, encoder='vit_large_patch14_dinov2'),
        TrainConfig(model='draem-sevnet', data='x', image_size=(256, 256), batch_size=8),  # DRAEM's published setting
    ):
        assert train.activation_bytes(config) < 24 * 2**30, config  # what a 24 GiB machine trains
        check_memory(config)


# ---------------------------------------------------------------- weights that are not finite


def test_nan_weights_are_refused_by_every_reader(finished_run, data, tmp_path):
    run = tmp_path / 'nan'
    run.mkdir()
    (run / 'config.json').write_bytes((finished_run / 'config.json').read_bytes())
    weights = load_file(str(finished_run / 'model.safetensors'))
    name = sorted(weights)[3]
    weights[name] = torch.full_like(weights[name], float('nan'))
    save_file(weights, str(run / 'model.safetensors'))
    before = snapshot(run)
    words = [run / 'model.safetensors', repr(name), 'NaN or infinite']
    one_line_error(*sevdino('evaluate', '--run', run, '--data', data, '--quiet'), *words)
    image = next((Path(data) / 'A' / 'test').rglob('*.tiff'))
    one_line_error(*sevdino('predict', '--run', run, image), *words)
    assert snapshot(run) == before


def test_finite_weights_that_overflow_are_refused_not_reported(finished_run, data, tmp_path):
    "Finite weights can still predict NaN or inf (an overflow); evaluate and predict refuse them, naming the image."
    run = tmp_path / 'overflow'
    run.mkdir()
    (run / 'config.json').write_bytes((finished_run / 'config.json').read_bytes())
    weights = load_file(str(finished_run / 'model.safetensors'))
    weights['bottleneck.fc2.weight'] = weights['bottleneck.fc2.weight'] * 1e37  # finite, but the features overflow
    save_file(weights, str(run / 'model.safetensors'))
    before = snapshot(run)
    image = sorted((Path(data) / 'A' / 'test').rglob('*.tiff'))[0]
    words = ['the model predicts a non-finite score (NaN or inf) for this image', 'or weights that overflow']
    one_line_error(*sevdino('evaluate', '--run', run, '--data', data, '--quiet'), image, *words)
    one_line_error(*sevdino('predict', '--run', run, image), image, *words)
    assert snapshot(run) == before  # no metrics.json, report or predictions.csv of NaNs


@pytest.mark.filterwarnings('ignore:Seems like .optimizer.step')
def test_training_never_saves_non_finite_weights(data, tmp_path, monkeypatch):
    real = train.make_optimizer

    def poisoned(model, config):  # the 4th optimiser step leaves a NaN in the weights while the loss is still finite
        optimizer, scheduler = real(model, config)
        step, calls = optimizer.step, []

        def poisoned_step(*args, **kwargs):
            result = step(*args, **kwargs)
            calls.append(1)
            if len(calls) == 4:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if p.requires_grad).fill_(float('nan'))
            return result

        optimizer.step = poisoned_step
        return optimizer, scheduler

    monkeypatch.setattr(train, 'make_optimizer', poisoned)
    run = tmp_path / 'run'
    config = TrainConfig(
        data=str(data),
        domain='A',
        out=str(run),
        steps=6,
        batch_size=4,
        image_size=(28, 84),
        weights='none',
        precision='fp32',
        warmup_steps=1,
        checkpoint_every=2,
    )
    with pytest.raises(TrainingError, match='are not finite after step 4; stopped without saving them'):
        fit(config, progress=False)
    kept = load_latest_checkpoint(run / 'checkpoint')
    assert kept['step'] == 2 and all(torch.isfinite(v).all() for v in kept['model'].values())
    assert not (run / 'model.safetensors').exists()
    assert sorted(p.name for p in (run / 'checkpoint').iterdir()) == ['step-00000002.pt']
