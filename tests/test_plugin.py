"""A model from outside the library, through the real `sevdino` command.

The toy model lives in a module written to a temporary folder (`toy_sevdino.py`), found through
`PYTHONPATH` and named in `SEVDINO_PLUGINS`: the registry, the generated flags, training, evaluation and
prediction must take it without a change to the library.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from sevdino.synthetic import make_dataset

TOY_MODULE = textwrap.dedent(
    """
    from dataclasses import dataclass

    import torch
    import torch.nn.functional as F
    from torch import nn

    from sevdino.core import Prediction, Settings, at_least, evaluating, register_model, setting


    @dataclass
    class ToySettings(Settings):
        "Settings of the toy model."

        toy_width: int = setting(2, 'side of the learned mean image (resized to the input)', check=at_least(1), why='must be >= 1')


    class Toy(nn.Module):
        "A learned mean image; the anomaly map is the squared deviation from it."

        def __init__(self, settings: ToySettings):
            super().__init__()
            self.mean = nn.Parameter(torch.full((1, 3, settings.toy_width, settings.toy_width), 0.5))

        def expected(self, images):
            return F.interpolate(self.mean, size=tuple(images.shape[-2:]), mode='bilinear', align_corners=False)

        def training_losses(self, batch, step=0, generator=None):
            return {'loss': ((batch - self.expected(batch)) ** 2).mean()}

        def predict(self, images):
            with evaluating(self):
                anomaly_map = ((images - self.expected(images)) ** 2).mean(1, keepdim=True)
                return Prediction(anomaly_map, anomaly_map.flatten(1).mean(1), None)

        def configure_optimizer(self, config):
            optimizer = torch.optim.Adam(self.parameters(), lr=config.lr)
            return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


    @register_model('toy', settings=ToySettings, lr=1e-2)
    def build_toy(settings, weights=None):
        return Toy(settings)
    """
)


@pytest.fixture(scope='module')
def plugin(tmp_path_factory):
    "(environment that loads the toy plugin, a folder to work in, the tiny dataset)."
    root = tmp_path_factory.mktemp('plugin')
    (root / 'toy_sevdino.py').write_text(TOY_MODULE)
    path = os.pathsep.join(filter(None, [str(root), os.environ.get('PYTHONPATH')]))
    env = {**os.environ, 'PYTHONPATH': path, 'SEVDINO_PLUGINS': 'toy_sevdino', 'OMP_NUM_THREADS': '1'}
    data = make_dataset('hdmap-sim', root / 'data', seed=0, domains=('A',), n_train=8, n_test_good=2, n_test_faulty=4)
    return env, root, data


def sevdino(env, *args):
    "Run the `sevdino` command (`python -m sevdino.cli`) in a subprocess; returns (exit code, stdout, stderr)."
    done = subprocess.run(
        [sys.executable, '-m', 'sevdino.cli', *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stdout, done.stderr


def test_the_help_lists_the_plugin_model_and_its_flag(plugin):
    env, _, _ = plugin
    code, out, err = sevdino(env, 'train', '--help')
    assert code == 0, err
    flat = ' '.join(out.split())
    assert 'toy settings: Read by --model toy (toy).' in flat, out
    assert '--toy-width N side of the learned mean image (resized to the input) (default: 2)' in flat, out
    assert '--model {severity-dinomaly,dinomaly,draem-sevnet,draem-sevnet-user,toy}' in flat, out


def test_a_plugin_model_trains_evaluates_and_predicts_through_the_command(plugin):
    env, root, data = plugin
    run = root / 'run'
    code, out, err = sevdino(
        env,
        'train',
        '--model',
        'toy',
        '--data',
        data,
        '--domain',
        'A',
        '--out',
        run,
        '--steps',
        '3',
        '--batch-size',
        '4',
        '--image-size',
        '28x84',
        '--toy-width',
        '3',
        '--quiet',
    )
    assert code == 0, err
    config = (run / 'config.json').read_text()
    assert '"model": "toy"' in config and '"model_module": "toy_sevdino"' in config and '"toy_width": 3' in config

    code, out, err = sevdino(env, 'evaluate', '--run', run, '--data', data, '--domain', 'A', '--quiet')
    assert code == 0, err
    assert 'image_auroc' in (run / 'metrics.json').read_text()

    image = sorted((data / 'A' / 'test').rglob('*.tiff'))[0]
    code, out, err = sevdino(env, 'predict', '--run', run, image)
    assert code == 0, err
    header, row = out.strip().splitlines()[-2:]
    assert header == 'path,score,severity,faulty,threshold'
    path, score, severity, faulty, threshold = row.split(',')
    assert path == str(image) and float(score) >= 0 and severity == '' and faulty in ('0', '1') and float(threshold) > 0

    code, out, err = sevdino(env, 'train', '--model', 'toy', '--data', data, '--out', root / 'r2', '--width', '4')
    assert code == 2 and err.strip() == (
        'sevdino train: error: --width is a setting of draem-sevnet and draem-sevnet-user; --model toy does not read it'
    ), err
