"""Data that look right but mean something else: masks of every kind, faulty images without masks, severity.csv rows
that are outside the dataset, off the scale, torn or in another encoding, file names that are not UTF-8, images over
the pixel limit, and `--data` pointed at a domain folder. Each case ends in one line naming the file (and line), or in
a warning naming it, and leaves the user's files as they were."""

import contextlib
import hashlib
import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import sevdino.data as data_module
from sevdino.data import FolderDataset, ImageError, ImageWarning, read_array, read_mask, read_severity_csv
from sevdino.synthetic import make_dataset

TINY = ['--steps', '2', '--batch-size', '4', '--image-size', '28x84', '--weights', 'none', '--precision', 'fp32']
TINY += ['--warmup-steps', '1', '--quiet']


def sevdino(*args):
    "Run `sevdino.cli.main` in this process; returns (exit code, stdout + stderr)."
    from sevdino.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([str(a) for a in args])
    return code, out.getvalue()


def snapshot(root):
    "{relative path: sha256} of every file under `root`: what the user's files hold."
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob('*') if p.is_file()
    }


def last_line(out):
    return out.strip().splitlines()[-1]


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    "One tiny hdmap-sim dataset, copied by `data` for each test that changes it."
    return make_dataset(
        'hdmap-sim', tmp_path_factory.mktemp('src') / 'hdmap', seed=0, domains=('A',), n_train=8, n_test_good=2,
        n_test_faulty=4,
    )  # fmt: skip


