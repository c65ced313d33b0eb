"""Run folders written before the settings were split (flat `config.json`, DRAEM-SevNet's settings in
`model_options`) still load, evaluate and predict. `tests/data/old_runs/` holds the config files that version
wrote for each model; the weights' format (safetensors of the trainable state) did not change, so each test writes
weights of the right shape beside the old config."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

from sevdino.cli import main
from sevdino.evaluate import evaluate_run
from sevdino.synthetic import make_dataset
from sevdino.train import build_model, read_config, trainable_state_dict

OLD_RUNS = Path(__file__).parent / 'data' / 'old_runs'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('old_runs') / 'data'
    return make_dataset('hdmap-sim', root, seed=0, domains=('A',), n_train=8, n_test_good=2, n_test_faulty=4)


def old_run(tmp_path, name, data):
    run = tmp_path / name
    run.mkdir()
    config = json.loads((OLD_RUNS / f'{name}.json').read_text())
    assert 'settings' not in config and 'encoder' in config  # the flat layout of earlier versions
    config['data'] = str(data)
    (run / 'config.json').write_text(json.dumps(config, indent=2))
    save_file(trainable_state_dict(build_model(read_config(run / 'config.json'))), str(run / 'model.safetensors'))
    return run


@pytest.mark.parametrize('name', ['severity-dinomaly', 'dinomaly', 'draem-sevnet'])
def test_an_old_run_folder_evaluates(tmp_path, data, name):
    run = old_run(tmp_path, name, data)
    before = (run / 'config.json').read_text()
    metrics = evaluate_run(run, data, domain='A', progress=False)
    assert 0 <= metrics['image_auroc'] <= 1 and metrics['model'] == name
    assert (run / 'report.md').exists() and (run / 'predictions.csv').exists()
    assert (run / 'config.json').read_text() == before  # evaluation reads the old config, never rewrites it


def test_an_old_run_folder_predicts_from_the_command_line(tmp_path, data, capsys):
    run = old_run(tmp_path, 'severity-dinomaly', data)
    image = next((Path(data) / 'A' / 'test').rglob('*.tiff'))
    assert main(['predict', '--run', str(run), str(image)]) == 0
    printed = capsys.readouterr()
    assert str(image) in printed.out and printed.out.strip().endswith(',')  # no threshold: the faulty cell is empty
    assert 'has no decision threshold' in printed.err


def test_a_truncated_old_config_is_one_clear_error(tmp_path, data, capsys):
    run = old_run(tmp_path, 'dinomaly', data)
    shutil.copy(run / 'config.json', tmp_path / 'whole.json')
    (run / 'config.json').write_text((tmp_path / 'whole.json').read_text()[:100])
    assert main(['evaluate', '--run', str(run), '--data', str(data), '--domain', 'A', '--quiet']) == 2
    err = capsys.readouterr().err
    assert 'config.json: not a readable JSON file' in err and 'Traceback' not in err
