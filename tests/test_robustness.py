"""Training never loses work, bad input never gives a silent wrong answer, weights never run code.

These tests run the `sevdino` command on tiny built-in data with random encoder weights: in a
subprocess where a process is needed (to kill it, to see its exit code), else in this process through
`sevdino.cli.main` (same code, same exit code, without paying for a Python start each time).
"""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from safetensors.torch import load_file

from sevdino.synthetic import make_hdmap_sim
from sevdino.train import TrainConfig, TrainingError, fit, load_latest_checkpoint

SEVDINO = [sys.executable, '-c', 'import sys; from sevdino.cli import main; sys.exit(main())']


def tiny(steps=40, checkpoint_every=5):
    "Settings of a tiny run: random encoder weights, 28 x 84 images, a checkpoint every `checkpoint_every` steps."
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
        str(checkpoint_every),
        '--quiet',
    ]


TINY = tiny()
# the kill test's runs: long enough to be killed midway, with few checkpoints (each is a 250 MB write)
KILLABLE = tiny(40, checkpoint_every=10)
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def sevdino_process(*args):
    "Run the `sevdino` command in a subprocess; returns (exit code, stdout + stderr)."
    result = subprocess.run(SEVDINO + [str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=600)
    return result.returncode, result.stdout + result.stderr


def sevdino(*args):
    "Run `sevdino.cli.main` in this process; returns (exit code, stdout + stderr)."
    from sevdino.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([str(a) for a in args])
    return code, out.getvalue()


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_hdmap_sim(
        tmp_path_factory.mktemp('data') / 'hdmap', domains=('A',), n_train=8, n_test_good=3, n_test_faulty=6
    )


def _weights(run):
    return load_file(str(Path(run) / 'model.safetensors'))


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- kill and resume


def test_sigkill_then_resume_gives_the_uninterrupted_weights(data, tmp_path):
    reference = tmp_path / 'reference'  # in a process like the killed one: same thread count, so the same float sums
    code, out = sevdino_process('train', '--data', data, '--domain', 'A', '--out', reference, *KILLABLE)
    assert code == 0, out

    run = tmp_path / 'killed'
    process = subprocess.Popen(
        SEVDINO + ['train', '--data', str(data), '--domain', 'A', '--out', str(run), *KILLABLE],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while (
        not len(list((run / 'checkpoint').glob('step-*.pt'))) >= 2 and time.time() < deadline and process.poll() is None
    ):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, 'training finished before it could be killed: make KILLABLE longer'
    assert not (run / 'model.safetensors').exists()  # a killed run does not look finished
    checkpoints = sorted((run / 'checkpoint').glob('step-*.pt'))
    assert checkpoints and not list((run / 'checkpoint').glob('*.tmp'))  # no temporary file is taken for a checkpoint

    # Cut the newest checkpoint short, as a full disk would: resume must warn and use the one before.
    newest = checkpoints[-1]
    newest.write_bytes(newest.read_bytes()[:200])
    code, out = sevdino_process('train', '--data', data, '--domain', 'A', '--out', run, *KILLABLE, '--resume')
    assert code == 0, out
    assert 'unreadable checkpoint' in out and newest.name in out
    _assert_same_weights(_weights(run), _weights(reference))
    log = (run / 'log.csv').read_text().splitlines()
    assert [int(line.split(',')[0]) for line in log[1:]] == list(range(40))  # one log row per step, none doubled


def test_resume_with_other_settings_is_refused(data, tmp_path):
    run = tmp_path / 'run'
    code, out = sevdino('train', '--data', data, '--domain', 'A', '--out', run, *tiny(3))
    assert code == 0, out
    code, out = sevdino(
        'train', '--data', data, '--domain', 'A', '--out', run, *tiny(3), '--aug-ratio', '0.7', '--resume'
    )
    assert code == 2 and 'differ from the run' in out
    code, out = sevdino('train', '--data', data, '--domain', 'A', '--out', run, *tiny(3))
    assert code == 2 and 'already holds a run' in out


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    import sevdino.train as train

    real = train.step_losses

    def nan_at_step_7(model, config, batch, step, *args, **kwargs):
        losses = real(model, config, batch, step, *args, **kwargs)
        if step == 7:
            losses['loss'] = losses['loss'] * float('nan')
        return losses

    monkeypatch.setattr(train, 'step_losses', nan_at_step_7)
    config = TrainConfig(
        data=str(data),
        domain='A',
        out=str(tmp_path / 'run'),
        steps=12,
        batch_size=4,
        image_size=(28, 84),
        weights='none',
        precision='fp32',
        warmup_steps=1,
        checkpoint_every=5,
    )
    with pytest.raises(TrainingError, match='loss is nan at step 7'):
        fit(config, progress=False)
    kept = load_latest_checkpoint(tmp_path / 'run' / 'checkpoint')
    assert kept['step'] == 5 and all(torch.isfinite(v).all() for v in kept['model'].values())
    assert not (tmp_path / 'run' / 'model.safetensors').exists()


# ---------------------------------------------------------------- bad input


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _mvtec(root, train=3, test_good=1, defect=1, size=(56, 56)):
    rng = np.random.default_rng(0)
    for i in range(train):
        _png(root / 'X' / 'train' / 'good' / f'{i}.png', rng.integers(0, 255, size, np.uint8))
    for i in range(test_good):
        _png(root / 'X' / 'test' / 'good' / f'{i}.png', rng.integers(0, 255, size, np.uint8))
    for i in range(defect):
        _png(root / 'X' / 'test' / 'crack' / f'{i}.png', rng.integers(0, 255, size, np.uint8))
        mask = np.zeros(size, np.uint8)
        mask[10:20, 10:20] = 255
        _png(root / 'X' / 'ground_truth' / 'crack' / f'{i}_mask.png', mask)
    return root


def _broken_image(root):
    root = _mvtec(root)
    (root / 'X' / 'train' / 'good' / '1.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    return root


def _text_as_image(root):
    root = _mvtec(root)
    (root / 'X' / 'train' / 'good' / '2.png').write_text('not an image')
    return root


def _empty_folder(root):
    (root / 'X' / 'train' / 'good').mkdir(parents=True)
    return root


def _no_normal_images(root):
    root = _mvtec(root, train=0)
    (root / 'X' / 'train' / 'good').mkdir(parents=True, exist_ok=True)
    return root


def _wrong_layout(root):
    _png(root / 'pictures' / 'a.png', np.zeros((56, 56), np.uint8))
    return root


def _mask_of_wrong_size(root):
    root = _mvtec(root)
    _png(root / 'X' / 'ground_truth' / 'crack' / '0_mask.png', np.zeros((20, 20), np.uint8))
    return root


def _smaller_than_a_patch(root):
    return _mvtec(root, size=(10, 12))


def _nan_in_float_map(root):
    for i in range(3):
        path = root / 'A' / 'train' / 'good' / f'{i}.tiff'
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.ones((31, 95), np.float32)
        array[0, i] = np.nan if i == 1 else 0.5
        tifffile.imwrite(path, array)
    return root


BAD_DATA = {
    'broken image': (_broken_image, ['1.png']),
    'text named .png': (_text_as_image, ['2.png']),
    'empty folder': (_empty_folder, ['no', 'image']),
    'no normal images': (_no_normal_images, ['good']),
    'wrong layout': (_wrong_layout, ['train']),
    'mask of the wrong size': (_mask_of_wrong_size, ['0_mask.png', '0.png']),
    'smaller than one patch': (_smaller_than_a_patch, ['patch']),
    'NaN in a float map': (_nan_in_float_map, ['1.tiff']),
}


@pytest.mark.parametrize('case', list(BAD_DATA))
def test_bad_data_fails_clearly_and_leaves_no_finished_run(case, tmp_path):
    make, words = BAD_DATA[case]
    root = make(tmp_path / 'data')
    run = tmp_path / 'run'
    domain = 'A' if case == 'NaN in a float map' else 'X'
    # two steps: only 'mask of the wrong size' trains (the others fail on reading), and it needs a finished run, not a good one
    code, out = sevdino('train', '--data', root, '--domain', domain, '--out', run, *tiny(2), '--image-size', '56x56')
    if case == 'mask of the wrong size':  # training reads only normal images: the bad mask is found by evaluation
        assert code == 0, out
        code, out = sevdino('evaluate', '--run', run, '--data', root, '--quiet')
        assert not (run / 'metrics.json').exists()
    else:
        assert not (run / 'model.safetensors').exists() and not (run / 'checkpoint').exists()
    assert code == 2, out
    assert 'Traceback' not in out, out
    message = out.strip().splitlines()[-1]
    assert message.startswith('sevdino '), out
    for word in words:
        assert word.lower() in message.lower(), (word, message)


@pytest.mark.parametrize(
    'flag, value, words',
    [
        ('--severity-weight', '-1', ['severity_weight=-1.0', '>= 0']),
        ('--aug-ratio', '1.5', ['aug_ratio=1.5', '[0, 1]']),
        ('--image-size', '30x84', ['multiples of 14']),
        ('--families', 'hline,zigzag', ['families', 'zigzag']),
        ('--steps', '0', ['steps=0']),
    ],
)
def test_impossible_settings_fail_before_anything_is_written(data, tmp_path, flag, value, words):
    run = tmp_path / 'run'
    code, out = sevdino('train', '--data', data, '--domain', 'A', '--out', run, *TINY, flag, value)
    assert code == 2 and 'Traceback' not in out, out
    for word in words:
        assert word in out, (word, out)
    assert not run.exists()


@pytest.fixture(scope='module')
def finished_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp('runs') / 'severity'
    code, out = sevdino('train', '--data', data, '--domain', 'A', '--out', run, *tiny(3))
    assert code == 0, out
    return run


def _copy_run(run, to):
    to.mkdir(parents=True)
    for name in ('config.json', 'model.safetensors'):
        (to / name).write_bytes((run / name).read_bytes())
    return to


def test_config_with_unknown_keys_or_impossible_values(finished_run, data, tmp_path):
    unknown = _copy_run(finished_run, tmp_path / 'unknown')
    config = json.loads((unknown / 'config.json').read_text())
    config['sevrity_weight'] = 0.1
    (unknown / 'config.json').write_text(json.dumps(config))
    code, out = sevdino_process('evaluate', '--run', unknown, '--data', data, '--quiet')  # the real exit code
    assert code == 2 and "unknown keys ['sevrity_weight']" in out and str(unknown / 'config.json') in out, out

    impossible = _copy_run(finished_run, tmp_path / 'impossible')
    config = json.loads((impossible / 'config.json').read_text())
    config['settings']['aug_ratio'] = 1.5  # a model setting: config.json keeps them under 'settings'
    (impossible / 'config.json').write_text(json.dumps(config))
    code, out = sevdino('evaluate', '--run', impossible, '--data', data, '--quiet')
    assert code == 2 and 'aug_ratio=1.5' in out, out
    for run in (unknown, impossible):
        assert not (run / 'metrics.json').exists()


def test_run_folder_of_another_model_is_refused(finished_run, data, tmp_path):
    plain = tmp_path / 'plain'
    code, out = sevdino('train', '--data', data, '--domain', 'A', '--out', plain, '--model', 'dinomaly', *tiny(3))
    assert code == 0, out
    mixed = _copy_run(finished_run, tmp_path / 'mixed')
    (mixed / 'model.safetensors').write_bytes((plain / 'model.safetensors').read_bytes())
    code, out = sevdino('evaluate', '--run', mixed, '--data', data, '--quiet')
    assert code == 2 and 'weights do not fit this model' in out and 'severity_head' in out, out
    assert not (mixed / 'metrics.json').exists()
    code, out = sevdino('evaluate', '--run', tmp_path / 'nowhere', '--data', data)
    assert code == 2 and 'not a run folder' in out


# ---------------------------------------------------------------- safe loading


class RunsCode:
    "An object whose unpickling runs a shell command: what a malicious checkpoint carries."

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_pickled_checkpoint_with_code_is_refused(finished_run, data, tmp_path):
    marker = tmp_path / 'code-ran'
    run = tmp_path / 'resumable'
    code, out = sevdino('train', '--data', data, '--domain', 'A', '--out', run, *tiny(5))
    assert code == 0, out
    (run / 'model.safetensors').unlink()
    evil = run / 'checkpoint' / 'step-00000099.pt'
    torch.save({'step': 99, 'model': RunsCode(marker)}, evil)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        checkpoint = load_latest_checkpoint(run / 'checkpoint')
    assert not marker.exists(), 'unpickling ran code'
    assert checkpoint['step'] == 5  # the honest checkpoint before it
    assert any('step-00000099.pt' in str(w.message) and 'unreadable checkpoint' in str(w.message) for w in caught)

    # model.safetensors that is really a pickle, and encoder weights that carry code
    fake = _copy_run(finished_run, tmp_path / 'fake')
    torch.save({'x': RunsCode(marker)}, fake / 'model.safetensors')
    code, out = sevdino('evaluate', '--run', fake, '--data', data, '--quiet')
    assert code == 2 and 'not a readable safetensors file' in out, out
    torch.save({'pos_embed': RunsCode(marker)}, tmp_path / 'encoder.pth')
    code, out = sevdino(
        'train',
        '--data',
        data,
        '--domain',
        'A',
        '--out',
        tmp_path / 'r',
        *tiny(3),
        '--weights',
        tmp_path / 'encoder.pth',
    )
    assert code == 2 and 'encoder.pth' in out and 'cannot read weights' in out, out
    assert not marker.exists(), 'unpickling ran code'


# ---------------------------------------------------------------- an ablation killed midway


def test_ablation_killed_midway_resumes_without_rerunning_finished_cells(data, tmp_path):
    out = tmp_path / 'ablation'
    command = [
        'ablate',
        '--data',
        data,
        '--domain',
        'A',
        '--out',
        out,
        *tiny(4),
        '--seeds',
        '0',
        '--axis',
        'head_input=bottleneck,discrepancy',
    ]
    process = subprocess.Popen(
        SEVDINO + [str(a) for a in command], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = out / 'runs' / 'base' / 'seed-0' / 'result.json'
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, 'the ablation finished before it could be killed'
    assert first.exists() and not (out / 'ablation.md').exists()
    finished_at = first.stat().st_mtime_ns

    code, text = sevdino(*command)  # the rerun needs no process of its own: only the killed one did
    assert code == 0, text
    assert first.stat().st_mtime_ns == finished_at  # the finished cell was read, not run again
    results = (out / 'results.csv').read_text().splitlines()
    assert len(results) == 1 + 3 and [r.split(',')[0] for r in results[1:]] == [
        'base',
        'head_input=bottleneck',
        'head_input=discrepancy',
    ]
    assert '| base | 1 |' in (out / 'ablation.md').read_text()
    for figure in ('heatmap_A.png', 'axis_head_input.png'):
        assert (out / 'figures' / figure).stat().st_size > 1000