@pytest.fixture
def data(source, tmp_path):
    root = tmp_path / 'hdmap'
    for p in source.rglob('*'):
        if p.is_file():
            (root / p.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (root / p.relative_to(source)).write_bytes(p.read_bytes())
    return root


@pytest.fixture(scope='module')
def run(source, tmp_path_factory):
    out = tmp_path_factory.mktemp('runs') / 'run'
    code, text = sevdino('train', '--data', source, '--domain', 'A', '--out', out, *TINY)
    assert code == 0, text
    return out


# ---------------------------------------------------------------- masks


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _mvtec(root, n_faulty=1):
    rng = np.random.default_rng(0)
    for split, defect, n in (('train', 'good', 2), ('test', 'good', 1), ('test', 'crack', n_faulty)):
        for i in range(n):
            _png(root / 'X' / split / defect / f'{i}.png', rng.integers(0, 255, (28, 28), np.uint8))
    (root / 'X' / 'ground_truth' / 'crack').mkdir(parents=True)
    return root


DEFECT = np.zeros((28, 28), bool)
DEFECT[5:12, 3:20] = True
LABELS = DEFECT * np.add.outer(np.arange(28) % 3, np.zeros(28, int)).astype(np.uint8) + DEFECT  # indices 1, 2, 3
MASK_KINDS = {
    '0/255 png': ('png', (DEFECT * 255).astype(np.uint8)),
    '0/1 png': ('png', DEFECT.astype(np.uint8)),
    '0/100 png': ('png', (DEFECT * 100).astype(np.uint8)),
    'label indices png': ('png', LABELS.astype(np.uint8)),
    '16-bit 0/1 png': ('png', DEFECT.astype(np.uint16)),
    '16-bit 0/65535 tiff': ('tif', (DEFECT * 65535).astype(np.uint16)),
    'float 0/0.2 tiff': ('tif', (DEFECT * 0.2).astype(np.float32)),
    'float 0/1 tiff': ('tif', DEFECT.astype(np.float32)),
    'rgb 0/100 bmp': ('bmp', np.dstack([DEFECT * 100] * 3).astype(np.uint8)),
}


@pytest.mark.parametrize('kind', list(MASK_KINDS))
def test_any_non_zero_mask_value_is_a_defect(kind, tmp_path):
    ext, array = MASK_KINDS[kind]
    root = _mvtec(tmp_path / 'data')
    path = root / 'X' / 'ground_truth' / 'crack' / f'0_mask.{ext}'
    tifffile.imwrite(path, array) if ext == 'tif' else _png(path, array)
    before = snapshot(root)
    np.testing.assert_array_equal(read_mask(path)[0].numpy(), DEFECT.astype(np.float32))
    item = FolderDataset(root, 'test')[0]
    assert item['has_mask'] and item['label'] == 1
    np.testing.assert_array_equal(item['mask'][0].numpy(), DEFECT.astype(np.float32))
    assert snapshot(root) == before


def test_faulty_images_without_masks_warn_once_and_are_unknown(tmp_path):
    root = _mvtec(tmp_path / 'data', n_faulty=5)
    _png(root / 'X' / 'ground_truth' / 'crack' / '4_mask.png', (DEFECT * 255).astype(np.uint8))
    before = snapshot(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ds = FolderDataset(root, 'test')
    messages = [str(w.message) for w in caught if issubclass(w.category, ImageWarning)]
    assert messages == [
        f'{root}: 4 faulty test images have no mask: X/test/crack/0.png, X/test/crack/1.png, X/test/crack/2.png '
        'and 1 more; their masks are unknown (item has_mask False), so pixel metrics leave them out rather than '
        'count them as all normal'
    ]
    assert [ds[i]['has_mask'] for i in range(len(ds))] == [False, False, False, False, True, True]
    assert snapshot(root) == before


# ---------------------------------------------------------------- severity.csv


def _faulty(root):
    return sorted(str(p.relative_to(root)) for p in (root / 'A' / 'test').rglob('*.tiff') if p.parent.name != 'good')


def _good(root):
    return sorted(str(p.relative_to(root)) for p in (root / 'A' / 'test' / 'good').glob('*.tiff'))


CSV_CASES = {
    'a file outside the dataset': (
        lambda r: 'path,severity\n../outside.tiff,2\n',
        ['line 2', "'../outside.tiff' lies outside the dataset"],
    ),
    'a file that does not exist': (lambda r: 'path,severity\nA/test/x/none.tiff,2\n', ['line 2', 'not found']),
    'severity 1e300': (lambda r: f'path,severity\n{_faulty(r)[0]},1e300\n', ['line 2', "'1e300'", '<= 100']),
    'severity inf': (lambda r: f'path,severity\n{_faulty(r)[0]},inf\n', ['line 2', "'inf'", 'finite']),
    'a good image graded 9': (lambda r: f'path,severity\n{_good(r)[0]},9\n', ['line 2', 'good (normal) image']),
    'a torn last line': (
        lambda r: f'path,severity,level\n{_faulty(r)[0]},3.5,2\n{_faulty(r)[1]},7.2',
        ['line 3', 'no line end', 'cut short'],
    ),
    'a row of the wrong length': (
        lambda r: f'path,severity,level\n{_faulty(r)[0]},3.5\n',
        ['line 2', '2 fields, but the header has 3'],
    ),
    'latin-1 bytes': (
        lambda r: 'path,severity\n# José\n'.encode('latin-1'),
        ['line 2', 'not UTF-8', 'save the file as UTF-8'],
    ),
}


@pytest.mark.parametrize('case', list(CSV_CASES))
def test_severity_csv_checked_for_meaning(case, data, tmp_path):
    make, words = CSV_CASES[case]
    (data.parent / 'outside.tiff').write_bytes((data / _faulty(data)[0]).read_bytes())
    text = make(data)
    csv = data / 'severity.csv'
    csv.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(data)
    out = tmp_path / 'run'
    code, text = sevdino('train', '--data', data, '--domain', 'A', '--out', out, *TINY)
    assert code == 2 and 'Traceback' not in text, text
    message = last_line(text)
    assert str(csv) in message, message
    for word in words:
        assert word in message, (word, message)
    assert not (out / 'model.safetensors').exists()
    assert snapshot(data) == before


def test_severity_csv_with_bom_and_contradicting_level(data):
    faulty = _faulty(data)
    csv = data / 'severity.csv'
    csv.write_bytes(b'\xef\xbb\xbf' + f'path,severity,level\r\n{faulty[0]},1.5,3\r\n{faulty[1]},6,3'.encode())
    before = snapshot(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        labels = read_severity_csv(csv)
    assert [(v.severity, v.level) for v in labels.values()] == [(1.5, 3), (6.0, 3)]
    assert [str(w.message) for w in caught] == [
        f'{csv}: line 2: level 3 contradicts severity 1.5, which is in band 1 (bands: 2.5, 5, 7.5); the level given is kept'
    ]
    assert snapshot(data) == before


# ---------------------------------------------------------------- file names, pixel limit


def test_file_name_not_utf8_is_skipped_with_a_warning(data, tmp_path):
    good = data / 'A' / 'train' / 'good'
    first = sorted(good.glob('*.tiff'))[0]
    (good / os.fsdecode(b'caf\xe9.tiff')).write_bytes(first.read_bytes())
    before = snapshot(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ds = FolderDataset(data, 'train', domain='A')
    assert len(ds) == 8
    assert f'{good}: skipped 1 names that are not UTF-8 text: caf\\xe9.tiff; rename them' in str(caught[0].message)
    out = tmp_path / 'run'
    code, text = sevdino('train', '--data', data, '--domain', 'A', '--out', out, *TINY)
    assert code == 0 and 'Traceback' not in text, text
    assert snapshot(data) == before


def test_pixel_limit_every_format(tmp_path, monkeypatch):
    array = np.zeros((20, 30, 3), np.uint8)
    for ext in ('png', 'jpg', 'bmp'):
        Image.fromarray(array).save(tmp_path / f'small.{ext}')
    tifffile.imwrite(tmp_path / 'small.tif', array)
    monkeypatch.setattr(data_module, 'MAX_IMAGE_PIXELS', 599)
    for ext in ('png', 'jpg', 'bmp', 'tif'):
        with pytest.raises(ImageError, match=f'small.{ext}: 30x20 image \\(600 pixels\\) is over the limit of 599'):
            read_array(tmp_path / f'small.{ext}')
    monkeypatch.setattr(data_module, 'MAX_IMAGE_PIXELS', 600)
    assert all(read_array(tmp_path / f'small.{ext}').shape == (20, 30, 3) for ext in ('png', 'jpg', 'bmp', 'tif'))


def test_huge_images_refused_before_decoding(tmp_path):
    Image.new('1', (13000, 12000)).save(tmp_path / 'large.png')  # over our limit, under Pillow's
    Image.new('1', (20000, 10000)).save(tmp_path / 'larger.png')  # over Pillow's own limit too
    bomb = tmp_path / 'bomb.tif'
    tifffile.imwrite(bomb, np.zeros((16, 16), np.uint8), compression='zlib', metadata=None)
    with tifffile.TiffFile(bomb, mode='r+b') as tif:  # a few hundred bytes declaring 40 GB of pixels
        for tag in ('ImageWidth', 'ImageLength', 'RowsPerStrip'):
            tif.pages[0].tags[tag].overwrite(200_000)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no DecompressionBombWarning either
        for name, size in (('large.png', '13000x12000 image (156,000,000 pixels)'), ('bomb.tif', '200000x200000')):
            with pytest.raises(ImageError) as error:
                read_array(tmp_path / name)
            assert str(error.value).startswith(f'{tmp_path / name}: {size}'), error.value
            assert 'over the limit of 150,000,000 pixels' in str(error.value) and 'refused before decoding' in str(
                error.value
            )
        with pytest.raises(
            ImageError, match='larger.png: image of 200,000,000 pixels is over the limit of 150,000,000'
        ):
            read_array(tmp_path / 'larger.png')


# ---------------------------------------------------------------- --data a domain folder


def test_evaluate_data_domain_folder_reads_the_dataset_severity_csv(run, source, tmp_path):
    before = snapshot(source)
    results = {}
    for name, data in (('root', source), ('domain', source / 'A')):
        out = tmp_path / name
        code, text = sevdino('evaluate', '--run', run, '--data', data, '--out', out / 'metrics.json', '--quiet')
        assert code == 0 and 'Traceback' not in text, text
        metrics = json.loads(next(out.rglob('metrics.json')).read_text())
        results[name] = metrics
    assert math.isfinite(results['domain']['severity_spearman']), results['domain']
    for key in ('severity_spearman', 'score_truth_spearman', 'image_auroc', 'pixel_auroc', 'n_images', 'n_faulty'):
        assert results['domain'][key] == results['root'][key], key
    assert snapshot(source) == before
